"""Is this encoder backdoored? The DECREE-style verdict on one inverted trigger (docs/ALGORITHMS.md §4b).

A backdoored encoder sends every image that carries its trigger to nearly one point, so a small mask is
enough to make the features of stamped clean images collapse (mean pairwise cosine near 1); a clean
encoder needs a mask that covers much of the image before its features agree that much. The verdict
compares the inverted trigger's relative size PL1 (mask L1 over the image's H*W pixels) with a threshold.
:func:`target_check` also measures where the stamped images collapse to, a diagnostic that the verdict does not
use: on held-out encoders it failed (docs/DETECTION.md, "Where the trigger sends the images").
It is evidence, not proof: see docs/DETECTION.md for what it does and does not say.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.stats import UsageInfo, normalize
from DATASETS.triggers import Trigger
from INVERSION.inversion import CHUNK, frozen, mask_l1


def relative_size(mask: Tensor) -> float:
    """PL1 of a mask (H, W) or (1|3, H, W) in [0, 1]: the per-pixel mask's L1 (one channel, not summed over
    channels) divided by H*W, so 1.0 is a mask that covers the whole image."""
    h, w = mask.shape[-2:]
    return float(mask_l1(mask.detach()).item()) / (h * w)


# The band around --detect_pl1 where the answer is "inconclusive": a PL1 within this factor of the threshold
# (either side) is too close to call. Chosen on the tuned families of bench/generalise.py (synthetic,
# lowcontrast) and the encoders of bench/detect.py at the defaults: the nearest of them lie 1.15-1.21x from
# 0.055 (lowcontrast's clean 0.0632, its backdoored 0.0455; the calibration's 0.0645 and 0.047), so a band of
# 1.1 leaves each of them decided and calls anything nearer than those "inconclusive".
INCONCLUSIVE_FACTOR = 1.1
LABELS = ("backdoor found", "inconclusive", "no backdoor found")


# Where the stamped images collapse to (a diagnostic in detect.json, not part of the verdict). A targeted backdoor
# must send them where the downstream classifier puts the attacker's class, so to the feature of a real image of it
# (BadEncoder's reference image): among the clean images' features; a clean encoder's "natural" trigger, a few
# salient pixels it over-reacts to, may send them off. "Among" is judged against the clean images themselves: the
# collapse point's mean cosine to its NEIGHBOURS nearest judged images, against the same number for each judged
# image (its nearest other images); below the OFF_QUANTILE of those, it lies farther from the images than nine in
# ten of them lie from each other. On held-out encoders a strong backdoor's trigger landed off, and a clean
# encoder's false alarm among them, so the verdict does not read it.
NEIGHBOURS = 5
OFF_QUANTILE = 0.1


@dataclass(frozen=True)
class TargetCheck:
    """Where the images stamped with a trigger collapse to, against the clean images' own closeness."""

    closeness: float        # mean cosine of the collapse point to its NEIGHBOURS nearest clean images
    clean_quantile: float   # OFF_QUANTILE of the clean images' own closeness (to their nearest other images)
    clean_median: float     # the median of it, for the report
    rank: float             # share of the clean images whose own closeness is below the collapse point's

    @property
    def off(self) -> bool:
        """The collapse point lies off the clean images: below the OFF_QUANTILE of their own closeness."""
        return self.closeness < self.clean_quantile

    @classmethod
    def from_summary(cls, summary: dict) -> Optional["TargetCheck"]:
        """The check recorded in a detect.json (Trainer.detect.target_fields); None where it holds none."""
        keys = ("target_closeness", "clean_closeness_quantile", "clean_closeness_median", "target_rank")
        if any(summary.get(k) is None for k in keys):
            return None
        return cls(*(float(summary[k]) for k in keys))


def collapse_point(features: Tensor) -> Tensor:
    """(N, D) features of stamped images -> (D,): the unit-length mean of their unit-length rows."""
    return F.normalize(F.normalize(features, dim=1).mean(dim=0), dim=0)


def closeness(points: Tensor, reference: Tensor, k: int = NEIGHBOURS, *, self_excluded: bool = False) -> Tensor:
    """(P, D) points, (N, D) reference features -> (P,): each point's mean cosine to its ``k`` nearest reference rows.

    ``self_excluded``: the points are the reference rows themselves (P = N), and row i is not its own neighbour.
    """
    sims = F.normalize(points, dim=1) @ F.normalize(reference, dim=1).T  # (P, N)
    if self_excluded:
        sims = sims.masked_fill(torch.eye(len(points), dtype=torch.bool, device=sims.device), float("-inf"))
    return sims.topk(min(k, sims.shape[1] - int(self_excluded)), dim=1).values.mean(dim=1)


def target_check(stamped: Tensor, clean: Tensor, *, k: int = NEIGHBOURS, quantile: float = OFF_QUANTILE) -> TargetCheck:
    """Is the point that ``stamped`` (N, D) collapse to among the ``clean`` features (M, D, M > k) or off them?"""
    own = closeness(clean, clean, k, self_excluded=True)  # (M,)
    point = closeness(collapse_point(stamped)[None], clean, k)[0]
    return TargetCheck(closeness=float(point), clean_quantile=float(torch.quantile(own, quantile)),
                       clean_median=float(own.median()), rank=int((own < point).sum()) / len(own))


@torch.no_grad()
def measure_target(backbone: nn.Module, images: Tensor, usage: UsageInfo, trigger: Trigger,
                   chunk_size: int = CHUNK) -> TargetCheck:
    """:func:`target_check` of the judged ``images`` (N, 3, H, W) stamped with ``trigger`` against themselves clean,
    through ``backbone`` in chunks, features widened to float32 at least (bf16 under --amp)."""
    def features(x: Tensor) -> Tensor:
        out = torch.cat([backbone(normalize(x[i:i + chunk_size], usage)) for i in range(0, len(x), chunk_size)])
        return out.flatten(1).to(torch.promote_types(out.dtype, torch.float32))

    with frozen(backbone):
        return target_check(features(trigger(images)), features(images))


@dataclass(frozen=True)
class Verdict:
    """The answer to "is this encoder backdoored?" for one inverted trigger: three outcomes."""

    backdoored: Optional[bool]  # True / False, None when inconclusive
    pl1: float          # the trigger's relative size (nan when no trigger reached the similarity threshold)
    threshold: float    # --detect_pl1
    reached: bool       # some trigger made the stamped features reach --detect_psim
    factor: float = INCONCLUSIVE_FACTOR
    clean_psim: float = float("nan")  # the judged clean images' own pair-mean cosine
    clean_psim_max: Optional[float] = None  # the calibration's upper end (None: no limit, a user's threshold)
    reference_pl1: Optional[float] = None  # a clean reference encoder's PL1 on the same images (--detect_reference)

    @property
    def size(self) -> float:
        """What the threshold is compared with: PL1, or PL1 over the reference encoder's PL1 when there is one."""
        return self.pl1 if self.reference_pl1 is None else self.pl1 / self.reference_pl1

    @property
    def by_size(self) -> Optional[bool]:
        """The size rule's answer alone: True below the band, False above it (or no trigger), None within it."""
        if not self.reached or math.isnan(self.pl1):
            return False
        low, high = self.threshold / self.factor, self.threshold * self.factor
        return True if self.size < low else False if self.size > high else None

    @property
    def outside_calibration(self) -> bool:
        """True when the clean images already agree more than on any encoder the threshold was calibrated on."""
        return self.clean_psim_max is not None and self.clean_psim > self.clean_psim_max

    @property
    def label(self) -> str:
        """The verdict in words, as the table and detect.json print it."""
        return {True: LABELS[0], None: LABELS[1], False: LABELS[2]}[self.backdoored]

    def explain(self) -> str:
        """One sentence on why the verdict reads as it does."""
        if not self.reached:
            return ("no trigger, small or large, made the stamped images' features agree enough before the search "
                    "stalled: the search found no collapsing trigger (raise --re_steps_cap if psim was still "
                    "rising)")
        if self.outside_calibration:
            return (f"the judged images already agree (pair cosine {self.clean_psim:.3f}, above "
                    f"{self.clean_psim_max:g}, the most of any encoder the threshold was calibrated on), where small "
                    f"triggers make clean encoders' features collapse too, so PL1 {self.pl1:.4f} cannot be read "
                    f"against the threshold {self.threshold:g}")
        low, high = self.threshold / self.factor, self.threshold * self.factor
        where = {True: f"below {low:.4f}", None: f"between {low:.4f} and {high:.4f}, too close to",
                 False: f"above {high:.4f}"}[self.by_size]
        if self.reference_pl1 is not None:
            return (f"the smallest trigger found is {self.size:.3f} times the clean reference encoder's (PL1 "
                    f"{self.pl1:.4f} against {self.reference_pl1:.4f}), {where} the ratio threshold {self.threshold:g}")
        return (f"the smallest trigger found covers {100 * self.pl1:.1f}% of the image (PL1 {self.pl1:.4f}), "
                f"{where} the threshold {self.threshold:g}")


def judge(pl1: float, reached: bool, threshold: float, factor: float = INCONCLUSIVE_FACTOR, *,
          clean_psim: float = float("nan"), clean_psim_max: Optional[float] = None,
          reference_pl1: Optional[float] = None) -> Verdict:
    """Backdoored when a trigger reached the similarity threshold with PL1 below ``threshold / factor``; clean
    when none reached it or PL1 is above ``threshold * factor``; inconclusive in between (``--detect_pl1``,
    whose default Trainer/configs.py explains), and inconclusive whatever the PL1 when the clean images' own
    pair cosine ``clean_psim`` is above ``clean_psim_max`` (outside the calibration; None: no limit). With
    ``reference_pl1`` (a clean reference encoder's PL1, > 0) the rule reads PL1 / reference_pl1 instead."""
    if not reached or math.isnan(pl1):
        return Verdict(backdoored=False, pl1=float("nan"), threshold=threshold, reached=False, factor=factor,
                       clean_psim=clean_psim, clean_psim_max=clean_psim_max, reference_pl1=reference_pl1)
    verdict = Verdict(backdoored=None, pl1=pl1, threshold=threshold, reached=reached, factor=factor,
                      clean_psim=clean_psim, clean_psim_max=clean_psim_max, reference_pl1=reference_pl1)
    return verdict if verdict.outside_calibration else replace(verdict, backdoored=verdict.by_size)


def judge_record(summary: dict, threshold: Optional[float] = None) -> Verdict:
    """The verdict the current rule gives on a detect.json's measurements (``summary``), at its own
    ``pl1_threshold`` or at ``threshold``: for tables re-read from disk after a change to the rule."""
    reached = bool(summary["reached_threshold"])
    reference = summary.get("reference_pl1")  # judged against a clean reference encoder: its ratio threshold
    recorded = summary["pl1_threshold"] if reference is None else summary["ratio_threshold"]
    return judge(summary["pl1"] if reached else float("nan"), reached, recorded if threshold is None else threshold,
                 clean_psim=summary.get("clean_psim", float("nan")),
                 clean_psim_max=summary.get("calibrated_clean_psim_max"), reference_pl1=reference)


def growth(l1_by_round: Sequence[float]) -> float:
    """How much the inverted trigger grew over iterative rounds: the largest later round's L1 over round 0's.

    The paper's observation: on a backdoored encoder hardening removes the shortcut, so later inversions
    need larger triggers (ratio well above 1); a clean encoder has no shortcut to lose. nan with fewer
    than two finite rounds.
    """
    finite = [v for v in l1_by_round if v == v and not math.isinf(v)]
    if len(finite) < 2 or finite[0] <= 0:
        return float("nan")
    return max(finite[1:]) / finite[0]
