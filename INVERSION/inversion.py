"""One round of MOTH/Neural-Cleanse style trigger inversion for an image encoder (docs/ALGORITHMS.md §1).

The unknowns are a mask (H, W) and a pattern (3, H, W) kept in (0, 1) through a tanh
parametrisation; the objective is ``-psim + cost * |mask|_1`` (the paper's Equation 2), minimised
with one Adam over chunks of 32 images, exactly as the paper's code runs it: every step reshuffles
the attack set with a seeded permutation, walks it in ``N // 32`` chunks (one update each) and is
judged by the means over its chunks.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.stats import UsageInfo, normalize
from DATASETS.triggers import InvertedTrigger, Trigger
from INVERSION.defaults import INIT_COST, PSIM, RE_LR, RE_STEPS, SIMILARITY_THRESHOLD
from UTILS.runtime import progress
from UTILS.seeds import FIRST_STEP_SEED

EPS = 1e-7
CHUNK = 32  # images per Adam update: the original's round never receives --attack_size, so 32 always
# The default step cap (--re_steps_cap 0). The paper's code runs a round until some step reaches the
# threshold, however long that takes: forever when none can. We follow it while the search still makes
# progress and stop only where it has stalled: past --re_steps, a round without a trigger ends once its best
# psim has not risen for STALL_WINDOW (at least --re_steps) steps in a row -- psim still creeping up keeps it
# going, as in the original -- and in any case at CEILING_FACTOR x --re_steps steps.
STALL_WINDOW = 100
CEILING_FACTOR = 100


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
    """Inverse of the tanh parametrisation, in ``v``'s dtype; values are clipped to [0, 1] first."""
    return torch.atanh((v.clamp(0, 1) - 0.5) * (2 - EPS))


def pair_mean_similarity(features: Tensor) -> Tensor:
    """Mean cosine similarity over the pairs i != j of the rows of ``features`` (B, D) -> scalar."""
    b = features.shape[0]
    if b < 2:
        raise ValueError("pairwise similarity needs at least two feature vectors")
    z = F.normalize(features, dim=1)
    total = z.sum(dim=0)  # (D,) sum_ij z_i.z_j = |sum_i z_i|^2, avoids the (B, B) matrix
    return (total.dot(total) - (z * z).sum()) / (b * (b - 1))


def original_similarity(features: Tensor) -> Tensor:
    """psim as the paper's code computes it: ``(B-1)/B^3 * sum_ij cos(z_i, z_j)`` over all B^2 pairs.

    Its expression subtracts a (B, B, B) ``diag_embed`` of the (B, B) cosine matrix before a mean,
    which works out to this value: the diagonal-included mean scaled by (B-1)/B, so at most
    (B-1)/B (0.969 for B = 32). ``--similarity_threshold`` was tuned against this number.
    """
    b = features.shape[0]
    if b < 2:
        raise ValueError("pairwise similarity needs at least two feature vectors")
    total = F.normalize(features, dim=1).sum(dim=0)  # (D,)
    return total.dot(total) * (b - 1) / b**3


PSIM_KINDS: dict[str, Callable[[Tensor], Tensor]] = {"original": original_similarity, "pairs": pair_mean_similarity}


def psim_ceiling(kind: str, chunk: int) -> float:
    """The largest psim of ``kind`` a chunk of ``chunk`` images can have (all features equal): (B-1)/B for
    "original" (0.96875 for 32 images), 1 for "pairs". A threshold above it can never be reached."""
    return (chunk - 1) / chunk if kind == "original" else 1.0


def pairwise_similarity(features: Tensor, kind: str = "original") -> Tensor:
    """psim of (B, D) features: ``kind`` "original" (the paper's code, the default) or "pairs" (i != j mean)."""
    return PSIM_KINDS[kind](features)


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
    """The settings of one inversion round (Equation 2 minimised with Adam, cost adapted as in the paper's code)."""

    steps: int = RE_STEPS       # --re_steps
    lr: float = RE_LR           # FIRST_ROUND_LR in the first round (INVERSION.iterative), --re_lr later
    init_cost: float = INIT_COST  # --init_cost
    threshold: float = SIMILARITY_THRESHOLD  # --similarity_threshold (a number)
    auto_share: float = 0.0     # > 0: the threshold is set per round at this share (INVERSION.relative.prepare_round)
    chunk_size: int = CHUNK     # images per Adam update (not --attack_size: see CHUNK)
    psim: str = PSIM            # --psim: original, pairs, or centred (INVERSION.relative.prepare_round)
    patience: int = 5
    step_cap: int = 0           # hard cap on steps when no trigger reaches the threshold; 0 = stall rule
    restart_noise: float = 0.01
    micro_batch: int = 0        # --micro_batch: images per forward/backward inside a chunk; 0 = the whole chunk
    lowpass: bool = False       # --lowpass on: the objective sees the stamped images low-passed (:func:`lowpass`)

    @property
    def cap(self) -> int:
        """The most steps a round may take when no trigger reaches the threshold: --re_steps_cap when given,
        else CEILING_FACTOR x steps (the stall rule, :attr:`stall_window`, usually ends such a round first)."""
        return self.step_cap if self.step_cap > 0 else CEILING_FACTOR * self.steps

    def reachable(self, n_images: int) -> bool:
        """Whether ``threshold`` lies within what a step's chunks of ``n_images`` images can reach."""
        return self.threshold <= psim_ceiling(self.psim, min(self.chunk_size, n_images))

    @property
    def stall_window(self) -> int:
        """Steps without a new best psim that end a round past ``steps`` with no trigger (0: none, when the
        user gave an explicit --re_steps_cap, which alone then bounds the round)."""
        return 0 if self.step_cap > 0 else max(self.steps, STALL_WINDOW)


def ended_phrase(ended_by: str, config: InversionConfig) -> str:
    """Why a round without a trigger stopped (``InversionResult.ended_by``), in words for a warning."""
    if ended_by == "stall":
        return f"its best psim had not risen for {config.stall_window} steps"
    if ended_by == "unreachable":
        return "the threshold lies above what a chunk of these images can reach"
    return f"the cap of {config.cap} steps, --re_steps_cap"


@dataclass
class InversionResult:
    """What one inversion round found: the trigger, whether it reached the threshold, and the round's means."""

    mask: Tensor                # (H, W) best mask (the last one if none reached the threshold)
    pattern: Tensor             # (3, H, W)
    reached: bool               # some step reached the similarity threshold
    steps: int
    loss: float                 # means over the steps of the round
    loss_sim: float             # mean psim
    loss_reg: float             # mean mask L1
    psim: float                 # mean psim of the step that recorded the returned trigger (nan if none)
    l1: float                   # size of the returned trigger
    cost: float                 # final cost
    next_seed: int              # the step counter after this round (the next round continues from it)
    ended_by: str = "threshold"  # "threshold" (a trigger reached it); none did: "stall", "cap" or "unreachable"

    @property
    def trigger(self) -> InvertedTrigger:
        """The found mask (H, W) and pattern (3, H, W) as a stamping trigger."""
        return InvertedTrigger(self.mask, self.pattern)


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


def random_start(size: int, rng: np.random.RandomState) -> tuple[Tensor, Tensor]:
    """Uniform random (mask (H, W), pattern (3, H, W)) float64 in [0, 1], the first round's start.

    Drawn mask first, then pattern, from ``rng`` (the original draws them from numpy's global state).
    """
    mask = torch.from_numpy(rng.random_sample((size, size)))
    pattern = torch.from_numpy(rng.random_sample((3, size, size)))
    return mask, pattern


def step_permutation(n: int, seed: int) -> Tensor:
    """The seeded reshuffle that starts every inversion step: (n,) long, numpy's legacy MT19937 stream."""
    return torch.from_numpy(np.random.RandomState(seed).permutation(n))


def restart_noise(shape: tuple[int, ...], seed: int, scale: float) -> Tensor:
    """Uniform noise in [-scale, scale) drawn from a CPU torch generator seeded with ``seed``."""
    low, high = torch.tensor(-scale), torch.tensor(scale)
    return low + torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * (high - low)


def restart_point(mask: Tensor, pattern: Tensor, seed: int, scale: float) -> tuple[Tensor, Tensor]:
    """Where the optimisation restarts after a new best trigger: best + seeded noise, clipped to [0, 1].

    The mask's noise comes from ``seed``, the pattern's from ``seed + 1`` (escapes local minima).
    """
    m = (mask + restart_noise(tuple(mask.shape), seed, scale).to(mask.device)).clamp(0, 1)
    p = (pattern + restart_noise(tuple(pattern.shape), seed + 1, scale).to(pattern.device)).clamp(0, 1)
    return m, p


def lowpass(images: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 3, H, W): each channel blurred by the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16
    (a Gaussian of sigma about 0.7), edges reflected. ``--lowpass on`` searches on stamped images seen through
    it: a solid patch keeps its inside, a single pixel keeps a quarter of its contrast, so a trigger of
    scattered pixels no longer collapses the features and the search has to find one with a body."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device) / 4
    kernel = (k[:, None] * k[None, :]).expand(images.shape[1], 1, 3, 3)  # (C, 1, 3, 3): one per channel
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), kernel, groups=images.shape[1])


def stamped_view(trigger: Trigger, images: Tensor, lowpass_on: bool) -> Tensor:
    """The images the search's encoder sees: ``images`` (N, 3, H, W) stamped, low-passed with ``--lowpass on``."""
    stamped = trigger(images)
    return lowpass(stamped) if lowpass_on else stamped


def equation2(features: Tensor, mask: Tensor, *, cost: float, psim_kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """The inversion's objective, the paper's Equation 2: ``-psim(features) + cost * |mask|_1``, from the stamped
    chunk's features (B, D) and the mask; the one place it is written (:func:`inversion_loss` and
    :func:`micro_batched_backward` both call it). Returns (loss, psim, l1), scalars."""
    psim = pairwise_similarity(features, psim_kind)
    l1 = mask_l1(mask)
    return -psim + cost * l1, psim, l1


def inversion_loss(backbone: nn.Module, images: Tensor, a: Tensor, b: Tensor, usage: UsageInfo, *, cost: float,
                   psim_kind: str = "original", lowpass_on: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor, InvertedTrigger]:
    """Equation 2 on one chunk of images (B, 3, H, W). Returns (loss, psim, l1, trigger)."""
    trigger = InvertedTrigger(mask_from_logits(a), pattern_from_logits(b))
    features = backbone(normalize(stamped_view(trigger, images, lowpass_on), usage))  # (B, D)
    return (*equation2(features, trigger.mask, cost=cost, psim_kind=psim_kind), trigger)


@torch.no_grad()
def chunk_similarity(backbone: nn.Module, images: Tensor, usage: UsageInfo,
                     trigger: Optional[Trigger] = None, kind: str = "original",
                     chunk_size: int = CHUNK) -> float:
    """Mean over the step's chunks of psim of ``images`` (N, 3, H, W), stamped with ``trigger`` if given.

    This is the number the threshold is compared with, for any trigger (an inverted one, the
    injected one, or none: the clean images' own psim). nan if fewer than two images.
    """
    if images.shape[0] < 2:
        return float("nan")
    with frozen(backbone):
        values = []
        for chunk in chunks(images, chunk_size):
            x = trigger(chunk) if trigger is not None else chunk
            values.append(pairwise_similarity(backbone(normalize(x, usage)), kind))
        return torch.stack(values).mean().item()


def chunks(images: Tensor, chunk_size: int) -> list[Tensor]:
    """The step's consecutive chunks, the remainder dropped; one chunk of all images when N < chunk_size."""
    size = min(chunk_size, images.shape[0])
    return [images[i * size:(i + 1) * size] for i in range(images.shape[0] // size)]


def invert_trigger(backbone: nn.Module, images: Tensor, usage: UsageInfo, config: InversionConfig,
                   init: tuple[Tensor, Tensor], *, seed: int = FIRST_STEP_SEED, desc: str = "inversion",
                   trace: Optional[list] = None, bar: Callable = progress) -> InversionResult:
    """Run one inversion round on ``images`` (N, 3, H, W) in [0, 1] against ``backbone`` (the f of SimCLR).

    ``init``: the start (mask (H, W), pattern (3, H, W)) in [0, 1]. ``seed``: the step counter; step
    ``s`` reshuffles with ``seed + s`` and a restart after it draws noise with ``seed + s + 1`` (mask)
    and ``seed + s + 2`` (pattern). Steps run ``config.steps`` times, then continue only while no
    trigger has reached the threshold: until ``config.stall_window`` steps in a row brought no new best
    psim, or ``config.cap`` steps in all (then ``reached`` is False, ``ended_by`` says which, and the last
    trigger is returned). Without an explicit cap, a threshold above :func:`psim_ceiling` ends the round after
    ``config.steps`` steps (``ended_by`` "unreachable"): no number of steps could reach it.
    ``trace``, if given, receives one dict per step. ``bar(iterable, desc=, total=)`` shows the steps' progress
    (``UTILS.runtime.progress``; the round loop of INVERSION/iterative.py passes its caller's).
    """
    if images.shape[0] < 2:
        raise ValueError("inversion needs at least two images")
    device = images.device
    a = logits_from_values(init[0].to(device)).float().detach().clone().requires_grad_(True)
    b = logits_from_values(init[1].to(device)).float().detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=config.lr, betas=(0.5, 0.9))  # one Adam for the whole round
    schedule = CostSchedule(config.init_cost, config.threshold, config.patience)
    best: Optional[tuple[InvertedTrigger, float, float]] = None  # (trigger, mean l1, mean psim)
    sums = torch.zeros(3, dtype=torch.float64)
    step, top, top_step, ended_by = 0, -math.inf, 0, "cap"  # top: the round's best psim so far, seen at top_step
    hopeless = config.step_cap == 0 and not config.reachable(images.shape[0])
    with frozen(backbone):
        for step in bar(range(config.cap), desc=desc, total=config.steps):
            if step >= config.steps and best is not None:
                break
            if step >= config.steps and hopeless:
                ended_by = "unreachable"
                break
            if step >= config.steps and config.stall_window and step - top_step >= config.stall_window:
                ended_by = "stall"
                break
            images = images[step_permutation(images.shape[0], seed).to(device)]  # cumulative, as the original
            seed += 1
            loss, psim, l1, last = _inversion_step(backbone, images, a, b, opt, usage=usage, cost=schedule.cost,
                                                   config=config)
            sums += torch.tensor([loss, psim, l1], dtype=torch.float64)
            if psim > top:
                top, top_step = psim, step
            new_best = psim >= config.threshold and (best is None or l1 < best[1])
            if trace is not None:
                trace.append({"step": step, "psim": psim, "l1": l1, "cost": schedule.cost, "new_best": new_best})
            if new_best:
                best = (last, l1, psim)
                m, p = restart_point(last.mask[0], last.pattern, seed, config.restart_noise)
                with torch.no_grad():  # same tensors, same Adam: its moments carry on through the restart
                    a.copy_(logits_from_values(m))
                    b.copy_(logits_from_values(p))
            schedule.update(psim)
        else:
            step = config.cap
    steps_run = max(step, 1)
    means = (sums / steps_run).tolist()
    if best is None:
        with torch.no_grad():
            last = InvertedTrigger(mask_from_logits(a).detach().clone(), pattern_from_logits(b).detach().clone())
        best = (last, float("nan"), float("nan"))
    trigger = best[0]
    return InversionResult(mask=trigger.mask[0], pattern=trigger.pattern, reached=best[2] == best[2],
                           steps=steps_run, loss=means[0], loss_sim=means[1], loss_reg=means[2], psim=best[2],
                           l1=trigger.l1, cost=schedule.cost, next_seed=seed,
                           ended_by="threshold" if best[2] == best[2] else ended_by)


def _inversion_step(backbone: nn.Module, images: Tensor, a: Tensor, b: Tensor, opt: torch.optim.Optimizer, *,
                    usage: UsageInfo, cost: float, config: InversionConfig) -> tuple[float, float, float,
                                                                                      InvertedTrigger]:
    """One pass over the chunks of ``images``, one Adam update each.

    Returns the means over chunks of (loss, psim, l1) and the trigger of the last chunk's forward
    pass (before its update), the one a new best records.
    """
    stats = []
    trigger = None
    for chunk in chunks(images, config.chunk_size):  # (B, 3, H, W)
        opt.zero_grad(set_to_none=True)
        if 0 < config.micro_batch < chunk.shape[0]:
            loss, psim, l1, trigger = micro_batched_backward(backbone, chunk, a, b, usage, cost=cost,
                                                             psim_kind=config.psim, micro_batch=config.micro_batch,
                                                             lowpass_on=config.lowpass)
        else:
            loss, psim, l1, trigger = inversion_loss(backbone, chunk, a, b, usage, cost=cost, psim_kind=config.psim,
                                                     lowpass_on=config.lowpass)
            loss.backward()
        opt.step()
        stats.append(torch.stack([loss.detach(), psim.detach(), l1.detach()]))
    means = torch.stack(stats).mean(dim=0).double().cpu().tolist()  # one device sync per step
    frozen_trigger = InvertedTrigger(trigger.mask.detach().clone(), trigger.pattern.detach().clone())
    return means[0], means[1], means[2], frozen_trigger


def micro_batched_backward(backbone: nn.Module, images: Tensor, a: Tensor, b: Tensor, usage: UsageInfo, *,
                           cost: float, psim_kind: str, micro_batch: int, lowpass_on: bool = False
                           ) -> tuple[Tensor, Tensor, Tensor, InvertedTrigger]:
    """Equation 2's loss on one chunk (B, 3, H, W) and its gradient into ``a.grad``/``b.grad``, holding
    the activations of only ``micro_batch`` images at a time; returns (loss, psim, l1, trigger), detached.

    psim couples every pair of the chunk, so the loss is not a sum over images and cannot be
    accumulated piece by piece. It depends on the images only through their features F (B, D), so
    by the chain rule dloss/da = sum_i (dF_i/da)^T g_i (+ cost * dl1/da), g = dloss/dF: pass 1
    computes F piecewise without a graph; the loss is built on F as a leaf and back-propagated to
    g (and the mask term); pass 2 re-runs each piece with a graph and back-propagates g_i through
    it. One extra forward pass buys the memory of a ``micro_batch``-image backward. The encoder is
    in eval mode (``frozen``), so a piece's features do not depend on the other pieces.
    """
    trigger = InvertedTrigger(mask_from_logits(a), pattern_from_logits(b))
    pieces = images.split(micro_batch)
    with torch.no_grad():
        features = torch.cat([backbone(normalize(stamped_view(trigger, p, lowpass_on), usage)) for p in pieces])
    features.requires_grad_(True)
    loss, psim, l1 = equation2(features, trigger.mask, cost=cost, psim_kind=psim_kind)
    loss.backward()  # g into features.grad; the mask term straight into a.grad
    for piece, grad in zip(pieces, features.grad.split(micro_batch)):
        piece_trigger = InvertedTrigger(mask_from_logits(a), pattern_from_logits(b))  # a fresh graph per piece
        backbone(normalize(stamped_view(piece_trigger, piece, lowpass_on), usage)).backward(grad)
    return loss.detach(), psim.detach(), l1.detach(), trigger


@torch.no_grad()
def attack_set_similarities(backbone: nn.Module, images: Tensor, usage: UsageInfo,
                            ground_truth: Optional[Trigger], kind: str = "original",
                            chunk_size: int = CHUNK) -> dict[str, float]:
    """What the attack set (N, 3, H, W) looks like to the encoder before inversion (monitoring only).

    ``clean_psim`` / ``gt_psim``: the chunk-mean psim (of ``kind``, the number the threshold is
    compared with) of the clean images and of the images stamped with the injected trigger (nan
    without one). ``refer_sim``: the value the paper's code logs under that name in re_loss.csv,
    the negated ``original_similarity`` of all clean chunks taken together, with its input as it
    is there: its loader has already normalised the images and it normalises them a second time
    (the feature of ``normalize(normalize(x))``), so this monitoring value alone, and no decision,
    sees twice-normalised images.
    """
    parts = chunks(images, chunk_size)
    with frozen(backbone):
        clean = [pairwise_similarity(backbone(normalize(c, usage)), kind) for c in parts]
        twice = torch.cat([backbone(normalize(normalize(c, usage), usage)) for c in parts])  # the original's input
        out = {"clean_psim": torch.stack(clean).mean().item(),
               "refer_sim": -original_similarity(twice).item(), "gt_psim": float("nan")}
        if ground_truth is not None:
            stamped = [pairwise_similarity(backbone(normalize(ground_truth(c), usage)), kind) for c in parts]
            out["gt_psim"] = torch.stack(stamped).mean().item()
    return out
