"""``MAIN.py``: trigger inversion on a suspect encoder, iterative (moth) or one round (nc)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from DATASETS.stats import UsageInfo
from DATASETS.loaders import split_files
from DATASETS.tensors import TensorSet, load_train_share
from DATASETS.triggers import Trigger
from EVALUATION.monitor import build_monitor
from INVERSION.inversion import InversionConfig
from INVERSION.iterative import MothSettings
from INVERSION.relative import AUTO_SHARE
from MODELS.checkpoint import load_checkpoint
from Trainer.common import (canonical, check_fingerprint, input_record,
                            load_ground_truth, load_stage_encoder, monitor_files, refuse_broken_encoder, remove_outputs,
                            run_fingerprint, start_run, write_settings)
from Trainer.configs import (CALIBRATED_CLEAN_PSIM_MAX, DEFAULT_REFERENCE_FILE, DETECT_IMAGES, DETECT_RATIO_BY_KIND,
                             MainConfig)
from Trainer import detect, moth, nc
from Trainer.detect import DetectSettings, run_detect
from Trainer.moth import STATE_FILE, UNSAVED_START_FILES, MothRun
from Trainer.nc import run_nc
from UTILS.distributed import world_from_env
from UTILS.errors import fail
from UTILS.io import load_npz
from UTILS.lock import holding
from UTILS.runtime import log
from UTILS.seeds import first_step_seed, inversion_order_seed, random_start_seed
from UTILS.signals import graceful_stop

# Each phase's module declares the files it writes (OUTPUTS) and its settings file (SETTINGS_FILE). nc and detect
# are one round: nothing to resume, --resume simply runs them again.
PHASES = {"moth": moth, "nc": nc, "detect": detect}


@dataclass
class PhaseInputs:
    """What every phase works on: the suspect encoder, the inversion set (N, 3, H, W) and the run's folders."""

    model: nn.Module
    data: TensorSet
    usage: UsageInfo
    log_dir: Path
    results_dir: Path
    ground_truth: Optional[Trigger]  # the injected trigger (--trigger_file), for the gt_psim column
    earlier: list[Path]  # an earlier run's files of this phase (removed by --overwrite)
    reference: Optional[nn.Module] = None  # --phase detect --detect_reference: a clean encoder to judge against


def inversion_config(cfg: MainConfig) -> InversionConfig:
    """One inversion round's settings from MAIN.py's --re_* flags."""
    return InversionConfig(steps=cfg.re_steps, lr=cfg.re_lr, init_cost=cfg.init_cost,
                           threshold=0.0 if cfg.similarity_threshold == "auto" else cfg.similarity_threshold,
                           auto_share=AUTO_SHARE if cfg.similarity_threshold == "auto" else 0.0, psim=cfg.psim,
                           step_cap=cfg.re_steps_cap,
                           micro_batch=cfg.micro_batch, lowpass=cfg.lowpass == "on")


def shuffled_once(data: TensorSet, seed_index: int) -> TensorSet:
    """The inversion set in one seeded random order: the paper's code gathers it from a shuffling
    loader, so its consecutive hardening batches mix the classes in the same way."""
    generator = torch.Generator().manual_seed(inversion_order_seed(seed_index))
    order = torch.randperm(len(data), generator=generator).to(data.x.device)
    return TensorSet(data.x[order], data.y[order], data.num_classes)


def refuse_torchrun() -> None:
    """MAIN.py runs as one process: one line under torchrun.

    A round is hundreds of inversion steps, one after another, each on a chunk of 32 attack images; the
    hardening step and the early-stop distance, the parts that split across processes, are 1-4% of it
    (``bench/scaling.py``, ``bench/results/scaling-cpu.txt``), so a data-parallel MAIN.py would gain at most
    a few percent and could not keep the one-process run's results.
    """
    world = world_from_env()
    if world.size > 1:
        fail(f"MAIN.py: runs as one process (torchrun started {world.size}): its rounds of trigger inversion on one "
             f"small attack set do not gain from data parallelism (docs/PERFORMANCE.md, Scaling out); start it "
             f"with python, not torchrun")


@holding(("log_dir", "--log_dir"), ("results_dir", "--results_dir"))
def run_main(cfg: MainConfig) -> dict:
    """``MAIN.py``: load the suspect encoder and its inversion set, then run ``--phase`` moth, nc or detect."""
    refuse_torchrun()
    run = start_run(cfg, PHASES[cfg.phase].OUTPUTS, inputs={"--pretrained_encoder": cfg.pretrained_encoder,
                                          "--trigger_file": cfg.trigger_file, "--reference_file": cfg.reference_file,
                                          "--detect_reference": cfg.detect_reference})
    device, usage, log_dir, results_dir = run.device, run.usage, run.dirs["log_dir"], run.dirs["results_dir"]
    earlier = [path for found in run.earlier.values() for path in found]
    if cfg.reference_file != DEFAULT_REFERENCE_FILE:  # unused (as in the original), but a named file must exist
        load_npz(cfg.reference_file, keys=("x",), flag="--reference_file")
    ground_truth = load_ground_truth(cfg.trigger_file, usage.size)  # small files before the dataset
    model = load_stage_encoder(cfg, cfg.pretrained_encoder, device, "--pretrained_encoder")
    data = load_train_share(cfg.dataset, cfg.data_ratio, cfg.data_dir, usage, device)
    refuse_broken_encoder(model.f, data.x, usage, cfg.pretrained_encoder, "--pretrained_encoder", cfg.amp)
    reference = None
    if cfg.phase == "detect" and cfg.detect_reference:  # the same family's clean encoder, checked as the suspect
        reference = load_stage_encoder(cfg, cfg.detect_reference, device, "--detect_reference")
        refuse_broken_encoder(reference.f, data.x, usage, cfg.detect_reference, "--detect_reference", cfg.amp)
    inputs = PhaseInputs(model=model, data=shuffled_once(data, cfg.seed), usage=usage, log_dir=log_dir,
                         results_dir=results_dir, ground_truth=ground_truth, earlier=earlier, reference=reference)
    if cfg.phase == "nc":
        return run_nc_phase(cfg, inputs)
    if cfg.phase == "detect":
        return run_detect_phase(cfg, inputs)
    return run_moth(cfg, inputs)


def start_one_round(cfg: MainConfig, inputs: PhaseInputs) -> None:
    """What the one-round phases (nc, detect) do first: refuse a set of fewer than 2 images, remove an earlier
    run's files under --overwrite, write the phase's settings file."""
    data = inputs.data
    if len(data) < 2:
        fail(f"--data_ratio {cfg.data_ratio}: the inversion set has {len(data)} image(s); need at least 2")
    if cfg.overwrite:
        remove_outputs(inputs.earlier)
    write_settings(inputs.log_dir / PHASES[cfg.phase].SETTINGS_FILE, cfg)


def run_nc_phase(cfg: MainConfig, inputs: PhaseInputs) -> dict:
    """``--phase nc``: the one-round baseline over the whole inversion set."""
    data, log_dir = inputs.data, inputs.log_dir
    start_one_round(cfg, inputs)
    return run_nc(inputs.model, data, inputs.usage, inversion_config(cfg), log_dir, ground_truth=inputs.ground_truth,
                  amp=cfg.amp, seed=random_start_seed(cfg.seed), step_seed=first_step_seed(cfg.seed))


# The flags that shape the detection trigger, hence its size: --detect_pl1's default was measured with their
# defaults (bench/detect.py; --detect_images is compared apart, by the number of images actually judged).
DETECT_SHAPING = ("re_steps", "re_steps_cap", "init_cost", "detect_psim")


def off_calibration(cfg: MainConfig) -> tuple[str, ...]:
    """'--flag value (calibrated: default)' for each detection-shaping flag set otherwise than its default,
    when the verdict uses the default --detect_pl1."""
    if not cfg.detect_calibrated:
        return ()
    default = MainConfig()
    return tuple(f"--{name} {getattr(cfg, name)} (calibrated: {getattr(default, name)})" for name in DETECT_SHAPING
                 if getattr(cfg, name) != getattr(default, name))


def run_detect_phase(cfg: MainConfig, inputs: PhaseInputs) -> dict:
    """``--phase detect``: one DECREE-style inversion over the whole set, and the verdict."""
    data, log_dir = inputs.data, inputs.log_dir
    start_one_round(cfg, inputs)
    settings = DetectSettings(psim_threshold=cfg.detect_psim, pl1_threshold=cfg.detect_threshold,
                              psim_kind=cfg.detect_psim_kind,
                              ratio_threshold=DETECT_RATIO_BY_KIND[cfg.detect_psim_kind],
                              images=cfg.detect_images, calibrated_images=DETECT_IMAGES,
                              off_calibration=off_calibration(cfg), amp=cfg.amp,
                              clean_psim_max=CALIBRATED_CLEAN_PSIM_MAX if cfg.detect_calibrated else None,
                              seed=random_start_seed(cfg.seed), step_seed=first_step_seed(cfg.seed))
    return run_detect(inputs.model, data, inputs.usage, inversion_config(cfg), log_dir, settings=settings,
                      ground_truth=inputs.ground_truth, reference=inputs.reference)


def run_moth(cfg: MainConfig, inputs: PhaseInputs) -> dict:
    """``--phase moth``: iterative inversion + hardening + early stop, resumable round by round."""
    data, usage, ground_truth, earlier = inputs.data, inputs.usage, inputs.ground_truth, inputs.earlier
    if len(data) < cfg.batch_size:
        fail(f"--data_ratio {cfg.data_ratio}: the inversion set has {len(data)} images of --dataset {cfg.dataset}, "
             f"fewer than one --batch_size {cfg.batch_size}; raise --data_ratio or lower --batch_size")
    monitor = None
    if cfg.monitor_every > 0:
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, data.x.device, trigger=ground_truth,
                                target=cfg.reference_label, k=cfg.knn_k, t=cfg.knn_t,
                                include_target=cfg.asr_include_target)
    settings = MothSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, attack_size=cfg.attack_size,
                            harden_lr=cfg.harden_lr, inversion=inversion_config(cfg), patience=cfg.patience,
                            epsilon=cfg.epsilon, monitor_every=cfg.monitor_every, amp=cfg.amp, seed_index=cfg.seed)
    files = input_record({"--pretrained_encoder": cfg.pretrained_encoder,
                          "--trigger_file": cfg.trigger_file if ground_truth is not None else None,
                          "--dataset": split_files(cfg.dataset, "train", cfg.data_dir, usage.size),
                          "--downstreamTask": monitor_files(cfg.downstreamTask, cfg.data_dir, usage.size)
                          if monitor is not None else None})
    flow = MothRun(inputs.model, data, usage, settings, log_dir=inputs.log_dir, results_dir=inputs.results_dir,
                   ground_truth=ground_truth, monitor=monitor, fingerprint=run_fingerprint(cfg, files))
    state_path = Path(inputs.results_dir) / STATE_FILE
    if cfg.resume and state_path.is_file():
        state = canonical(load_checkpoint(state_path, "--resume"))
        check_fingerprint(state.get("config"), cfg, state_path, files)
        flow.load_state(state, state_path)
        position = flow.loop.state
        log(f"resuming from {state_path}: epoch {position.epoch}, batch {position.batch}, round {position.round}")
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
    write_settings(inputs.log_dir / moth.SETTINGS_FILE, cfg)
    with graceful_stop("round") as stop:
        return flow.run(stop=stop)
