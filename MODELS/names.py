"""The encoder architectures ``--model`` names, without importing torch (checked before the slow imports)."""
from __future__ import annotations

MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "resnet18_small", "tiny")
