"""Suite-wide settings: progress bars off, so tests that read stderr see only the program's own lines
(``make test`` sets the same variable; this makes a bare ``pytest`` behave alike)."""
import os

os.environ.setdefault("RECEIVE_NO_PROGRESS", "1")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def float64():
    """torch's default dtype float64 for one test (models, images, and the stages that follow it), then back:
    an equivalence test of two computation orders compares float64 values (tests/precision.py)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
