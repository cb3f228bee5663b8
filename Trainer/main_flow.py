"""``MAIN.py``: trigger inversion on a suspect encoder, iterative (moth) or one round (nc)."""
from __future__ import annotations

from pathlib import Path

from DATASETS.stats import get_usage
from INVERSION.inversion import InversionConfig
from MODELS.checkpoint import load_checkpoint, load_encoder
from Trainer.common import (build_monitor, guard_outputs, load_ground_truth, load_train_share, seed_from_list,
                            write_settings)
from Trainer.configs import MAIN_SEEDS, MainConfig
from Trainer.moth import STATE_FILE, IterativeInversion, MothSettings
from Trainer.nc import run_nc
from UTILS.errors import fail
from UTILS.io import ensure_writable_dir
from UTILS.runtime import log, resolve_device, seed_everything

MOTH_OUTPUTS = ("mask-pattern-*.npz", "re_loss.csv", "metrics.csv", "metrics.json", "preview-*.png")
NC_OUTPUTS = ("mask-pattern-NC.npz", "metrics-NC.json", "preview-NC.png")


def inversion_config(cfg: MainConfig) -> InversionConfig:
    return InversionConfig(steps=cfg.re_steps, lr=cfg.re_lr, init_cost=cfg.init_cost,
                           threshold=cfg.similarity_threshold, batch_size=cfg.attack_size,
                           step_cap=cfg.re_steps_cap)


def run_main(cfg: MainConfig) -> dict:
    seed_everything(seed_from_list(cfg.seed, MAIN_SEEDS))
    device = resolve_device(cfg.device, cfg.gpu)
    usage = get_usage(cfg.encoder_usage_info)
    log_dir = ensure_writable_dir(cfg.log_dir, "--log_dir")
    results_dir = ensure_writable_dir(cfg.results_dir, "--results_dir")
    outputs = MOTH_OUTPUTS if cfg.phase == "moth" else NC_OUTPUTS
    guard_outputs(log_dir, outputs, "--log_dir", cfg.overwrite, cfg.resume)
    model = load_encoder(cfg.pretrained_encoder, cfg.model, device, flag="--pretrained_encoder")
    data = load_train_share(cfg.dataset, cfg.data_ratio, cfg.data_dir, usage, device)
    ground_truth = load_ground_truth(cfg.trigger_file, usage.size)
    write_settings(log_dir / "setting.txt", cfg)
    if cfg.phase == "nc":
        if len(data) < 2:
            fail(f"--data_ratio {cfg.data_ratio}: the inversion set has {len(data)} image(s); need at least 2")
        return run_nc(model, data, usage, inversion_config(cfg), log_dir, ground_truth)
    if len(data) < cfg.batch_size:
        fail(f"--data_ratio {cfg.data_ratio}: the inversion set has {len(data)} images of --dataset {cfg.dataset}, "
             f"fewer than one --batch_size {cfg.batch_size}; raise --data_ratio or lower --batch_size")
    monitor = None
    if cfg.monitor_every > 0:
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, device, ground_truth, cfg.reference_label,
                                cfg.knn_k, cfg.knn_t, cfg.asr_include_target)
    settings = MothSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, attack_size=cfg.attack_size,
                            harden_lr=cfg.harden_lr, inversion=inversion_config(cfg), patience=cfg.patience,
                            epsilon=cfg.epsilon, monitor_every=cfg.monitor_every)
    flow = IterativeInversion(model, data, usage, settings, log_dir, results_dir, ground_truth, monitor)
    start = (0, 0)
    state_path = Path(results_dir) / STATE_FILE
    if cfg.resume and state_path.is_file():
        start = flow.load_state(load_checkpoint(state_path, "--resume"))
        log(f"resuming from {state_path}: epoch {start[0]}, batch {start[1]}, round {flow.round}")
    elif cfg.resume:
        log(f"--resume: no {state_path} found; starting from the beginning")
    return flow.run(*start)
