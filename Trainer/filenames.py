"""The names of the files one stage writes and another reads, in one place (no torch: flag checks import it)."""
from __future__ import annotations

from DATASETS.names import DEFAULT_TRIGGER

__all__ = ["DEFAULT_TRIGGER", "BEST_TRIGGER", "NC_TRIGGER", "NC_METRICS", "DETECT_TRIGGER", "DETECT_METRICS",
           "DETECT_PICTURE", "UNLEARNED_CKPT"]

BEST_TRIGGER = "mask-pattern-best.npz"  # MAIN.py --phase moth: the early stop's choice
NC_TRIGGER = "mask-pattern-NC.npz"  # MAIN.py --phase nc: the one-round baseline's trigger
NC_METRICS = "metrics-NC.json"
DETECT_TRIGGER = "mask-pattern-detect.npz"  # MAIN.py --phase detect: the trigger its verdict judged
DETECT_METRICS = "detect.json"
DETECT_PICTURE = "detect.png"
UNLEARNED_CKPT = "Harden_Unlearn_model_{}.pth"  # Unlearn-trigger.py: the encoder after epoch {}
