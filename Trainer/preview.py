"""Small PNG previews of a trigger: mask, pattern, mask*pattern and a few stamped images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from DATASETS.triggers import GroundTruthTrigger, InvertedTrigger, Trigger
from UTILS.io import atomic_write

SCALE = 4  # 32x32 is too small to look at
TARGET = 128  # tiles are enlarged to about this many pixels: 32 -> x4; 224 stays x1 (a strip of ~1.6k px)


def scale_for(side: int) -> int:
    """Integer enlargement for a tile of ``side`` pixels: x4 at 32, x1 at 224 (never below 1)."""
    return max(1, min(SCALE, TARGET // max(1, side)))


def _tile(img: Tensor) -> np.ndarray:
    """(3, H, W) or (H, W) in [0, 1] -> (H*k, W*k, 3) uint8, k = :func:`scale_for` (H)."""
    img = img.detach().float().cpu()
    if img.dim() == 2:
        img = img.expand(3, *img.shape)
    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    k = scale_for(arr.shape[0])
    return np.kron(arr, np.ones((k, k, 1), dtype=np.uint8))


@torch.no_grad()
def trigger_strip(mask: Tensor, pattern: Tensor, examples: Tensor, stamp: Trigger) -> np.ndarray:
    """One row: mask | pattern | mask*pattern | stamped examples, separated by white gaps."""
    mask3 = mask if mask.dim() == 3 else mask.expand(3, *mask.shape)
    tiles = [mask3, pattern, mask3 * pattern] + list(stamp(examples.to(mask.device)))
    gap = np.full((mask.shape[-2] * scale_for(mask.shape[-2]), 2, 3), 255, dtype=np.uint8)
    parts = []
    for tile in tiles:
        parts += [_tile(tile), gap]
    return np.concatenate(parts[:-1], axis=1)


def save_trigger_preview(path: Path, trigger: InvertedTrigger | GroundTruthTrigger, examples: Tensor) -> None:
    """Write the strip of ``trigger`` as a PNG, atomically; examples (N, 3, H, W) in [0, 1]."""
    strip = trigger_strip(trigger.mask, trigger.pattern, examples, trigger)
    atomic_write(path, lambda h: Image.fromarray(strip).save(h, format="PNG"))
