"""Backbone features of an image tensor, batched, with an optional trigger stamped first."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from DATASETS.stats import UsageInfo, normalize
from DATASETS.triggers import Trigger
from UTILS.distributed import gather_to_all, shard_bounds, world_size
from UTILS.runtime import progress



def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, usage: UsageInfo,
                     trigger: Optional[Trigger] = None, batch_size: int = 512,
                     desc: str = "features") -> torch.Tensor:
    """L2-normalised ``backbone(normalize(trigger(x)))`` for images (N, 3, H, W) in [0, 1].

    ``images`` may live on any device; batches move to the backbone's device, and so does the result
    (N, D). The backbone runs in eval mode (BatchNorm uses running stats); its mode is restored after.
    """
    if not torch.is_floating_point(images) or images.dim() != 4:
        raise TypeError(f"extract_features: expected float images (N, 3, H, W) in [0, 1], "
                        f"got {images.dtype} {tuple(images.shape)}")
    device = module_device(backbone)
    was_training = backbone.training
    backbone.eval()
    try:
        chunks = []
        starts = range(0, images.shape[0], batch_size)
        for start in progress(starts, desc=desc, total=len(starts)):
            x = images[start:start + batch_size].to(device, non_blocking=True)  # (b, 3, H, W)
            if trigger is not None:
                x = trigger(x)
            feature = backbone(normalize(x, usage))
            chunks.append(F.normalize(torch.flatten(feature, start_dim=1), dim=1))  # (b, D)
    finally:
        backbone.train(was_training)
    if not chunks:
        raise ValueError("extract_features: no images")
    return torch.cat(chunks, dim=0)


def extract_features_sharded(backbone: nn.Module, images: torch.Tensor, usage: UsageInfo,
                             trigger: Optional[Trigger] = None, batch_size: int = 512,
                             desc: str = "features") -> torch.Tensor:
    """:func:`extract_features` with the images split across the ranks of a torchrun run: (N, D) on every rank.

    Each rank extracts its contiguous share (``UTILS.distributed.shard_bounds``) and the shares are
    gathered in order; in eval mode an image's feature does not depend on the others, so this is the
    one-process result (to float rounding). On one process it *is* ``extract_features``.
    """
    if world_size() == 1 or images.shape[0] < world_size():  # fewer images than ranks: each extracts all
        return extract_features(backbone, images, usage, trigger, batch_size, desc)
    lo, hi = shard_bounds(images.shape[0])
    return gather_to_all(extract_features(backbone, images[lo:hi], usage, trigger, batch_size, desc))


# A collapsed encoder: every clean image within this distance of the mean unit feature (cosine > 0.99995).
# Set well below what briefly trained working encoders show: a tiny test encoder after two unlearning epochs
# sits at 0.043, the BadEncoder-damaged encoder of bench/generalise.py's nearsame family (downstream ACC at
# chance) at 0.034, encoders that work at 0.54-0.83. So a near-collapse like nearsame's is not refused: the
# check catches only encoders whose features carry no usable direction at all.
COLLAPSED_SPREAD = 0.01


def feature_problem(features: torch.Tensor) -> str | None:
    """Why ``features`` (N, D) of N >= 2 different clean images cannot be judged, or None when they can.

    A broken encoder (untrained, wrongly loaded, diverged) gives features that make every similarity-based
    answer meaningless: the same vector for every image (psim 1 before any trigger, so "a trigger of size 0
    collapses them"), all zeros or overflowing values (psim 0 whatever the trigger), NaN/inf.
    """
    f = features.detach().double()
    if not torch.isfinite(f).all():
        return "its features of clean images are not finite (NaN or inf)"
    largest = float(f.abs().max()) if f.numel() else 0.0
    if largest > 1e12:
        return f"its features of clean images reach {largest:.1e}, beyond what cosine similarity is computed on"
    norms = f.norm(dim=1)
    if largest == 0.0 or bool((norms == 0).float().mean() > 0.5):
        return "its features of clean images are zero"
    unit = f / norms.clamp_min(1e-300)[:, None]
    spread = float((unit - unit.mean(dim=0)).norm(dim=1).max())
    if spread < COLLAPSED_SPREAD:
        return (f"it gives every clean image nearly the same feature direction (none lies {spread:.2g} or more "
                f"from their mean unit feature: a cosine above {1 - COLLAPSED_SPREAD ** 2 / 2:.4f} between any "
                f"image and the mean), as a collapsed encoder does")
    return None

