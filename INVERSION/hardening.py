"""The steps around each inversion round (docs/ALGORITHMS.md §2): the attack set, hardening, the distance."""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.stats import UsageInfo, normalize
from DATASETS.triggers import Trigger


def draw_attack_set(n: int, attack_size: int, seed: int) -> tuple[Tensor, np.random.RandomState]:
    """The round's attack set: ``attack_size`` indices into the inversion set, drawn with replacement.

    As the paper's code: a draw seeded with ``seed``, then a shuffle of the drawn set seeded with
    ``seed + 1``. Returns the (attack_size,) indices and the shuffle's generator, which the first
    round goes on drawing its random start from.
    """
    indices = np.random.RandomState(seed).choice(n, attack_size)
    rng = np.random.RandomState(seed + 1)
    order = rng.permutation(attack_size)
    return torch.from_numpy(indices[order]), rng


def harden_step(backbone: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
                trigger: Trigger, usage: UsageInfo) -> float:
    """Equation 3, one SGD step: pull f(stamped batch) onto f(clean batch) (MSE), backbone in train mode.

    images: (B, 3, H, W) in [0, 1]. Stamped and clean images go through the backbone as two
    separate passes (stamped first), so BatchNorm normalises each with its own batch statistics and
    updates its running statistics twice, as in the paper's code.
    """
    backbone.train()
    stamped = backbone(normalize(trigger(images), usage))  # (B, D)
    clean = backbone(normalize(images, usage))  # (B, D)
    loss = F.mse_loss(stamped, clean)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def first_nonfinite(named: Iterable[tuple[str, Tensor]]) -> Optional[str]:
    """The name of the first floating-point tensor holding a NaN or inf, else None (the one weight scan)."""
    return next((name for name, value in named if value.is_floating_point() and not torch.isfinite(value).all()),
                None)


def wasserstein_rows(u_sorted: Tensor, v_sorted: Tensor) -> Tensor:
    """Row-wise 1-D Wasserstein distance between equal-size samples given sorted: (N, D), (N, D) -> (N,).

    For two empirical distributions of D values each, W1 is the mean absolute difference of the
    order statistics, so no per-image scipy call is needed.
    """
    return (u_sorted - v_sorted).abs().mean(dim=1)


@torch.no_grad()
def sorted_features(backbone: nn.Module, images: Tensor, usage: UsageInfo,
                    trigger: Optional[Trigger] = None, batch_size: int = 256) -> Tensor:
    """Raw backbone features of (N, 3, H, W) images, each row sorted ascending: (N, D)."""
    was_training = backbone.training
    backbone.eval()
    rows = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        x = trigger(x) if trigger is not None else x
        rows.append(backbone(normalize(x, usage)).sort(dim=1).values)
    backbone.train(was_training)
    return torch.cat(rows)


def wasserstein_shift(backbone: nn.Module, images: Tensor, usage: UsageInfo, trigger: Trigger,
                      clean_sorted: Tensor, batch_size: int = 256) -> float:
    """The early-stop signal: mean over images of W1(f0(x), f0(x stamped)) on the *reference* encoder f0."""
    stamped_sorted = sorted_features(backbone, images, usage, trigger, batch_size)
    return wasserstein_rows(clean_sorted, stamped_sorted).mean().item()
