"""``training_downstream_classifier.py``: ACC and ASR of an encoder through a downstream MLP.

The classifier trains in seconds, so it is not checkpointed per epoch: ``--resume`` reuses a finished
run (its ``downstream-metrics.json``, written last, marks completion and records the settings) and
otherwise trains again from the start; Ctrl-C stops after the current epoch without saving.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from DATASETS.loaders import ImageSet, load_split, split_files, take_ratio
from DATASETS.stats import UsageInfo
from DATASETS.tensors import TensorSet, check_label, require_images
from DATASETS.triggers import Trigger, load_trigger
from EVALUATION.downstream import train_downstream
from EVALUATION.features import extract_features_sharded
from EVALUATION.metrics import asr_selection
from MODELS.checkpoint import save_checkpoint
from MODELS.precision import with_precision
from MODELS.simclr import build_model
from Trainer.common import (INPUTS_KEY, Outputs, input_change, input_record, load_stage_encoder,
                            refuse_broken_encoder, remove_outputs, run_fingerprint, start_run)
from Trainer.configs import DownstreamConfig
from UTILS.distributed import from_main, is_main, rank
from UTILS.errors import Interrupted, fail
from UTILS.io import dumps_json, write_csv, write_json
from UTILS.lock import holding
from UTILS.runtime import log
from UTILS.signals import graceful_stop

SUMMARY = "downstream-metrics.json"
ORIGINAL_ASR_SHARE = 0.5  # the original's ASR images: get_backdoored_loader(train=True, ratio=0.5)


@dataclass
class AsrImages:
    """The images behind the second metric (ASR) and the label each must be given to count as a hit."""

    x: Tensor  # (M, 3, H, W) in [0, 1], not stamped yet
    want: Tensor  # (M,) long
    stamped: bool  # whether the trigger is stamped on before the encoder sees them
    what: str  # for the log


def asr_images(cfg: DownstreamConfig, train_images: ImageSet, train: TensorSet, test: TensorSet,
               has_trigger: bool) -> AsrImages | None:
    """Which images ASR is measured on, following ``--source_label``, ``--mode`` and ``--asr_images``.

    ``--source_label S``: the clean test images of class S, each wanting S (no trigger), the original's
    victim loader. Otherwise stamped images (None without a trigger): the test split without the
    target class (``--asr_include_target``: with it), or with ``train_half`` the first half of the train
    split, every class (the original's set). ``--mode targeted``: each wants its own label.
    """
    if cfg.source_label != -1:
        source = check_label(cfg.source_label, test.num_classes, "--source_label")
        keep = test.y == source
        return AsrImages(test.x[keep], test.y[keep], False,
                         f"{int(keep.sum())} clean test images of class {source} (--source_label), no trigger; "
                         f"a hit is a prediction of {source}")
    if not has_trigger:
        return None
    target = check_label(cfg.reference_label, train.num_classes) if cfg.mode == "non-targeted" else -1
    if cfg.asr_images == "train_half":
        n = len(take_ratio(train_images, ORIGINAL_ASR_SHARE, flag="--asr_images train_half"))
        x, y, include, where = train.x[:n], train.y[:n], True, f"the first {n} train images (every class)"
    else:
        x, y, include = test.x, test.y, cfg.asr_include_target
        where = "the test images" + ("" if include or cfg.mode == "targeted" else f" outside class {target}")
    keep, want = asr_selection(y, target, cfg.mode, include)
    hit = "its own label (--mode targeted)" if cfg.mode == "targeted" else f"a prediction of {target}"
    if not bool(keep.all()):  # a boolean index copies the images; skip it when every image counts
        x, want = x[keep], want[keep]
    return AsrImages(x, want, True, f"{x.shape[0]} stamped images, {where}; a hit is {hit}")


def check_asr_images(cfg: DownstreamConfig, chosen: AsrImages) -> None:
    """One line, before any training, when no image is left to measure ASR on (ASR would read nan)."""
    if chosen.x.shape[0]:
        return
    if not chosen.stamped:
        fail(f"--source_label {cfg.source_label}: no test image of --dataset {cfg.dataset} has this label, so "
             f"ASR cannot be measured; choose a class the test split holds")
    fail(f"--reference_label {cfg.reference_label}: every test image of --dataset {cfg.dataset} is of this class, "
         f"so no stamped image is left to measure ASR on; pass --asr_include_target to count them, or --asr_images "
         f"train_half")


@holding(("results_dir", "--results_dir"))
def run_downstream(cfg: DownstreamConfig) -> dict:
    """``training_downstream_classifier.py``: features of the frozen encoder, the MLP, ACC and ASR."""
    clf_name = f"clf_{cfg.nn_epochs}.pth"
    run = start_run(cfg, (Outputs("results_dir", (clf_name, "downstream-metrics.csv", SUMMARY)),),
                    inputs={"--encoder": cfg.encoder, "--trigger_file": cfg.trigger_file})
    device, usage, results_dir, earlier = run.device, run.usage, run.dirs["results_dir"], run.earlier["results_dir"]
    clf_path = results_dir / clf_name
    # the small files first: a bad trigger is reported before a dataset is read and resized
    trigger = load_trigger(cfg.trigger_file, "--trigger_file", expected_size=usage.size) if cfg.trigger_file else None
    model = _encoder(cfg, device)
    train_images = require_images(load_split(cfg.dataset, "train", cfg.data_dir, size=usage.size), "--dataset",
                                  "the classifier has nothing to train on")
    train = TensorSet.from_images(train_images, device)
    test = TensorSet.from_images(require_images(load_split(cfg.dataset, "test", cfg.data_dir, size=usage.size),
                                                "--dataset", "ACC cannot be measured"), device)
    # the files the numbers come from (checked readable above), in the summary for a later --resume (rank 0's)
    fingerprint = run_fingerprint(cfg) if not is_main() else run_fingerprint(cfg, input_record({
        "--encoder": cfg.encoder, "--trigger_file": cfg.trigger_file,
        "--dataset": {**split_files(cfg.dataset, "train", cfg.data_dir, usage.size),
                      **split_files(cfg.dataset, "test", cfg.data_dir, usage.size)}}))
    if cfg.resume:
        done = from_main(lambda: _finished(results_dir / SUMMARY, clf_path, fingerprint))
        if done is not None:
            log(f"--resume: {results_dir / SUMMARY} records a finished run with these settings; reusing it "
                f"(pass --overwrite to train again)")
            log(f"ACC {done['acc']:.2f}%  ASR {done['asr']:.2f}%  ({cfg.dataset}, encoder {cfg.encoder or 'random'})")
            return done
    refuse_broken_encoder(model.f, train.x, usage, cfg.encoder or "(random weights)", "--encoder", cfg.amp)
    chosen = asr_images(cfg, train_images, train, test, trigger is not None)
    if chosen is not None:
        check_asr_images(cfg, chosen)
        log(f"ASR images: {chosen.what}")
    if earlier and is_main():  # --overwrite, or --resume of a run that did not finish: train from the start
        if cfg.resume:
            log("--resume: the earlier run did not finish (or used other settings); training from the start")
        remove_outputs(earlier)
    train_feat, test_feat, bd_feat = _features(with_precision(model.f, cfg.amp), train, test, usage, trigger, chosen)
    if not is_main():  # under torchrun the ranks share the feature extraction; rank 0 trains the small MLP
        return {"rank": rank(), "features": int(train_feat.shape[0] + test_feat.shape[0] + bd_feat.shape[0])}
    clf, history = _train_mlp(cfg, (train_feat, train.y), (test_feat, test.y), bd_feat,
                              chosen.want if chosen is not None else 0, train.num_classes)
    save_checkpoint(clf_path, clf, cfg.nn_epochs)
    final = history[-1]
    summary = {"encoder": cfg.encoder, "dataset": cfg.dataset, "acc": final["acc"],
               "asr": final["asr"] if chosen is not None else float("nan"),
               "reference_label": cfg.reference_label if chosen is not None and chosen.stamped
               and cfg.mode == "non-targeted" else -1,
               "asr_images": cfg.asr_images, "asr_count": int(bd_feat.shape[0]), "mode": cfg.mode,
               "source_label": cfg.source_label, "asr_include_target": cfg.asr_include_target,
               "nn_epochs": cfg.nn_epochs, "classifier": str(clf_path), "config": fingerprint}
    write_csv(results_dir / "downstream-metrics.csv", history, ["epoch", "loss", "acc", "asr"])
    write_json(results_dir / SUMMARY, summary)  # last: its presence marks a finished run
    log(f"ACC {summary['acc']:.2f}%  ASR {summary['asr']:.2f}%  ({cfg.dataset}, encoder {cfg.encoder or 'random'})")
    return summary


def _encoder(cfg: DownstreamConfig, device: torch.device) -> nn.Module:
    """The --encoder checkpoint (checked finite), or a randomly initialised encoder without one."""
    if cfg.encoder:
        return load_stage_encoder(cfg, cfg.encoder, device, "--encoder")
    log("note: no --encoder given; using a randomly initialised encoder (a baseline)")
    return build_model(cfg.model).to(device).eval()


def _train_mlp(cfg: DownstreamConfig, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], bd_feat: Tensor,
               bd_want: int | Tensor, num_classes: int) -> tuple[nn.Module, list[dict]]:
    """The MLP on (features (N, D), labels (N,)) pairs; ASR on ``bd_feat`` (M, D), each wanting ``bd_want``.

    A NaN loss stops with one line; Ctrl-C stops after the current epoch (nothing is saved)."""
    # The original's test: 'clean' anywhere in the --encoder path as typed (case-sensitive), so an empty
    # path (a random encoder) prints BA/ASR.
    clean_names = "clean" in cfg.encoder
    with graceful_stop("epoch") as stop:
        def on_epoch(row: dict) -> None:
            if not math.isfinite(row["loss"]):
                fail(f"downstream epoch {row['epoch']}: the training loss became {row['loss']}; stopped; nothing "
                     f"of this stage was saved. Lower --lr")
            if stop.requested and row["epoch"] < cfg.nn_epochs:
                raise Interrupted(f"{stop.name}: stopped after epoch {row['epoch']} of {cfg.nn_epochs}; the "
                                  f"classifier is quick to train and is not checkpointed, so nothing was saved; "
                                  f"run the same command again")

        return train_downstream(*train, *test, bd_feat, bd_target=bd_want, num_classes=num_classes,
                                epochs=cfg.nn_epochs, lr=cfg.lr, batch_size=cfg.batch_size, hidden_1=cfg.hidden_size_1,
                                hidden_2=cfg.hidden_size_2, clean=clean_names, on_epoch=on_epoch)


def _features(backbone: nn.Module, train: TensorSet, test: TensorSet, usage: UsageInfo, trigger: Trigger | None,
              chosen: AsrImages | None) -> tuple[Tensor, ...]:
    """Train, test and ASR features (N, D); the last is empty when nothing counts for ASR."""
    train_feat = extract_features_sharded(backbone, train.x, usage, desc="train features")
    test_feat = extract_features_sharded(backbone, test.x, usage, desc="test features")
    if chosen is None or chosen.x.shape[0] == 0:
        return train_feat, test_feat, test_feat[:0]
    return train_feat, test_feat, extract_features_sharded(
        backbone, chosen.x, usage, trigger=trigger if chosen.stamped else None,
        desc="triggered features" if chosen.stamped else "victim features")


def _finished(summary_path: Path, clf_path: Path, fingerprint: dict) -> dict | None:
    """The summary of a finished run with the same settings, else None."""
    if not (summary_path.is_file() and clf_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    saved, now = summary.get("config"), json.loads(dumps_json(fingerprint))
    if isinstance(saved, dict) and {k: v for k, v in saved.items() if k != INPUTS_KEY} == \
            {k: v for k, v in now.items() if k != INPUTS_KEY}:
        change = input_change(saved.get(INPUTS_KEY), now.get(INPUTS_KEY))
        if change is not None:  # same settings, other files: its ACC/ASR are not this encoder's
            log(f"--resume: {change} is not the file the finished run in {summary_path.parent} measured; "
                f"training again from the start")
            return None
    elif saved != now:
        return None
    # JSON has no NaN: an ASR that was not measured (no trigger) is stored as null and read back as NaN
    return {**summary, **{k: math.nan for k in ("acc", "asr") if summary.get(k, 0) is None}}
