"""``training_downstream_classifier.py``: ACC and ASR of an encoder through a downstream MLP (SPEC §6.6)."""
from __future__ import annotations

from pathlib import Path

import torch

from DATASETS.loaders import load_split
from DATASETS.stats import get_usage
from DATASETS.triggers import load_trigger
from EVALUATION.downstream import train_downstream
from EVALUATION.features import extract_features
from EVALUATION.metrics import backdoor_subset
from MODELS.checkpoint import load_encoder, save_checkpoint
from MODELS.simclr import build_model
from Trainer.common import TensorSet, check_label, guard_outputs
from Trainer.configs import DownstreamConfig
from UTILS.io import ensure_writable_dir, write_csv, write_json
from UTILS.runtime import log, resolve_device, seed_everything


def run_downstream(cfg: DownstreamConfig) -> dict:
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device, cfg.gpu)
    usage = get_usage(cfg.encoder_usage_info)
    results_dir = ensure_writable_dir(cfg.results_dir, "--results_dir")
    guard_outputs(results_dir, (f"clf_{cfg.nn_epochs}.pth", "downstream-metrics.*"), "--results_dir",
                  cfg.overwrite, cfg.resume)
    if cfg.encoder:
        model = load_encoder(cfg.encoder, cfg.model, device, flag="--encoder")
    else:
        log("note: no --encoder given; using a randomly initialised encoder (a baseline)")
        model = build_model(cfg.model).to(device).eval()
    train = TensorSet.from_images(load_split(cfg.dataset, "train", cfg.data_dir, usage.size), device)
    test = TensorSet.from_images(load_split(cfg.dataset, "test", cfg.data_dir, usage.size), device)
    trigger = load_trigger(cfg.trigger_file, "--trigger_file", expected_size=usage.size) if cfg.trigger_file else None
    target = check_label(cfg.reference_label, train.num_classes) if trigger is not None else -1
    train_feat = extract_features(model.f, train.x, usage, desc="train features")
    test_feat = extract_features(model.f, test.x, usage, desc="test features")
    if trigger is not None:
        keep = backdoor_subset(test.y, target, cfg.asr_include_target)
        bd_feat = extract_features(model.f, test.x[keep], usage, trigger=trigger, desc="triggered features")
    else:
        bd_feat = test_feat[:0]
    clean_names = "clean" in Path(cfg.encoder).name.lower() if cfg.encoder else True
    clf, history = train_downstream(train_feat, train.y, test_feat, test.y, bd_feat, max(target, 0),
                                    train.num_classes, cfg.nn_epochs, cfg.lr, cfg.batch_size,
                                    cfg.hidden_size_1, cfg.hidden_size_2, clean=clean_names)
    save_checkpoint(results_dir / f"clf_{cfg.nn_epochs}.pth", clf, cfg.nn_epochs)
    final = history[-1]
    summary = {"encoder": cfg.encoder, "dataset": cfg.dataset, "acc": final["acc"],
               "asr": final["asr"] if trigger is not None else float("nan"), "reference_label": target,
               "asr_include_target": cfg.asr_include_target, "nn_epochs": cfg.nn_epochs,
               "classifier": str(results_dir / f"clf_{cfg.nn_epochs}.pth")}
    write_csv(results_dir / "downstream-metrics.csv", history, ["epoch", "loss", "acc", "asr"])
    write_json(results_dir / "downstream-metrics.json", summary)
    log(f"ACC {summary['acc']:.2f}%  ASR {summary['asr']:.2f}%  ({cfg.dataset}, encoder {cfg.encoder or 'random'})")
    return summary
