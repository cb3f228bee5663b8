"""The iterative trigger inversion module: one round, the steps around it, and the early stop."""
from INVERSION.early_stop import EarlyStop, StopDecision
from INVERSION.hardening import draw_attack_set, harden_step, wasserstein_shift
from INVERSION.inversion import (CostSchedule, InversionConfig, InversionResult, invert_trigger, mask_from_logits,
                                 mask_l1, original_similarity, pair_mean_similarity, pairwise_similarity,
                                 pattern_from_logits)

__all__ = ["CostSchedule", "EarlyStop", "InversionConfig", "InversionResult", "StopDecision", "draw_attack_set",
           "harden_step", "invert_trigger", "mask_from_logits", "mask_l1", "original_similarity",
           "pair_mean_similarity", "pairwise_similarity", "pattern_from_logits", "wasserstein_shift"]
