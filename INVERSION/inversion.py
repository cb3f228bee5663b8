"""One round of MOTH/Neural-Cleanse style trigger inversion for an image encoder (SPEC §6.1).

The unknowns are a mask (H, W) and a pattern (3, H, W) kept in (0, 1) through a tanh
parametrisation; the objective is ``-psim + cost * |mask|_1`` (the paper's Equation 2).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.stats import UsageInfo, normalize
from DATASETS.triggers import stamp
from UTILS.runtime import progress

EPS = 1e-7


def mask_from_logits(a: Tensor) -> Tensor:
    """(H, W) logits -> (H, W) mask in [0, 1].

    In float32 the 1e-7 of ``2 - eps`` rounds away, so a saturated tanh lands a hair outside
    [0, 1]; the clamp keeps the documented range (its gradient is ~0 there anyway).
    """
    return (torch.tanh(a) / (2 - EPS) + 0.5).clamp(0, 1)


def pattern_from_logits(b: Tensor) -> Tensor:
    """(3, H, W) logits -> (3, H, W) pattern in [0, 1] (see :func:`mask_from_logits`)."""
    return (torch.tanh(b) / (2 - EPS) + 0.5).clamp(0, 1)


def logits_from_values(v: Tensor) -> Tensor:
    """Inverse of the tanh parametrisation; values are clipped to [0, 1] first."""
    return torch.atanh((v.clamp(0, 1) - 0.5) * (2 - EPS))


def pairwise_similarity(features: Tensor) -> Tensor:
    """Mean cosine similarity over pairs i != j of the rows of ``features`` (B, D) -> scalar.

    The diagonal (each image with itself, similarity 1) is left out: including it would reward
    nothing and bias psim upwards by 1/B.
    """
    b = features.shape[0]
    if b < 2:
        raise ValueError("pairwise_similarity needs at least two feature vectors")
    z = F.normalize(features, dim=1)
    total = z.sum(dim=0)  # (D,) sum_ij z_i.z_j = |sum_i z_i|^2, avoids the (B, B) matrix
    off_diagonal = total.dot(total) - (z * z).sum()
    return off_diagonal / (b * (b - 1))


def mask_l1(mask: Tensor) -> Tensor:
    """Trigger size: L1 norm of the mask over (H, W); a (3, H, W) mask counts once, not thrice."""
    if mask.dim() == 3:
        return mask.abs().sum() / mask.shape[0]
    return mask.abs().sum()


@dataclass
class CostSchedule:
    """The adaptive regularisation weight (lambda of Equation 2), NC/MOTH style."""

    init_cost: float
    threshold: float
    patience: int = 5
    up: float = 1.2
    down: float = 1.5**1.5
    cost: float = field(init=False)
    above: int = field(init=False, default=0)
    below: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.cost = self.init_cost

    def update(self, psim: float) -> float:
        """Feed one step's mean psim; returns the cost for the next step."""
        if psim >= self.threshold:
            self.above, self.below = self.above + 1, 0
        else:
            self.above, self.below = 0, self.below + 1
        if self.above >= self.patience:
            self.above = 0
            self.cost = self.init_cost if self.cost == 0 else self.cost * self.up
        elif self.below >= self.patience:
            self.below = 0
            self.cost = self.cost / self.down
        return self.cost


@dataclass
class InversionConfig:
    steps: int = 300            # --re_steps
    lr: float = 0.5             # 0.5 in the first round, --re_lr later
    init_cost: float = 5e-2     # --init_cost
    threshold: float = 0.90     # --similarity_threshold
    batch_size: int = 32        # images per Adam update (--attack_size)
    patience: int = 5
    step_cap: int = 0           # hard cap on steps when no trigger reaches the threshold; 0 = 3*steps
    restart_noise: float = 0.01

    @property
    def cap(self) -> int:
        return self.step_cap if self.step_cap > 0 else 3 * self.steps


@dataclass
class InversionResult:
    mask: Tensor                # (H, W) best mask (the last one if none reached the threshold)
    pattern: Tensor             # (3, H, W)
    reached: bool               # some step reached the similarity threshold
    steps: int
    loss: float                 # means over the steps of the round
    loss_sim: float             # mean psim
    loss_reg: float             # mean mask L1
    psim: float                 # psim of the returned trigger when it was recorded
    l1: float                   # size of the returned trigger
    cost: float                 # final cost


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients: inversion needs d(loss)/d(trigger) only."""
    was_training = module.training
    flags = [p.requires_grad for p in module.parameters()]
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        module.train(was_training)


def random_trigger(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Uniform random (mask (H, W), pattern (3, H, W)) in [0, 1], the first round's start."""
    mask = torch.rand(size, size, device=device)
    pattern = torch.rand(3, size, size, device=device)
    return mask, pattern


def perturb(values: Tensor, scale: float) -> Tensor:
    """Add uniform noise in [-scale, scale] (the restart after a new best trigger)."""
    return (values + (torch.rand_like(values) * 2 - 1) * scale).clamp(0, 1)


def inversion_loss(backbone: nn.Module, images: Tensor, a: Tensor, b: Tensor, usage: UsageInfo,
                   cost: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Equation 2 on one chunk of images (B, 3, H, W). Returns (loss, psim, l1, mask, pattern)."""
    mask = mask_from_logits(a)
    pattern = pattern_from_logits(b)
    features = backbone(normalize(stamp(images, mask, pattern), usage))  # (B, D)
    psim = pairwise_similarity(features)
    l1 = mask_l1(mask)
    return -psim + cost * l1, psim, l1, mask, pattern


@torch.no_grad()
def reference_similarity(backbone: nn.Module, images: Tensor, usage: UsageInfo,
                         trigger: Optional[Callable[[Tensor], Tensor]]) -> float:
    """psim of the images stamped with the ground-truth trigger (monitoring only); nan without one."""
    if trigger is None or images.shape[0] < 2:
        return float("nan")
    with frozen(backbone):
        return pairwise_similarity(backbone(normalize(trigger(images), usage))).item()


def invert_trigger(backbone: nn.Module, images: Tensor, usage: UsageInfo, config: InversionConfig,
                   init: Optional[tuple[Tensor, Tensor]] = None, desc: str = "inversion",
                   trace: Optional[list] = None) -> InversionResult:
    """Run one inversion round on ``images`` (N, 3, H, W) in [0, 1] against ``backbone`` (the f of SimCLR).

    Each step is one pass over ``images`` in chunks of ``config.batch_size`` (one Adam update each).
    Steps run ``config.steps`` times, then continue only while no trigger has reached the
    similarity threshold, up to ``config.cap`` steps in all. ``trace``, if given, receives one dict
    per step (psim, l1, cost used, whether the step set a new best and restarted).
    """
    size = images.shape[-1]
    mask0, pattern0 = init if init is not None else random_trigger(size, images.device)
    a, b, opt = _fresh_optimiser(mask0.to(images.device), pattern0.to(images.device), config.lr)
    schedule = CostSchedule(config.init_cost, config.threshold, config.patience)
    best: Optional[tuple[Tensor, Tensor, float, float]] = None  # (mask, pattern, l1, psim)
    sums = torch.zeros(3, dtype=torch.float64)
    step = 0
    bar = progress(range(config.cap), desc=desc, total=config.cap)
    with frozen(backbone):
        for step in bar:
            if step >= config.steps and best is not None:
                break
            step_psim, step_l1, mask, pattern = _inversion_step(backbone, images, a, b, opt, usage, schedule.cost,
                                                                config.batch_size, sums)
            new_best = step_psim >= config.threshold and (best is None or step_l1 < best[2])
            if trace is not None:
                trace.append({"step": step, "psim": step_psim, "l1": step_l1, "cost": schedule.cost,
                              "new_best": new_best})
            if new_best:
                best = (mask, pattern, step_l1, step_psim)
                a, b, opt = _fresh_optimiser(perturb(best[0], config.restart_noise),
                                             perturb(best[1], config.restart_noise), config.lr)
            schedule.update(step_psim)
        else:
            step = config.cap
    steps_run = max(step, 1)
    if best is None:
        warnings.warn(f"{desc}: no trigger reached similarity {config.threshold} within the cap of "
                      f"{config.cap} steps; returning the last trigger", RuntimeWarning, stacklevel=2)
        with torch.no_grad():
            last_mask = mask_from_logits(a).detach().clone()
            best = (last_mask, pattern_from_logits(b).detach().clone(), mask_l1(last_mask).item(), float("nan"))
    means = (sums / steps_run).tolist()
    return InversionResult(mask=best[0], pattern=best[1], reached=not _is_nan(best[3]), steps=steps_run,
                           loss=means[0], loss_sim=means[1], loss_reg=means[2], psim=best[3], l1=best[2],
                           cost=schedule.cost)


def _fresh_optimiser(mask: Tensor, pattern: Tensor, lr: float) -> tuple[Tensor, Tensor, torch.optim.Adam]:
    a = logits_from_values(mask).detach().clone().requires_grad_(True)
    b = logits_from_values(pattern).detach().clone().requires_grad_(True)
    return a, b, torch.optim.Adam([a, b], lr=lr, betas=(0.5, 0.9))


def _inversion_step(backbone: nn.Module, images: Tensor, a: Tensor, b: Tensor, opt: torch.optim.Optimizer,
                    usage: UsageInfo, cost: float, batch_size: int,
                    sums: Tensor) -> tuple[float, float, Tensor, Tensor]:
    """One pass over the images; adds (loss, psim, l1) means to ``sums``.

    Returns (mean psim, L1 of the returned mask, mask, pattern), the trigger of the last forward pass
    (before its update).
    """
    stats = []
    mask = pattern = None
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size]  # (B, 3, H, W)
        if chunk.shape[0] < 2:  # psim needs a pair; a lone leftover image carries no signal
            continue
        loss, psim, l1, mask, pattern = inversion_loss(backbone, chunk, a, b, usage, cost)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats.append(torch.stack([loss.detach(), psim.detach(), l1.detach()]))
    # One device sync per step: the means and the last mask's L1 (= mask_l1(mask)) travel together.
    packed = torch.cat([torch.stack(stats).mean(dim=0), stats[-1][2:]]).double().cpu()
    sums += packed[:3]
    return packed[1].item(), packed[3].item(), mask.detach().clone(), pattern.detach().clone()


def _is_nan(x: float) -> bool:
    return x != x
