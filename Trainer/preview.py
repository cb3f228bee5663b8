"""Small PNG previews of a trigger: mask, pattern, mask*pattern and a few stamped images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from UTILS.io import atomic_write

SCALE = 4  # 32x32 is too small to look at


def _tile(img: Tensor) -> np.ndarray:
    """(3, H, W) or (H, W) in [0, 1] -> (H*SCALE, W*SCALE, 3) uint8."""
    img = img.detach().float().cpu()
    if img.dim() == 2:
        img = img.expand(3, *img.shape)
    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.kron(arr, np.ones((SCALE, SCALE, 1), dtype=np.uint8))


@torch.no_grad()
def trigger_strip(mask: Tensor, pattern: Tensor, examples: Tensor, stamp) -> np.ndarray:
    """One row: mask | pattern | mask*pattern | stamped examples, separated by white gaps."""
    mask3 = mask if mask.dim() == 3 else mask.expand(3, *mask.shape)
    tiles = [mask3, pattern, mask3 * pattern] + list(stamp(examples.to(mask.device)))
    gap = np.full((mask.shape[-2] * SCALE, 2, 3), 255, dtype=np.uint8)
    parts = []
    for tile in tiles:
        parts += [_tile(tile), gap]
    return np.concatenate(parts[:-1], axis=1)


def save_trigger_preview(path: Path, trigger, examples: Tensor) -> None:
    """Write the strip of ``trigger`` (an InvertedTrigger or GroundTruthTrigger) as a PNG, atomically."""
    strip = trigger_strip(trigger.mask, trigger.pattern, examples, trigger)
    atomic_write(path, lambda h: Image.fromarray(strip).save(h, format="PNG"))
