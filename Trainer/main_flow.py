"""``MAIN.py``: trigger inversion on a suspect encoder, iterative (moth) or one round (nc)."""
from __future__ import annotations

from pathlib import Path

import torch

from DATASETS.stats import get_usage
from DATASETS.tensors import TensorSet, load_train_share
from EVALUATION.monitor import build_monitor
from INVERSION.inversion import FIRST_STEP_SEED, InversionConfig
from MODELS.checkpoint import load_checkpoint, load_encoder
from MODELS.precision import check_amp
from Trainer.common import (canonical, check_fingerprint, check_finite_model, guard_outputs, load_ground_truth,
                            remove_outputs, run_fingerprint, seed_from_list, write_settings)
from Trainer.configs import DEFAULT_REFERENCE_FILE, MAIN_SEEDS, MainConfig
from Trainer.filenames import BEST_TRIGGER, NC_METRICS, NC_TRIGGER
from Trainer.moth import STATE_FILE, TIMINGS_FILE, IterativeInversion, MothSettings, seed_offset
from Trainer.nc import run_nc
from UTILS.errors import fail
from UTILS.io import ensure_writable_dir, load_npz
from UTILS.lock import holding
from UTILS.runtime import log, resolve_device, seed_everything
from UTILS.signals import graceful_stop

# This stage's own files (the README's recipe shares one log dir between stages and phases).
MOTH_OUTPUTS = ("mask-pattern-[0-9]*.npz", BEST_TRIGGER, "re_loss.csv", "metrics.csv", "metrics.json",
                TIMINGS_FILE, "preview-[0-9]*.png")
MOTH_RESULTS = ("Harden_model_*.pth", STATE_FILE)
HARDEN_ORDER_SEED = 100  # the paper's code seeds torch with 100 just before building that loader
NC_OUTPUTS = (NC_TRIGGER, NC_METRICS, "preview-NC.png")
# What a run killed before its first state reached the disk leaves: the state of a round is written in the
# background while the next round runs, so rounds 0 and 1 may have files and no state. Nothing to resume,
# nothing of value either: --resume starts over instead of refusing.
UNSAVED_START_FILES = {"mask-pattern-0.npz", "mask-pattern-1.npz", "preview-0.png", "preview-1.png",
                       BEST_TRIGGER, "metrics.csv", "re_loss.csv", TIMINGS_FILE}


def inversion_config(cfg: MainConfig) -> InversionConfig:
    return InversionConfig(steps=cfg.re_steps, lr=cfg.re_lr, init_cost=cfg.init_cost,
                           threshold=cfg.similarity_threshold, psim=cfg.psim, step_cap=cfg.re_steps_cap)


def shuffled_once(data: TensorSet, seed_index: int) -> TensorSet:
    """The inversion set in one seeded random order: the paper's code gathers it from a shuffling
    loader, so its consecutive hardening batches mix the classes in the same way."""
    generator = torch.Generator().manual_seed(HARDEN_ORDER_SEED + seed_offset(seed_index))
    order = torch.randperm(len(data), generator=generator).to(data.x.device)
    return TensorSet(data.x[order], data.y[order], data.num_classes)


@holding(("log_dir", "--log_dir"), ("results_dir", "--results_dir"))
def run_main(cfg: MainConfig) -> dict:
    seed_everything(seed_from_list(cfg.seed, MAIN_SEEDS))
    device = resolve_device(cfg.device, cfg.gpu)
    check_amp(cfg.amp, device)
    usage = get_usage(cfg.encoder_usage_info)
    log_dir = ensure_writable_dir(cfg.log_dir, "--log_dir")
    results_dir = ensure_writable_dir(cfg.results_dir, "--results_dir")
    inputs = {"--pretrained_encoder": cfg.pretrained_encoder, "--trigger_file": cfg.trigger_file,
              "--reference_file": cfg.reference_file}
    if cfg.phase == "nc":  # one round: nothing to resume, --resume simply runs it again
        earlier = guard_outputs(log_dir, NC_OUTPUTS, "--log_dir", cfg.overwrite, cfg.resume, remove=False,
                                inputs=inputs, writes=("setting-NC.txt",))
    else:
        earlier = guard_outputs(log_dir, MOTH_OUTPUTS, "--log_dir", cfg.overwrite, cfg.resume, remove=False,
                                inputs=inputs, writes=("setting.txt",))
        earlier += guard_outputs(results_dir, MOTH_RESULTS, "--results_dir", cfg.overwrite, cfg.resume,
                                 remove=False, inputs=inputs)
    if cfg.reference_file != DEFAULT_REFERENCE_FILE:  # unused (as in the original), but a named file must exist
        load_npz(cfg.reference_file, keys=("x",), flag="--reference_file")
    ground_truth = load_ground_truth(cfg.trigger_file, usage.size)  # small files before the dataset
    model = load_encoder(cfg.pretrained_encoder, cfg.model, device, flag="--pretrained_encoder")
    check_finite_model(model, cfg.pretrained_encoder, "--pretrained_encoder")
    data = load_train_share(cfg.dataset, cfg.data_ratio, cfg.data_dir, usage, device)
    data = shuffled_once(data, cfg.seed)
    if cfg.phase == "nc":
        return run_nc_phase(cfg, model, data, usage, log_dir, ground_truth, earlier)
    return run_moth(cfg, model, data, usage, log_dir, results_dir, ground_truth, earlier)


def run_nc_phase(cfg: MainConfig, model, data, usage, log_dir: Path, ground_truth, earlier: list[Path]) -> dict:
    """``--phase nc``: the one-round baseline over the whole inversion set."""
    if len(data) < 2:
        fail(f"--data_ratio {cfg.data_ratio}: the inversion set has {len(data)} image(s); need at least 2")
    if cfg.overwrite:
        remove_outputs(earlier)
    write_settings(log_dir / "setting-NC.txt", cfg)
    return run_nc(model, data, usage, inversion_config(cfg), log_dir, ground_truth, amp=cfg.amp,
                  seed=seed_from_list(cfg.seed, MAIN_SEEDS), step_seed=FIRST_STEP_SEED + seed_offset(cfg.seed))


def run_moth(cfg: MainConfig, model, data, usage, log_dir: Path, results_dir: Path, ground_truth,
             earlier: list[Path]) -> dict:
    """``--phase moth``: iterative inversion + hardening + early stop, resumable round by round."""
    if len(data) < cfg.batch_size:
        fail(f"--data_ratio {cfg.data_ratio}: the inversion set has {len(data)} images of --dataset {cfg.dataset}, "
             f"fewer than one --batch_size {cfg.batch_size}; raise --data_ratio or lower --batch_size")
    monitor = None
    if cfg.monitor_every > 0:
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, data.x.device, ground_truth, cfg.reference_label,
                                cfg.knn_k, cfg.knn_t, cfg.asr_include_target)
    settings = MothSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, attack_size=cfg.attack_size,
                            harden_lr=cfg.harden_lr, inversion=inversion_config(cfg), patience=cfg.patience,
                            epsilon=cfg.epsilon, monitor_every=cfg.monitor_every, amp=cfg.amp, seed_index=cfg.seed)
    flow = IterativeInversion(model, data, usage, settings, log_dir, results_dir, ground_truth, monitor,
                              fingerprint=run_fingerprint(cfg))
    state_path = Path(results_dir) / STATE_FILE
    if cfg.resume and state_path.is_file():
        state = canonical(load_checkpoint(state_path, "--resume"))
        check_fingerprint(state.get("config"), cfg, state_path)
        flow.load_state(state, state_path)
        log(f"resuming from {state_path}: epoch {flow.state.epoch}, batch {flow.state.batch}, round {flow.state.round}")
    elif cfg.resume and earlier and {p.name for p in earlier} <= UNSAVED_START_FILES:
        log(f"--resume: no {state_path} yet, only files of the first rounds, written before any state was saved; "
            f"starting from the beginning")
        remove_outputs(earlier)
    elif cfg.resume and earlier:
        fail(f"--resume: there is no {state_path} to resume from, but {earlier[0]} holds an earlier run's output; "
             f"point --results_dir at that run's results, or pass --overwrite to start over")
    elif cfg.resume:
        log(f"--resume: no {state_path} yet; starting from the beginning")
    if cfg.overwrite:
        remove_outputs(earlier)
    write_settings(log_dir / "setting.txt", cfg)
    with graceful_stop("round") as stop:
        return flow.run(stop=stop)
