"""User-facing errors: one line, names the flag or file, exit code 2; interrupts exit with 130."""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, NoReturn, TypeVar

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for a process stopped by SIGINT

T = TypeVar("T")

RESUME_HINT = "resume with the same command plus --resume"


class UserError(Exception):
    """Bad input the user can fix. The message is printed as one line, without a traceback."""


class Interrupted(Exception):
    """A run stopped on request (Ctrl-C / SIGTERM) after saving a checkpoint; the message says how to resume."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UserError (one ``error:`` line, exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap an entry script's ``main``: a UserError prints ``error: ...`` and exits 2; an interrupt prints
    ``interrupted: ...`` and exits 130. Neither shows a traceback.

    Tests that call ``main([...])`` directly see ``SystemExit(2)`` / ``SystemExit(130)``; the message goes
    to stderr.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None
        except Interrupted as exc:
            print(f"interrupted: {_one_line(exc)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            print("interrupted: aborted; every file written so far is complete (writes are atomic); "
                  f"{RESUME_HINT}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_INTERRUPTED) from None

    return wrapper
