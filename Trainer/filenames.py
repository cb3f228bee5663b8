"""The names of the files one stage writes and another reads, in one place (no torch: flag checks import it)."""
from __future__ import annotations

import functools
import re

from DATASETS.names import DEFAULT_TRIGGER

__all__ = ["DEFAULT_TRIGGER", "BEST_TRIGGER", "NC_TRIGGER", "NC_METRICS", "DETECT_TRIGGER", "DETECT_METRICS",
           "DETECT_PICTURE", "DETECT_REFERENCE_TRIGGER", "DETECT_REFERENCE_PICTURE", "UNLEARNED_CKPT",
           "ROUND_TRIGGER", "HARDENED_CKPT", "INT", "name_matches"]

BEST_TRIGGER = "mask-pattern-best.npz"  # MAIN.py --phase moth: the early stop's choice
NC_TRIGGER = "mask-pattern-NC.npz"  # MAIN.py --phase nc: the one-round baseline's trigger
NC_METRICS = "metrics-NC.json"
DETECT_TRIGGER = "mask-pattern-detect.npz"  # MAIN.py --phase detect: the trigger its verdict judged
DETECT_METRICS = "detect.json"
DETECT_PICTURE = "detect.png"
DETECT_REFERENCE_TRIGGER = "mask-pattern-detect-reference.npz"  # --detect_reference: the clean reference's trigger
DETECT_REFERENCE_PICTURE = "detect-reference.png"
UNLEARNED_CKPT = "Harden_Unlearn_model_{}.pth"  # Unlearn-trigger.py: the encoder after epoch {}
ROUND_TRIGGER = "mask-pattern-{int}.npz"  # MAIN.py --phase moth: the trigger of round {int}
HARDENED_CKPT = "Harden_model_{int}.pth"  # MAIN.py --phase moth: the hardened encoder after epoch {int}


INT = "{int}"  # in a stage's file name: a run of decimal digits (an epoch, a round), nothing else


def name_matches(name: str, template: str) -> bool:
    """Whether ``name`` is exactly a name of ``template``: literal text, ``{int}`` standing for digits only.

    ``Harden_model_{int}.pth`` matches ``Harden_model_12.pth``, never ``Harden_model_1_mybackup.pth``: a stage
    only ever claims (and --overwrite only ever deletes) the exact names it writes."""
    return _template_regex(template).fullmatch(name) is not None


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    return re.compile("[0-9]+".join(re.escape(part) for part in template.split(INT)))
