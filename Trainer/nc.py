"""One-round Neural-Cleanse style inversion, the baseline (SPEC §6.3, ``MAIN.py --phase nc``)."""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

from torch import nn

from DATASETS.stats import UsageInfo
from DATASETS.triggers import InvertedTrigger
from INVERSION.inversion import InversionConfig, invert_trigger, reference_similarity
from MODELS.precision import with_precision
from Trainer.common import TensorSet, check_nonfinite, fmt_metrics
from Trainer.moth import FIRST_ROUND_LR, reissue_warnings
from Trainer.preview import save_trigger_preview
from UTILS.io import write_json
from UTILS.runtime import log, warn


def run_nc(model: nn.Module, data: TensorSet, usage: UsageInfo, config: InversionConfig, log_dir: Path,
           ground_truth=None, amp: bool = False) -> dict:
    """Invert once over the whole inversion set from a random start; writes mask-pattern-NC.npz."""
    backbone = with_precision(model.f, amp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invert_trigger(backbone, data.x, usage, replace(config, lr=FIRST_ROUND_LR), desc="NC inversion")
    reissue_warnings(caught)
    check_nonfinite({"inversion loss": result.loss, "trigger L1": result.l1}, "NC inversion",
                    "Nothing was saved", "Check the encoder, or lower the learning rate")
    trigger = InvertedTrigger(result.mask, result.pattern)
    psim = result.psim
    if not result.reached:
        psim = reference_similarity(backbone, data.x[:256], usage, trigger)
        warn(f"NC inversion: no trigger reached --similarity_threshold {config.threshold} within the cap of "
             f"{config.cap} steps (--re_steps_cap); saved the last trigger (psim {psim:.4f}, "
             f"reached_threshold false in metrics-NC.json)")
    trigger.save(log_dir / "mask-pattern-NC.npz")
    save_trigger_preview(log_dir / "preview-NC.png", trigger, data.x[:4])
    summary = {"l1": result.l1, "psim": psim, "reached_threshold": result.reached, "steps": result.steps,
               "loss": result.loss, "loss_sim": result.loss_sim, "loss_reg": result.loss_reg, "cost": result.cost,
               "refer_sim": reference_similarity(backbone, data.x[:256], usage, ground_truth),
               "trigger": str(log_dir / "mask-pattern-NC.npz")}
    write_json(log_dir / "metrics-NC.json", summary)
    log("[NC] " + fmt_metrics({k: summary[k] for k in ("l1", "psim", "reached_threshold", "steps", "refer_sim")}))
    return summary
