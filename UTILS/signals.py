"""Graceful Ctrl-C: the first SIGINT (or SIGTERM) asks the running loop to stop at the end of its
current step; the loop saves a checkpoint and raises :class:`UTILS.errors.Interrupted` (exit 130).
A second signal aborts at once (KeyboardInterrupt); the files on disk are still whole because every
write is atomic, and the last checkpoint is the one saved after the previous step."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator, Optional

from UTILS.launch import env_is_main, env_world_size

_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class StopRequest:
    """Set by the first signal; loops poll :attr:`requested` between steps."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signal is not None

    @property
    def name(self) -> str:
        """The signal's name for the stop message (SIGINT, SIGTERM, ...)."""
        return _NAMES.get(self.signal, f"signal {self.signal}")


@contextlib.contextmanager
def graceful_stop(step: str = "step") -> Iterator[StopRequest]:
    """Install the two-stage handler for SIGINT and SIGTERM for the duration of the block.

    ``step`` names what gets finished ("round", "epoch") in the message printed on the first signal.
    Outside the main thread (where handlers cannot be installed) the request simply never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    # Under torchrun, Ctrl-C reaches a worker twice: SIGINT from the terminal, then SIGTERM from torchrun
    # stopping its workers. Only the same signal again means "abort now" there.
    torchrun = env_world_size() > 1

    def handler(signum, frame):
        if request.requested and (signum == request.signal or not torchrun):  # second signal: stop now
            raise KeyboardInterrupt
        if request.requested:
            return
        request.signal = signum
        if env_is_main():  # one message per run, not one per process
            print(f"\n{request.name}: finishing the current {step}, then saving a checkpoint "
                  f"(send it again to abort at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in _NAMES}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
