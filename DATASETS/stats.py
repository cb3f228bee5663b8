"""Per-dataset normalisation statistics and the one ``normalize`` the model sees."""
from __future__ import annotations

import torch
from torch import Tensor

from DATASETS.usage import USAGE, UsageInfo, get_usage  # the statistics live there, torch-free

__all__ = ["USAGE", "UsageInfo", "get_usage", "normalize"]


def normalize(x: Tensor, usage: UsageInfo) -> Tensor:
    """``(x - mean) / std`` per channel. x: (B, 3, H, W) or (3, H, W) in [0, 1]; differentiable."""
    mean = torch.tensor(usage.mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(usage.std, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std
