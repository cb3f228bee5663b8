"""One-round Neural-Cleanse style inversion, the baseline (``MAIN.py --phase nc``, docs/ALGORITHMS.md §4)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch import Tensor, nn

from DATASETS.stats import UsageInfo
from DATASETS.tensors import TensorSet
from INVERSION.inversion import (FIRST_STEP_SEED, InversionConfig, InversionResult, attack_set_similarities,
                                 chunk_similarity, invert_trigger, random_start)
from INVERSION.relative import prepare_round
from MODELS.precision import with_precision
from Trainer.common import check_nonfinite, fmt_metrics
from Trainer.filenames import NC_METRICS, NC_TRIGGER
from Trainer.moth import FIRST_ROUND_LR, ended_phrase
from Trainer.preview import save_trigger_preview
from UTILS.io import write_json
from UTILS.runtime import log, warn


@dataclass
class OneRound:
    """A one-round inversion whose trigger and preview are on disk: the round's result, the psim of the
    returned trigger (measured again when no step reached the threshold) and the attack set's similarities."""

    result: InversionResult
    psim: float
    reference: dict[str, float]


def invert_once(model: nn.Module, data: TensorSet, usage: UsageInfo, config: InversionConfig,
                ground_truth: Optional[Callable[[Tensor], Tensor]], *, amp: bool, seed: int, step_seed: int,
                what: str, hint: str, trigger_path: Path, preview_path: Path) -> OneRound:
    """One round (first-round lr) from a seeded random start over ``data`` (N, 3, H, W): the NC baseline's
    and the detection's shared body. ``what`` names it in the progress bar and a non-finite error."""
    backbone, config = prepare_round(with_precision(model.f, amp), data.x, usage, replace(config, lr=FIRST_ROUND_LR))
    start = random_start(data.x.shape[-1], np.random.RandomState(seed % 2**32))
    result = invert_trigger(backbone, data.x, usage, config, start, seed=step_seed, desc=what)
    check_nonfinite({"inversion loss": result.loss, "trigger L1": result.l1}, what, "Nothing was saved", hint)
    trigger = result.trigger
    psim = result.psim if result.reached else chunk_similarity(backbone, data.x, usage, trigger, config.psim,
                                                               config.chunk_size)
    trigger.save(trigger_path)
    save_trigger_preview(preview_path, trigger, data.x[:4])
    reference = attack_set_similarities(backbone, data.x, usage, ground_truth, config.psim, config.chunk_size)
    return OneRound(result, psim, {**reference, "threshold": config.threshold})


def run_nc(model: nn.Module, data: TensorSet, usage: UsageInfo, config: InversionConfig, log_dir: Path,
           ground_truth=None, amp: bool = False, seed: int = 0, step_seed: int = FIRST_STEP_SEED) -> dict:
    """Invert once over the whole inversion set (chunks of 32) from a random start; writes mask-pattern-NC.npz.

    ``seed`` draws the random start; ``step_seed`` starts the inversion's step counter.
    """
    done = invert_once(model, data, usage, config, ground_truth, amp=amp, seed=seed, step_seed=step_seed,
                       what="NC inversion", hint="Check the encoder, or lower the learning rate",
                       trigger_path=log_dir / NC_TRIGGER, preview_path=log_dir / "preview-NC.png")
    result, psim = done.result, done.psim
    if not result.reached:
        warn(f"NC inversion: no trigger reached the similarity threshold {done.reference['threshold']:g} in "
             f"{result.steps} steps "
             f"({ended_phrase(result.ended_by, config)}); saved the last trigger (psim {psim:.4f}, "
             f"reached_threshold false in metrics-NC.json)")
    summary = {"l1": result.l1, "psim": psim, "reached_threshold": result.reached, "ended_by": result.ended_by,
               "steps": result.steps,
               "loss": result.loss, "loss_sim": -result.loss_sim, "loss_reg": result.loss_reg, "cost": result.cost,
               **done.reference, "trigger": str(log_dir / NC_TRIGGER)}
    write_json(log_dir / NC_METRICS, summary)
    log("[NC] " + fmt_metrics({k: summary[k] for k in ("l1", "psim", "reached_threshold", "steps", "clean_psim",
                                                       "gt_psim")}))
    return summary
