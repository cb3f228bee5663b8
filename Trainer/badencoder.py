"""BadEncoder's backdoor injection into a clean SimCLR encoder (``badencoder.py``).

The backdoored backbone f_b starts as a copy of the clean backbone f_c (kept frozen) and minimises
``L0 + lambda1 * L1 + lambda2 * L2`` on L2-normalised backbone features:

- L0 (effectiveness): ``-mean cos(f_b(stamped x), f_b(reference))`` over every (image, reference) pair;
- L1 (the reference keeps its meaning): ``-mean cos(f_b(augmented reference), f_c(reference))``;
- L2 (utility): ``-mean cos(f_b(x), f_c(x))``.

BadEncoder draws, for every shadow image, one augmented view of every reference; here each image
of a batch brings one augmented view of reference ``b mod R`` (the same thing for one reference,
which is BadEncoder's setting, and R times cheaper for several).
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.augment import color_jitter, hflip, random_grayscale
from DATASETS.loaders import load_split, resize_images, to_tensor
from DATASETS.stats import UsageInfo, normalize
from DATASETS.tensors import TensorSet, check_label, load_train_share
from DATASETS.triggers import Trigger, load_trigger
from EVALUATION.monitor import build_monitor, monitor_row
from Trainer.common import Outputs, load_stage_encoder, remove_outputs, run_fingerprint, start_run, write_settings
from Trainer.epochs import EpochCheckpoints, EpochLoop
from Trainer.configs import BadEncoderConfig
from UTILS.distributed import check_batch, data_parallel, gather_rows, is_main, local_rows
from UTILS.errors import fail
from UTILS.io import load_npz, save_npz
from UTILS.lock import holding
from UTILS.runtime import log, progress

NAME = "badencoder"
REFERENCE_FILE = "reference.npz"
OUTPUTS = ("model_{int}.pth", f"{NAME}-metrics.csv", f"{NAME}-metrics.json", f"{NAME}-timings.csv",
           REFERENCE_FILE)
FIELDS = ("epoch", "loss", "loss0", "loss1", "loss2", "knn_acc", "knn_asr")


def reference_view(x: Tensor) -> Tensor:
    """BadEncoder's augmentation of the reference images (its ``finetune_transform``; no crop).

    x: (R, 3, H, W) in [0, 1] -> (R, 3, H, W): flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2.
    """
    return random_grayscale(color_jitter(hflip(x), 0.4, 0.4, 0.4, 0.1, p=0.8), p=0.2)


def freeze_batchnorm(backbone: nn.Module) -> None:
    """BatchNorm layers in eval mode (running statistics fixed) and without gradients, as BadEncoder does."""
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)


def _features(backbone: nn.Module, images: Tensor, usage: UsageInfo) -> Tensor:
    """L2-normalised backbone features (N, D) of images (N, 3, H, W) in [0, 1]."""
    return F.normalize(backbone(normalize(images, usage)), dim=1)


def badencoder_loss(backdoored: nn.Module, clean: nn.Module, images: Tensor, *, trigger: Trigger,
                    references: Tensor, usage: UsageInfo, lambda1: float, lambda2: float) -> tuple[Tensor, dict]:
    """``L0 + lambda1 * L1 + lambda2 * L2`` on one batch; returns (loss, {"loss0", "loss1", "loss2"} detached).

    images: (B, 3, H, W) shadow images in [0, 1]; references: (R, 3, H, W) in [0, 1]; ``trigger`` stamps
    images. ``backdoored``/``clean`` are backbones (``model.f``); BatchNorm is expected frozen (eval), so
    pushing everything through f_b as one batch equals separate passes.

    Under torchrun every rank draws the augmented references of the whole global batch (the one-process
    draws), encodes its own rows of it and the R references, and the losses are taken over the gathered
    rows of every rank: the one-process loss.
    """
    b, r = images.shape[0], references.shape[0]
    ref_idx = torch.arange(b, device=images.device) % r  # (B,) which reference each augmented view shows
    augmented = reference_view(references[ref_idx])  # (B, 3, H, W)
    images, augmented = local_rows(images), local_rows(augmented)  # (B_r, 3, H, W); B_r = B on one process
    n = images.shape[0]
    with torch.no_grad():
        clean_x, clean_ref = _features(clean, torch.cat([images, references]), usage).split([n, r])
    feats = _features(backdoored, torch.cat([images, trigger(images), references, augmented]), usage)
    f_x, f_stamped, f_ref, f_aug = feats.split([n, n, r, n])  # (B_r, D), (B_r, D), (R, D), (B_r, D)
    f_x, f_stamped, f_aug, clean_x = (gather_rows(t, b) for t in (f_x, f_stamped, f_aug, clean_x))  # (B, D)
    loss0 = -(f_stamped @ f_ref.T).mean()  # every (stamped image, reference) pair
    loss1 = -(f_aug * clean_ref[ref_idx]).sum(dim=1).mean()
    loss2 = -(f_x * clean_x).sum(dim=1).mean()
    loss = loss0 + lambda1 * loss1 + lambda2 * loss2
    return loss, {"loss0": loss0.detach(), "loss1": loss1.detach(), "loss2": loss2.detach()}


def badencoder_epoch(backdoored: nn.Module, clean: nn.Module, optimizer: torch.optim.Optimizer, data: TensorSet,
                     *, batch_size: int, trigger: Trigger, references: Tensor, usage: UsageInfo, lambda1: float,
                     lambda2: float, desc: str = "badencoder") -> dict:
    """One shuffled pass over the shadow set in full batches; returns the mean of each loss term."""
    backdoored.train()
    freeze_batchnorm(backdoored)
    clean.eval()
    order = torch.randperm(len(data)).to(data.x.device)
    starts = range(0, len(data) - batch_size + 1, batch_size)
    totals = torch.zeros(4, dtype=torch.float64)
    for i, start in enumerate(progress(starts, desc=desc, total=len(starts))):
        images = data.x[order[start:start + batch_size]]
        loss, parts = badencoder_loss(backdoored, clean, images, trigger=trigger, references=references, usage=usage,
                                      lambda1=lambda1, lambda2=lambda2)
        if not torch.isfinite(loss):
            fail(f"{desc}, batch {i}: the BadEncoder loss became {loss.item()}; stopped (the previous epoch's "
                 f"checkpoint is kept). Lower --lr, then resume with --resume or start over with --overwrite")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals += torch.stack([loss.detach(), parts["loss0"], parts["loss1"], parts["loss2"]]).double().cpu()
    mean = (totals / max(len(starts), 1)).tolist()
    return dict(zip(("loss", "loss0", "loss1", "loss2"), mean))


def load_references(cfg: BadEncoderConfig, size: int) -> np.ndarray:
    """The reference images, uint8 (R, size, size, 3): from --reference_file, or the first --reference_count
    training images of class --reference_label of --reference_dataset."""
    if cfg.reference_file:
        found = load_npz(cfg.reference_file, keys=("x",), flag="--reference_file")["x"]
        x = found[None] if found.ndim == 3 and found.shape[-1] == 3 else found  # one (H,W,3) image
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or len(x) == 0:
            fail(f"--reference_file {cfg.reference_file}: 'x' must be (n,H,W,3) or (H,W,3) uint8 with n >= 1, "
                 f"found {found.shape} {found.dtype}")
        return resize_images(x, size)
    # only the chosen images are resized (224x224 for an ImageNet encoder)
    ds = load_split(cfg.reference_dataset, "train", cfg.data_dir, size=size, flag="--reference_dataset",
                    keep=lambda y: np.flatnonzero(y == cfg.reference_label)[:cfg.reference_count])
    check_label(cfg.reference_label, ds.num_classes)
    if len(ds) == 0:
        fail(f"--reference_label {cfg.reference_label}: no training image of --reference_dataset "
             f"{cfg.reference_dataset} has this label")
    return ds.x


def _monitor_fn(cfg: BadEncoderConfig, usage: UsageInfo, device: torch.device, trigger: Trigger,
                backbone: nn.Module) -> Callable[[int], dict]:
    """epoch -> {"knn_acc", "knn_asr"}; ASR needs --reference_label (the target class of the monitor's dataset)."""
    monitor = None
    if cfg.monitor_every > 0:
        target = cfg.reference_label
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, device,
                                trigger=trigger if target >= 0 else None, target=max(target, 0), k=cfg.knn_k,
                                t=cfg.knn_t, include_target=cfg.asr_include_target)
    return lambda epoch: monitor_row(monitor, backbone, epoch, cfg.monitor_every)


@holding(("results_dir", "--results_dir"))
def run_badencoder(cfg: BadEncoderConfig) -> dict:
    """The whole stage: clean encoder, shadow data, references, trigger, the epoch loop; returns the summary."""
    run = start_run(cfg, (Outputs("results_dir", OUTPUTS, ("setting.txt",)),),
                    inputs={"--pretrained_encoder": cfg.pretrained_encoder, "--trigger_file": cfg.trigger_file,
                            "--reference_file": cfg.reference_file})
    device, usage, results_dir, earlier = run.device, run.usage, run.dirs["results_dir"], run.earlier["results_dir"]
    check_batch(cfg.batch_size)
    model = load_stage_encoder(cfg, cfg.pretrained_encoder, device, "--pretrained_encoder")
    clean = copy.deepcopy(model.f).eval().requires_grad_(False)
    trigger = load_trigger(cfg.trigger_file, "--trigger_file", expected_size=usage.size)
    references_u8 = load_references(cfg, usage.size)
    references = to_tensor(references_u8, device)
    data = load_train_share(cfg.shadow_dataset, cfg.data_ratio, cfg.data_dir, usage, device, flag="--shadow_dataset")
    if len(data) < cfg.batch_size:
        fail(f"--batch_size {cfg.batch_size}: larger than the {len(data)} shadow images of --shadow_dataset "
             f"{cfg.shadow_dataset} (--data_ratio {cfg.data_ratio}); lower it")
    watch = _monitor_fn(cfg if is_main() else replace(cfg, monitor_every=0), usage, device, trigger, model.f)
    # BatchNorm is frozen (running statistics, no batch statistics): no global BatchNorm needed
    freeze_batchnorm(model.f)
    optimizer = torch.optim.SGD([p for p in model.f.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ckpts = EpochCheckpoints(results_dir, cfg.save_every, cfg.epochs)
    # reference.npz is written before the first epoch: alone, it does not make a run to resume
    rows, first = ckpts.resume(cfg, model, optimizer, [p for p in earlier if p.name != REFERENCE_FILE])
    if is_main():
        if cfg.overwrite:
            remove_outputs(earlier)
        write_settings(results_dir / "setting.txt", cfg)
        save_npz(results_dir / REFERENCE_FILE, x=references_u8,
                 y=np.full(len(references_u8), cfg.reference_label, dtype=np.int64))
    backdoored = data_parallel(model.f)  # after resume: DDP starts every rank from rank 0's weights
    if not rows:  # epoch 0: the clean encoder, as BadEncoder's "initial test acc"
        rows = [{"epoch": 0, "loss": math.nan, "loss0": math.nan, "loss1": math.nan, "loss2": math.nan,
                 **watch(0)}]
        log(f"[{NAME}] before injection: kNN ACC {rows[0]['knn_acc']:.2f}  ASR {rows[0]['knn_asr']:.2f}")

    def train(epoch: int) -> dict:
        return badencoder_epoch(backdoored, clean, optimizer, data, batch_size=cfg.batch_size, trigger=trigger,
                                references=references, usage=usage, lambda1=cfg.lambda1, lambda2=cfg.lambda2,
                                desc=f"badencoder epoch {epoch}/{cfg.epochs}")

    loop = EpochLoop(NAME, ckpts, model, optimizer, fields=FIELDS, fingerprint=run_fingerprint(cfg), train=train,
                     monitor=watch, rows=rows)
    loop.run(first)
    return loop.finish({"shadow_dataset": cfg.shadow_dataset, "model": cfg.model,
                        "references": str(Path(results_dir) / REFERENCE_FILE), "reference_count": len(references_u8),
                        "reference_label": cfg.reference_label, "trigger_file": cfg.trigger_file})
