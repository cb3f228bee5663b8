"""The iterative trigger inversion module: one round, the steps around it, the early stop and Algorithm 1's loop.

Names are imported on first use, so that ``INVERSION.defaults`` (read by the flag checks) does not pull in torch.
"""
from __future__ import annotations

from UTILS.lazy import lazy_exports

_EXPORTS = {
    **{name: "INVERSION.early_stop" for name in ("EarlyStop", "StopDecision")},
    **{name: "INVERSION.hardening" for name in ("draw_attack_set", "harden_step", "wasserstein_shift")},
    **{name: "INVERSION.inversion" for name in ("CostSchedule", "InversionConfig", "InversionResult", "invert_trigger",
                                                "mask_from_logits", "mask_l1", "original_similarity",
                                                "pair_mean_similarity", "pairwise_similarity",
                                                "pattern_from_logits")},
}
__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["CostSchedule", "EarlyStop", "InversionConfig", "InversionResult", "StopDecision", "draw_attack_set",
           "harden_step", "invert_trigger", "mask_from_logits", "mask_l1", "original_similarity",
           "pair_mean_similarity", "pairwise_similarity", "pattern_from_logits", "wasserstein_shift"]
