"""One round of trigger inversion (SPEC §6.1)."""
from INVERSION.inversion import (CostSchedule, InversionConfig, InversionResult, invert_trigger, mask_from_logits,
                                 mask_l1, pairwise_similarity, pattern_from_logits, reference_similarity)

__all__ = ["CostSchedule", "InversionConfig", "InversionResult", "invert_trigger", "mask_from_logits", "mask_l1",
           "pairwise_similarity", "pattern_from_logits", "reference_similarity"]
