"""``training_downstream_classifier.py``: ACC and ASR of an encoder through a downstream MLP (SPEC §6.6).

The classifier trains in seconds, so it is not checkpointed per epoch: ``--resume`` reuses a finished
run (its ``downstream-metrics.json``, written last, marks completion and records the settings) and
otherwise trains again from the start; Ctrl-C stops after the current epoch without saving.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch import Tensor

from DATASETS.loaders import load_split
from DATASETS.stats import get_usage
from DATASETS.triggers import load_trigger
from EVALUATION.downstream import train_downstream
from EVALUATION.features import extract_features
from EVALUATION.metrics import backdoor_subset
from MODELS.checkpoint import load_encoder, save_checkpoint
from MODELS.precision import check_amp, with_precision
from MODELS.simclr import build_model
from Trainer.common import (TensorSet, check_finite_model, check_label, guard_outputs, remove_outputs,
                            run_fingerprint)
from Trainer.configs import DownstreamConfig
from UTILS.errors import Interrupted, fail
from UTILS.io import ensure_writable_dir, write_csv, write_json
from UTILS.runtime import log, resolve_device, seed_everything
from UTILS.signals import graceful_stop

SUMMARY = "downstream-metrics.json"


def run_downstream(cfg: DownstreamConfig) -> dict:
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device, cfg.gpu)
    check_amp(cfg.amp, device)
    usage = get_usage(cfg.encoder_usage_info)
    results_dir = ensure_writable_dir(cfg.results_dir, "--results_dir")
    clf_path = results_dir / f"clf_{cfg.nn_epochs}.pth"
    earlier = guard_outputs(results_dir, (clf_path.name, "downstream-metrics.*"), "--results_dir",
                            cfg.overwrite, cfg.resume, remove=False)
    fingerprint = run_fingerprint(cfg)
    if cfg.resume:
        done = _finished(results_dir / SUMMARY, clf_path, fingerprint)
        if done is not None:
            log(f"--resume: {results_dir / SUMMARY} records a finished run with these settings; reusing it "
                f"(pass --overwrite to train again)")
            log(f"ACC {done['acc']:.2f}%  ASR {done['asr']:.2f}%  ({cfg.dataset}, encoder {cfg.encoder or 'random'})")
            return done
    if cfg.encoder:
        model = load_encoder(cfg.encoder, cfg.model, device, flag="--encoder")
        check_finite_model(model, cfg.encoder, "--encoder")
    else:
        log("note: no --encoder given; using a randomly initialised encoder (a baseline)")
        model = build_model(cfg.model).to(device).eval()
    train = TensorSet.from_images(load_split(cfg.dataset, "train", cfg.data_dir, usage.size), device)
    test = TensorSet.from_images(load_split(cfg.dataset, "test", cfg.data_dir, usage.size), device)
    trigger = load_trigger(cfg.trigger_file, "--trigger_file", expected_size=usage.size) if cfg.trigger_file else None
    target = check_label(cfg.reference_label, train.num_classes) if trigger is not None else -1
    if earlier:  # --overwrite, or --resume of a run that did not finish: train from the start
        if cfg.resume:
            log("--resume: the earlier run did not finish (or used other settings); training from the start")
        remove_outputs(earlier)
    train_feat, test_feat, bd_feat = _features(with_precision(model.f, cfg.amp), train, test, usage, trigger,
                                               backdoor_subset(test.y, target, cfg.asr_include_target))
    clean_names = "clean" in Path(cfg.encoder).name.lower() if cfg.encoder else True
    with graceful_stop("epoch") as stop:
        def on_epoch(row: dict) -> None:
            if not math.isfinite(row["loss"]):
                fail(f"downstream epoch {row['epoch']}: the training loss became {row['loss']}; stopped; nothing "
                     f"of this stage was saved. Lower --lr")
            if stop.requested and row["epoch"] < cfg.nn_epochs:
                raise Interrupted(f"{stop.name}: stopped after epoch {row['epoch']} of {cfg.nn_epochs}; the "
                                  f"classifier is quick to train and is not checkpointed, so nothing was saved; "
                                  f"run the same command again")

        clf, history = train_downstream(train_feat, train.y, test_feat, test.y, bd_feat, max(target, 0),
                                        train.num_classes, cfg.nn_epochs, cfg.lr, cfg.batch_size,
                                        cfg.hidden_size_1, cfg.hidden_size_2, clean=clean_names, on_epoch=on_epoch)
    save_checkpoint(clf_path, clf, cfg.nn_epochs)
    final = history[-1]
    summary = {"encoder": cfg.encoder, "dataset": cfg.dataset, "acc": final["acc"],
               "asr": final["asr"] if trigger is not None else float("nan"), "reference_label": target,
               "asr_include_target": cfg.asr_include_target, "nn_epochs": cfg.nn_epochs,
               "classifier": str(clf_path), "config": fingerprint}
    write_csv(results_dir / "downstream-metrics.csv", history, ["epoch", "loss", "acc", "asr"])
    write_json(results_dir / SUMMARY, summary)  # last: its presence marks a finished run
    log(f"ACC {summary['acc']:.2f}%  ASR {summary['asr']:.2f}%  ({cfg.dataset}, encoder {cfg.encoder or 'random'})")
    return summary


def _features(backbone, train: TensorSet, test: TensorSet, usage, trigger, keep: Tensor) -> tuple[Tensor, ...]:
    """Train, test and triggered-test features (N, D); the last is empty without a trigger."""
    train_feat = extract_features(backbone, train.x, usage, desc="train features")
    test_feat = extract_features(backbone, test.x, usage, desc="test features")
    if trigger is None:
        return train_feat, test_feat, test_feat[:0]
    return train_feat, test_feat, extract_features(backbone, test.x[keep], usage, trigger=trigger,
                                                   desc="triggered features")


def _finished(summary_path: Path, clf_path: Path, fingerprint: dict) -> dict | None:
    """The summary of a finished run with the same settings, else None."""
    if not (summary_path.is_file() and clf_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("config") != json.loads(json.dumps(fingerprint)):
        return None
    return summary
