"""``MAIN.py --phase detect``: is this encoder backdoored? One inversion, its size, a verdict (docs/DETECTION.md).

The inversion is the NC round (INVERSION/inversion.py) with DECREE's goal: the smallest trigger that makes the
stamped images' features agree (mean pairwise cosine >= --detect_psim); INVERSION/detect.py judges its size
(and measures where it sends the images, a diagnostic).
The exit code is 0 whichever the verdict: the answer is in detect.json and on the last line printed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from torch import nn

from DATASETS.stats import UsageInfo
from DATASETS.tensors import TensorSet
from DATASETS.triggers import GroundTruthTrigger
from INVERSION.detect import NEIGHBOURS, OFF_QUANTILE, TargetCheck, judge, measure_target, relative_size
from INVERSION.inversion import InversionConfig
from INVERSION.relative import DETECT_SHARE
from Trainer.common import Outputs
from Trainer.filenames import (DETECT_METRICS, DETECT_PICTURE, DETECT_REFERENCE_PICTURE, DETECT_REFERENCE_TRIGGER,
                               DETECT_TRIGGER)
from Trainer.nc import invert_once
from UTILS.io import write_json
from UTILS.runtime import log
from UTILS.seeds import FIRST_STEP_SEED

SETTINGS_FILE = "setting-detect.txt"
# Every file of --phase detect (read by the --overwrite guard, checked by tests/scripts/test_outputs.py)
OUTPUTS = (Outputs("log_dir", (DETECT_TRIGGER, DETECT_METRICS, DETECT_PICTURE, DETECT_REFERENCE_TRIGGER,
                               DETECT_REFERENCE_PICTURE), (SETTINGS_FILE,)),
           Outputs("results_dir"))
L1_DEFINITION = "L1 of the per-pixel mask (H, W): one channel, not summed over the 3 colour channels"


@dataclass(frozen=True)
class DetectSettings:
    """What a detection run needs beyond the encoder and the data."""

    psim_threshold: float | str   # --detect_psim: a pair-mean cosine, or "auto" (INVERSION.relative.DETECT_SHARE)
    pl1_threshold: float    # --detect_pl1
    psim_kind: str = "pairs"  # --detect_psim_kind: pairs (DECREE's) or centred (INVERSION.relative.CentredFeatures)
    ratio_threshold: float = 0.0  # with a reference encoder: the threshold on PL1 / its PL1 (DETECT_RATIO_BY_KIND)
    images: int = 0         # --detect_images: how many images of the set are judged (0: all)
    calibrated_images: int = 0  # how many images --detect_pl1's default was measured on (DETECT_IMAGES)
    off_calibration: tuple[str, ...] = ()  # flags set otherwise than when --detect_pl1's default was measured
    # above this clean pair cosine the verdict is inconclusive (None: no limit); it applies to the pairs kind judged
    # against the absolute threshold only (run_detect)
    clean_psim_max: Optional[float] = None
    amp: bool = False
    seed: int = 0           # draws the random start
    step_seed: int = FIRST_STEP_SEED


def detection_images(data: TensorSet, count: int) -> TensorSet:
    """The first ``count`` images of the (already shuffled) set, all of them when ``count`` is 0 or the set is
    smaller (a note says so)."""
    if count == 0 or len(data) == count:
        return data
    if len(data) < count:
        log(f"note: --detect_images {count}, but the --data_ratio share has {len(data)} images; judging those")
        return data
    return TensorSet(data.x[:count], data.y[:count], data.num_classes)


def calibration_note(settings: DetectSettings, judged: int) -> str:
    """'' when the verdict ran as --detect_pl1's default was measured, else one sentence saying what differs:
    the trigger's size, hence the verdict, depends on the settings and grows with the number of images."""
    differs = list(settings.off_calibration)
    if settings.calibrated_images and judged != settings.calibrated_images:
        trend = "fewer images make the trigger smaller" if judged < settings.calibrated_images else \
            "more images make the trigger larger"
        differs.append(f"{judged} images judged, not {settings.calibrated_images} ({trend})")
    if not differs:
        return ""
    return ("the default --detect_pl1 was measured with other settings (" + "; ".join(differs) + "), so this "
            "verdict is outside its calibration")


def target_fields(target: Optional[TargetCheck]) -> dict:
    """detect.json's record of where the trigger's images collapse to (nulls when no trigger was found): a
    diagnostic, not part of the verdict."""
    return {"target_closeness": target and target.closeness,
            "clean_closeness_quantile": target and target.clean_quantile,
            "clean_closeness_median": target and target.clean_median, "target_rank": target and target.rank,
            "collapse_off_clean": target and target.off, "target_neighbours": NEIGHBOURS,
            "target_off_quantile": OFF_QUANTILE}


def reference_size(reference: nn.Module, data: TensorSet, usage: UsageInfo, config: InversionConfig, log_dir: Path,
                   settings: DetectSettings) -> dict:
    """The same search on a clean reference encoder (--detect_reference; its ``f`` the backbone), from the same start
    over the same images: its trigger's PL1, the scale the suspect's is read against (1.0, the whole image, when
    no trigger collapsed its features: nothing small does)."""
    done = invert_once(reference, data, usage, config, None, amp=settings.amp, seed=settings.seed,
                       step_seed=settings.step_seed, what="detection (reference)",
                       hint="Check the reference encoder, or lower --init_cost",
                       trigger_path=log_dir / DETECT_REFERENCE_TRIGGER, preview_path=log_dir / DETECT_REFERENCE_PICTURE)
    pl1 = relative_size(done.result.mask) if done.result.reached else 1.0
    log(f"[detect] reference encoder: trigger PL1 {pl1:.4f}, psim {done.psim:.4f} (threshold "
        f"{done.reference['threshold']:.4f}, reached {str(done.result.reached).lower()})")
    return {"reference_pl1": pl1, "reference_psim": done.psim, "reference_reached": done.result.reached,
            "reference_clean_psim": done.reference["clean_psim"],
            "reference_trigger": str(log_dir / DETECT_REFERENCE_TRIGGER)}


def run_detect(model: nn.Module, data: TensorSet, usage: UsageInfo, config: InversionConfig, log_dir: Path, *,
               settings: DetectSettings, ground_truth: Optional[GroundTruthTrigger] = None,
               reference: Optional[nn.Module] = None) -> dict:
    """Invert the smallest collapsing trigger on ``data`` (N, 3, H, W), judge it, write detect.json + picture.

    ``config`` gives the steps, cap, initial cost and chunk size; its threshold and psim kind are replaced
    by DECREE's (``settings.psim_threshold`` on the pair-mean cosine). With ``reference`` (a clean encoder of the
    same family, its ``f`` a backbone) the same search runs on it first and the verdict reads the suspect's PL1
    over the reference's against ``settings.ratio_threshold``. Returns detect.json's content.
    """
    data = detection_images(data, settings.images)
    auto = settings.psim_threshold == "auto"  # the same collapse relative to where the clean images already stand
    # the search the threshold was calibrated with: the mean cosine over pairs i != j (DECREE's), of the features
    # as they are or centred (settings.psim_kind), no --lowpass
    config = replace(config, psim=settings.psim_kind, auto_share=DETECT_SHARE if auto else 0.0, lowpass=False,
                     threshold=config.threshold if auto else settings.psim_threshold)
    scale = reference_size(reference, data, usage, config, log_dir, settings) if reference is not None else {}
    done = invert_once(model, data, usage, config, ground_truth, amp=settings.amp, seed=settings.seed,
                       step_seed=settings.step_seed, what="detection", hint="Check the encoder, or lower --init_cost",
                       trigger_path=log_dir / DETECT_TRIGGER, preview_path=log_dir / DETECT_PICTURE)
    result, psim, sims = done.result, done.psim, done.reference
    goal = sims["threshold"]  # the round's threshold: settings.psim_threshold, or the auto one
    target = measure_target(model.f, data.x, usage, result.trigger) if result.reached else None
    # the clean-cosine limit is the raw cosine's, for the absolute threshold: centred, clean images score about 0
    # on every encoder; against a reference, the reference carries the family's scale
    limited = settings.psim_kind == "pairs" and not scale
    verdict = judge(relative_size(result.mask), result.reached,
                    settings.ratio_threshold if scale else settings.pl1_threshold,
                    clean_psim=sims["clean_psim"], clean_psim_max=settings.clean_psim_max if limited else None,
                    reference_pl1=scale.get("reference_pl1"))
    note = calibration_note(settings, len(data))
    explanation = verdict.explain() + (f"; note: {note}" if note else "")
    h, w = result.mask.shape[-2:]
    summary = {"verdict": verdict.label, "backdoored": verdict.backdoored, "explanation": explanation,
               "calibrated": not note, "calibration_note": note or None,
               "pl1": verdict.pl1, "pl1_threshold": settings.pl1_threshold,
               **({**scale, "pl1_ratio": verdict.size if result.reached else None,
                   "ratio_threshold": settings.ratio_threshold} if scale else {}),
               "inconclusive_band": [verdict.threshold / verdict.factor, verdict.threshold * verdict.factor],
               "calibrated_clean_psim_max": verdict.clean_psim_max, "outside_calibration": verdict.outside_calibration,
               **target_fields(target),
               "l1": result.l1,
               "l1_definition": L1_DEFINITION, "image_pixels": h * w, "psim": psim, "psim_kind": config.psim,
               "psim_threshold": goal, "psim_threshold_rule": "auto" if auto else "fixed",
               "reached_threshold": result.reached,
               "steps": result.steps, "images": len(data), "clean_psim": sims["clean_psim"],
               "gt_psim": sims["gt_psim"], "trigger": str(log_dir / DETECT_TRIGGER),
               "picture": str(log_dir / DETECT_PICTURE)}
    if ground_truth is not None:
        summary["gt_pl1"] = relative_size(ground_truth.mask)
    write_json(log_dir / DETECT_METRICS, summary)
    log(f"[detect] trigger L1 {result.l1:.2f} = PL1 {verdict.pl1:.4f} of {h}x{w}, psim {psim:.4f} "
        f"(threshold {goal:.4f}, reached {str(result.reached).lower()}), {result.steps} steps")
    if target is not None:
        log(f"[detect] the stamped images collapse to a point of mean cosine {target.closeness:.4f} to its "
            f"{NEIGHBOURS} nearest judged images (the images' own: median {target.clean_median:.4f}, "
            f"{100 * OFF_QUANTILE:g}% quantile {target.clean_quantile:.4f}): "
            f"{'off' if target.off else 'among'} the clean images (a diagnostic, not part of the verdict)")
    log(f"verdict: {verdict.label.upper()}: {explanation}. Details: {log_dir / DETECT_METRICS}")
    return summary
