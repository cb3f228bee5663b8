"""How this process was launched, read from torchrun's environment without importing torch (the
entry scripts answer ``--help`` and report bad flags before the slow imports)."""
from __future__ import annotations

import os
import socket


def env_is_main() -> bool:
    """Whether this process is rank 0 of a torchrun run (or runs alone): the one that prints and writes."""
    return os.environ.get("RANK", "0") in ("", "0")


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when absent or unreadable; UTILS.distributed checks it properly)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


def free_port() -> int:
    """A TCP port free on this machine now, for a process group started without torchrun."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The variables torchrun would give rank ``rank`` of ``world`` processes on this machine (port ``port``)."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
