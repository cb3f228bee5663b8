"""User-facing errors: one line, names the flag or file, exit code 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable, NoReturn, TypeVar

EXIT_USER_ERROR = 2

T = TypeVar("T")


class UserError(Exception):
    """Bad input the user can fix. The message is printed as one line, without a traceback."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap an entry script's ``main`` so a UserError prints ``error: ...`` and exits with code 2.

    Tests that call ``main([...])`` directly see ``SystemExit(2)``; the message goes to stderr.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper
