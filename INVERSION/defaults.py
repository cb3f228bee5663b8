"""The inversion's defaults, written once and torch-free: MAIN.py's flags (``Trainer/configs.py``, checked
before torch is imported), :class:`INVERSION.inversion.InversionConfig` and
:class:`INVERSION.iterative.MothSettings` read them."""
from __future__ import annotations

RE_STEPS = 300              # --re_steps: steps of a round before it may stop (the original's default)
RE_LR = 0.5                 # --re_lr: Adam's learning rate of the rounds after the first (the original's default)
INIT_COST = 5e-2            # --init_cost: the first weight of the mask's L1 in Equation 2
SIMILARITY_THRESHOLD = 0.90  # --similarity_threshold: the psim a trigger must reach (the paper's)
PSIM = "original"           # --psim: the paper's code's psim (INVERSION.inversion.original_similarity)
MONITOR_EVERY = 5           # --monitor_every: the kNN monitor after every N-th batch of an epoch (0 = off)
