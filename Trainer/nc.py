"""One-round Neural-Cleanse style inversion, the baseline (``MAIN.py --phase nc``, docs/ALGORITHMS.md §4)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from torch import Tensor, nn

from DATASETS.stats import UsageInfo
from DATASETS.tensors import TensorSet
from INVERSION.inversion import InversionConfig, ended_phrase
from INVERSION.iterative import NonFiniteRound, OneRound, one_round
from MODELS.precision import with_precision
from Trainer.common import Outputs, check_nonfinite, fmt_metrics
from Trainer.filenames import NC_METRICS, NC_TRIGGER
from Trainer.preview import save_trigger_preview
from UTILS.io import write_json
from UTILS.runtime import log, warn
from UTILS.seeds import FIRST_STEP_SEED

NC_PREVIEW = "preview-NC.png"
SETTINGS_FILE = "setting-NC.txt"
# Every file of --phase nc (read by the --overwrite guard, checked by tests/scripts/test_outputs.py)
OUTPUTS = (Outputs("log_dir", (NC_TRIGGER, NC_METRICS, NC_PREVIEW), (SETTINGS_FILE,)), Outputs("results_dir"))


def invert_once(model: nn.Module, data: TensorSet, usage: UsageInfo, config: InversionConfig,
                ground_truth: Optional[Callable[[Tensor], Tensor]], *, amp: bool, seed: int, step_seed: int,
                what: str, hint: str, trigger_path: Path, preview_path: Path) -> OneRound:
    """:func:`INVERSION.iterative.one_round` over ``data`` (N, 3, H, W), its trigger and preview written: the NC
    baseline's and the detection's shared body. ``what`` names it in the progress bar and a non-finite error."""
    try:
        done = one_round(with_precision(model.f, amp), data.x, usage, config, ground_truth, seed=seed,
                         step_seed=step_seed, desc=what)
    except NonFiniteRound as err:
        check_nonfinite(err.values, what, "Nothing was saved", hint)
        raise
    done.result.trigger.save(trigger_path)
    save_trigger_preview(preview_path, done.result.trigger, data.x[:4])
    return done


def run_nc(model: nn.Module, data: TensorSet, usage: UsageInfo, config: InversionConfig, log_dir: Path, *,
           ground_truth=None, amp: bool = False, seed: int = 0, step_seed: int = FIRST_STEP_SEED) -> dict:
    """Invert once over the whole inversion set (chunks of 32) from a random start; writes mask-pattern-NC.npz.

    ``seed`` draws the random start; ``step_seed`` starts the inversion's step counter.
    """
    done = invert_once(model, data, usage, config, ground_truth, amp=amp, seed=seed, step_seed=step_seed,
                       what="NC inversion", hint="Check the encoder, or lower the learning rate",
                       trigger_path=log_dir / NC_TRIGGER, preview_path=log_dir / NC_PREVIEW)
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
