"""Is this encoder backdoored? The DECREE-style verdict on one inverted trigger (docs/ALGORITHMS.md §4b).

A backdoored encoder sends every image that carries its trigger to nearly one point, so a small mask is
enough to make the features of stamped clean images collapse (mean pairwise cosine near 1); a clean
encoder needs a mask that covers much of the image before its features agree that much. The verdict
compares the inverted trigger's relative size PL1 (mask L1 over the image's H*W pixels) with a threshold.
It is evidence, not proof: see docs/DETECTION.md for what it does and does not say.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from torch import Tensor

from INVERSION.inversion import mask_l1


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
                 False: f"above {high:.4f}"}[self.backdoored]
        return (f"the smallest trigger found covers {100 * self.pl1:.1f}% of the image (PL1 {self.pl1:.4f}), "
                f"{where} the threshold {self.threshold:g}")


def judge(pl1: float, reached: bool, threshold: float, factor: float = INCONCLUSIVE_FACTOR, *,
          clean_psim: float = float("nan"), clean_psim_max: Optional[float] = None) -> Verdict:
    """Backdoored when a trigger reached the similarity threshold with PL1 below ``threshold / factor``; clean
    when none reached it or PL1 is above ``threshold * factor``; inconclusive in between (``--detect_pl1``,
    whose default Trainer/configs.py explains), and inconclusive whatever the PL1 when the clean images' own
    pair cosine ``clean_psim`` is above ``clean_psim_max`` (outside the calibration; None: no limit)."""
    if not reached or math.isnan(pl1):
        return Verdict(backdoored=False, pl1=float("nan"), threshold=threshold, reached=False, factor=factor,
                       clean_psim=clean_psim, clean_psim_max=clean_psim_max)
    backdoored = True if pl1 < threshold / factor else False if pl1 > threshold * factor else None
    verdict = Verdict(backdoored=backdoored, pl1=pl1, threshold=threshold, reached=reached, factor=factor,
                      clean_psim=clean_psim, clean_psim_max=clean_psim_max)
    return replace(verdict, backdoored=None) if verdict.outside_calibration else verdict


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
