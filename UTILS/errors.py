"""User-facing errors: one line, names the flag or file, exit code 2; interrupts exit with 130."""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import signal
import sys
import threading
from typing import Callable, Iterator, NoReturn, TypeVar

from UTILS.launch import env_is_main, env_world_size

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for a process stopped by SIGINT

T = TypeVar("T")

RESUME_HINT = "resume with the same command plus --resume"


class UserError(Exception):
    """Bad input the user can fix. The message is printed as one line, without a traceback."""


class Interrupted(Exception):
    """A run stopped on request (Ctrl-C / SIGTERM) after saving a checkpoint; the message says how to resume."""


def fail(message: str) -> NoReturn:
    """Stop with one line for the user (:class:`UserError`; the entry scripts exit 2 on it)."""
    raise UserError(message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UserError (one ``error:`` line, exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        """A bad flag as a :class:`UserError` (one line, exit 2) instead of argparse's usage dump."""
        raise UserError(f"{message} (see {self.prog} --help)")


class Terminated(KeyboardInterrupt):
    """SIGTERM where no loop is ready to stop gracefully (loading data, extracting features): stop at once."""


def cli_entry(main: Callable[..., T] | None = None, *, memory: str = "", resume_hint: str = RESUME_HINT
              ) -> Callable[..., T]:
    """Wrap an entry script's ``main``: a UserError prints ``error: ...`` and exits 2; an interrupt prints
    ``interrupted: ...`` and exits 130; running out of memory prints one ``error:`` line naming the flags
    to lower (``memory``, e.g. "--batch_size or --data_ratio") and exits 2. None shows a traceback.

    SIGTERM is turned into :class:`Terminated` while ``main`` runs, so every phase (imports, loading,
    feature extraction) ends with one line; the loops that can stop gracefully install their own handler
    (UTILS.signals). Use as ``@cli_entry`` or ``@cli_entry(memory=...)``.

    ``resume_hint`` ends the line of an abort (a script without --resume says what to do instead).

    Tests that call ``main([...])`` directly see ``SystemExit(2)`` / ``SystemExit(130)``; the message goes
    to stderr.
    """
    if main is None:
        return functools.partial(cli_entry, memory=memory, resume_hint=resume_hint)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        _tolerate_undecodable_output()
        try:
            with _sigterm_interrupts():
                return main(*args, **kwargs)
        except UserError as exc:
            _exit_with(f"error: {_one_line(exc)}", EXIT_USER_ERROR)
        except Interrupted as exc:  # under torchrun every rank stops after the same step: rank 0 says so
            _exit_with(f"interrupted: {_one_line(exc)}", EXIT_INTERRUPTED,
                       quiet=not env_is_main())
        except KeyboardInterrupt as exc:
            what = "SIGTERM: " if isinstance(exc, Terminated) else ""
            _exit_with(f"interrupted: {what}aborted; every file written so far is complete (writes are atomic); "
                       f"{resume_hint}", EXIT_INTERRUPTED)
        except (MemoryError, RuntimeError) as exc:
            if is_peer_failure(exc):  # this rank is fine; another one died, or hung past the timeout
                _exit_with(f"error: {peer_failure_line(exc)}", EXIT_PEER_FAILED)
            if not is_out_of_memory(exc):
                raise
            _exit_with(f"error: {out_of_memory_line(exc, memory)}", EXIT_USER_ERROR)

    return wrapper


def _exit_with(line: str, code: int, quiet: bool = False) -> NoReturn:
    if not quiet:
        print(line, file=sys.stderr, flush=True)
    raise SystemExit(code) from None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread for the duration of the block, unless the
    process was started with SIGTERM ignored or handled by someone else (then that stays)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then stop as they asked (:class:`KeyboardInterrupt`,
    :class:`Terminated`). For the import of torch: an import cut in half leaves a module half initialised
    (numpy without its functions), and the run would go on to fail later with a misleading error."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum, frame):
        caught.append(signum)

    held = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, hold) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signal.SIGTERM in caught:
        raise Terminated
    if caught:
        raise KeyboardInterrupt


def _tolerate_undecodable_output() -> None:
    """A path typed in bytes that are not UTF-8 reaches Python as surrogate escapes; printing it back
    (a log line naming the file) must give those bytes, not a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "") == "strict":
            try:
                reconfigure(errors="surrogateescape")
            except (ValueError, OSError):  # a closed or detached stream
                pass


EXIT_PEER_FAILED = 1  # not this process's input: another process of the torchrun run failed


def is_peer_failure(exc: BaseException) -> bool:
    """A collective of a torchrun run that failed because another rank is gone (or timed out)."""
    if env_world_size() <= 1:
        return False
    name, text = type(exc).__name__, str(exc).lower()
    return name in ("DistBackendError", "DistNetworkError", "DistStoreError") or \
        any(sign in text for sign in ("gloo", "nccl", "connection closed by peer", "connection reset by peer"))


def peer_failure_line(exc: BaseException) -> str:
    """One line for a rank whose partner process failed: what happened, and where to look."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # gloo's "[<source file>:<line>] " prefix
    return (f"torchrun: another process of this run stopped or stopped answering, so this one (rank "
            f"{os.environ.get('RANK', '?')}) stops too ({first[:120]}); see the first process's own message above")


_OOM_SIGNS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
              "CUBLAS_STATUS_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError (CUDA) or an allocator's RuntimeError (CPU)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(sign.lower() in text.lower() for sign in _OOM_SIGNS)


def out_of_memory_line(exc: BaseException, memory: str) -> str:
    """``<flags>: out of memory on <device> (tried to allocate N GiB); lower ...`` in one line."""
    text = str(exc)
    device = "the GPU" if ("CUDA" in text or "GPU" in text or type(exc).__name__ == "OutOfMemoryError") \
        else "the CPU"
    size = ""
    match = re.search(r"tried to allocate (\d+) bytes", text, re.IGNORECASE)
    if match:
        size = f" (tried to allocate {_gib(int(match.group(1)))})"
    else:
        match = re.search(r"tried to allocate ([\d.]+ [KMGT]i?B)", text, re.IGNORECASE)
        size = f" (tried to allocate {match.group(1)})" if match else ""
    lower = f"{memory}: out of memory on {device}{size}; lower one of them" if memory else \
        f"out of memory on {device}{size}; lower the sizes of the run"
    return f"{lower}, or use a machine with more memory; every file written so far is complete"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
