"""How this process was launched, read from torchrun's environment without importing torch (the
entry scripts answer ``--help`` and report bad flags before the slow imports)."""
from __future__ import annotations

import os


def env_is_main() -> bool:
    """Whether this process is rank 0 of a torchrun run (or runs alone): the one that prints and writes."""
    return os.environ.get("RANK", "0") in ("", "0")


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when absent or unreadable; UTILS.distributed checks it properly)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1
