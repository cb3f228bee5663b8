"""Start N gloo CPU processes as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in
their environment) and collect what each returns. The worker is a module-level function
``fn(out_dir, *args) -> object``; rank r's return value is saved with torch.save and read back."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.multiprocessing as mp

from UTILS.launch import free_port, local_rank_env


def _entry(rank: int, fn: Callable, world: int, port: int, out: str, args: tuple) -> None:
    os.environ.update({**local_rank_env(rank, world, port), "OMP_NUM_THREADS": "1", "RECEIVE_NO_PROGRESS": "1"})
    torch.set_num_threads(1)
    from UTILS import distributed

    try:
        result = fn(Path(out), *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        if torch.distributed.is_initialized():
            # every rank has finished before any leaves: a rank that tears gloo down while its peer still talks
            # can abort the peer ("terminate called without an active exception", SIGABRT)
            torch.distributed.barrier()
    finally:
        distributed.stop()


def run_ranks(fn: Callable, *args, world: int = 2) -> list:
    """fn(out_dir, *args) in ``world`` processes (gloo, CPU); their return values in rank order."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_entry, args=(fn, world, free_port(), out, args), nprocs=world, join=True,
                           start_method="spawn")
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world)]
