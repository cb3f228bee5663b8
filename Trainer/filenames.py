"""The names of the files one stage writes and another reads, in one place (no torch: flag checks import it)."""
from __future__ import annotations

from DATASETS.names import DEFAULT_TRIGGER

__all__ = ["DEFAULT_TRIGGER", "BEST_TRIGGER", "NC_TRIGGER", "NC_METRICS"]

BEST_TRIGGER = "mask-pattern-best.npz"  # MAIN.py --phase moth: the early stop's choice
NC_TRIGGER = "mask-pattern-NC.npz"  # MAIN.py --phase nc: the one-round baseline's trigger
NC_METRICS = "metrics-NC.json"
