"""The datasets the loaders know, without importing torch (the command line is checked against them first)."""
from __future__ import annotations

DATASET_NAMES = ("cifar10", "stl10", "svhn", "gtsrb", "synthetic", "synthetic_down")
NUM_CLASSES = {"cifar10": 10, "stl10": 10, "svhn": 10, "gtsrb": 43, "synthetic": 10, "synthetic_down": 10}

# Where the original scripts look for the ground-truth trigger (BadEncoder's white 10x10 square).
DEFAULT_TRIGGER = "trigger/trigger_pt_white_21_10_ap_replace.npz"
