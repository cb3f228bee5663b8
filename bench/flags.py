"""Flag checks shared by the bench scripts: a bad value is one ``error:`` line and exit 2, as in the entry
scripts, never a traceback after minutes of measuring."""
from __future__ import annotations

import argparse
from typing import Callable

from UTILS.errors import ArgumentParser


def number_list(p: ArgumentParser, text: str, flag: str, kind: Callable = int, low: float = 1,
                high: float = float("inf")) -> list:
    """The comma-separated numbers of ``text``, each ``kind`` in [low, high], or ``p.error`` naming ``flag``."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not low <= v <= high for v in values):
        p.error(f"{flag} {text}: expected comma-separated {kind.__name__}s in [{low:g}, {high:g}]")
    return values


def at_least(p: ArgumentParser, args: argparse.Namespace, low: float, *names: str) -> None:
    """Each ``--name`` (argparse dest ``name`` with '-' as '_') must be >= ``low``."""
    for name in names:
        value = getattr(args, name.replace("-", "_"))
        if value < low:
            p.error(f"--{name} {value}: expected a value of at least {low:g}")
