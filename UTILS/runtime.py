"""Device selection, seeding and progress bars, resolved once and imported everywhere."""
from __future__ import annotations

import os
import random
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from UTILS.device_flags import device_choice, gpu_index
from UTILS.launch import env_is_main
from UTILS.errors import fail

T = TypeVar("T")


def resolve_device(device: str = "auto", gpu: int | str = 0, verbose: bool = True) -> torch.device:
    """Turn ``--device`` (auto, cpu, cuda, cuda:N) and the original ``--gpu`` index into a device."""
    choice, index = device_choice(device), gpu_index(str(gpu))
    if choice == "auto":
        choice = f"cuda:{index}" if torch.cuda.is_available() else "cpu"
        if choice.startswith("cuda") and index >= torch.cuda.device_count():
            choice = "cuda:0"
    elif choice == "cuda":
        choice = f"cuda:{index}"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            fail(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
        if int(choice.split(":", 1)[1]) >= torch.cuda.device_count():
            fail(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    dev = torch.device(choice)
    if verbose:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        print(f"device: {dev} ({name})", flush=True)
    return dev


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so a CPU run is bit-for-bit repeatable."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The RNG state a run depends on. The project draws random numbers from torch only."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"].cpu()))


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, leave: bool = False, **kw) -> Iterable[T]:
    """The project's one progress bar, on stderr.

    On a terminal: tqdm's live bar. Anywhere else (a log file, a pipe, CI) a bar redrawn with carriage
    returns would flood the file, so a bar prints one plain line when it runs to its end
    (``desc: N/N in 12.3s``) and nothing when left early (the log line after it says why).
    ``RECEIVE_NO_PROGRESS=1`` silences every bar (tests, CI logs), and so does being any rank but 0 of a
    torchrun run (one bar per run, not one per process).
    """
    if os.environ.get("RECEIVE_NO_PROGRESS", "") not in ("", "0") or not env_is_main():
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not _stderr_is_terminal():
        return _plain_progress(iterable, desc, total)
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, file=sys.stderr, **kw)


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


def _plain_progress(iterable: Iterable[T], desc: str, total: Optional[int]) -> Iterator[T]:
    """Yield from ``iterable``; once it is exhausted, one line on stderr: ``desc: n/total in 1.2s``."""
    began = time.perf_counter()
    count = 0
    for item in iterable:
        yield item
        count += 1
    seconds = time.perf_counter() - began
    done = f"{count}/{total}" if total is not None else f"{count}"
    print(f"{desc}: {done} in {seconds:.1f}s", file=sys.stderr, flush=True)


def log(message: str) -> None:
    """Progress-bar-safe print; under torchrun only rank 0 prints (the ranks compute the same numbers)."""
    if not env_is_main():
        return
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def warn(message: str) -> None:
    """A one-line ``warning: ...`` on stderr, progress-bar-safe."""
    tqdm.write(f"warning: {message}", file=sys.stderr)
    sys.stderr.flush()
