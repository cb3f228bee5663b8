"""Suite-wide settings: progress bars off, so tests that read stderr see only the program's own lines
(``make test`` sets the same variable; this makes a bare ``pytest`` behave alike)."""
import os

os.environ.setdefault("RECEIVE_NO_PROGRESS", "1")
