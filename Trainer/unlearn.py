"""Unlearning the inverted trigger (``Unlearn-trigger.py``), computed as the original computes it.

Per batch of B images in [0, 1] (the batch counter ``c`` starts at 0 and counts every batch of the
run, across epochs):

1. injected = ``np.random.RandomState(c).choice(B, int(B * portion), replace=False)``; the other
   positions ("clean"), ascending, keep their image.
2. Two batches of B images, in position order: the first holds the injected images as they are and
   augmented view A of the clean ones; the second holds the injected images stamped with the
   inverted trigger and augmented view B of the clean ones (:func:`DATASETS.augment.unlearn_view`,
   one parameter draw per view for the whole clean share).
3. Two separate train-mode passes of the whole model (BatchNorm normalises each batch on its own
   statistics): loss = NT-Xent(g-outputs of the clean rows of pass 1, of pass 2; temperature knn_t)
   + beta * (-mean cos(g-outputs of the injected rows of pass 1, of pass 2)).

Where the original cannot compute a term we use 0: no clean row (``--portion 1.0``, the default;
the original crashes) gives a contrastive term of 0, and no injected row (int(B * portion) == 0; the
original gets NaN) gives an unlearning term of 0. A last batch of a single image is left out of
every epoch: BatchNorm1d in the projection head cannot train on one image.

Before training, :func:`initial_similarity` runs the original's ``test_init_sim`` pass.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.augment import unlearn_view
from DATASETS.stats import UsageInfo, normalize
from DATASETS.loaders import split_files
from DATASETS.tensors import TensorSet, load_train_share
from DATASETS.triggers import Trigger, load_trigger
from EVALUATION.monitor import Monitor, build_monitor, monitor_row
from MODELS.losses import nt_xent
from MODELS.precision import unwrap, with_precision
from Trainer.common import (Outputs, fmt_metrics, input_record, load_ground_truth,
                            load_stage_encoder, monitor_files, remove_outputs, reseed_after_loading, run_fingerprint,
                            start_run, write_settings)
from Trainer.configs import UnlearnConfig
from Trainer.epochs import EpochCheckpoints, EpochLoop
from Trainer.filenames import UNLEARNED_CKPT
from Trainer.preview import save_trigger_preview
from UTILS.distributed import data_parallel, gather_rows, is_main, local_rows, sync_batchnorm
from UTILS.errors import fail
from UTILS.io import atomic_write, write_json
from UTILS.lock import holding
from UTILS.runtime import log, progress

NAME = "unlearn"  # the epoch loop's files: unlearn-metrics.csv, unlearn-timings.csv
CKPT = UNLEARNED_CKPT
RESULTS = ("Harden_Unlearn_model_{int}.pth",)
LOGS = ("loss-log.npy", "unlearn-metrics.csv", "unlearn-metrics.json", "unlearn-timings.csv")
# init_sim/test_sim are filled in the epoch-0 row only (the pass runs once, before training)
METRIC_FIELDS = ("epoch", "loss", "contrastive", "unlearn", "knn_acc", "knn_asr", "init_sim", "test_sim")
SETTINGS_FILE, PREVIEW_FILE = "unlearn-setting.txt", "unlearn-trigger.png"

Augment = Callable[[Tensor], Tensor]


def injected_indices(batch: int, portion: float, counter: int) -> np.ndarray:
    """(int(batch * portion),) int64: the positions of a batch that get the trigger, in draw order.

    The original seeds numpy's global RNG with the batch counter and calls ``np.random.choice``; a
    private ``RandomState(counter)`` makes the same draw and leaves the global RNG alone.
    """
    return np.random.RandomState(counter).choice(batch, int(batch * portion), replace=False)


def split_batch(batch: int, portion: float, counter: int) -> tuple[Tensor, Tensor]:
    """(injected, clean) position indices (long tensors on the CPU) of batch number ``counter``.

    clean is the rest of 0..batch-1 in ascending order (the original's set difference iterates so).
    """
    injected = injected_indices(batch, portion, counter)
    clean = np.setdiff1d(np.arange(batch), injected)  # sorted
    return torch.from_numpy(injected.astype(np.int64)), torch.from_numpy(clean.astype(np.int64))


def unlearn_inputs(images: Tensor, trigger: Trigger, injected: Tensor, clean: Tensor,
                   augment: Augment = unlearn_view) -> tuple[Tensor, Tensor]:
    """The two batches of one unlearning step, (B, 3, H, W) each in [0, 1], rows in position order.

    first: injected rows = the image, clean rows = view A; second: injected rows = the stamped
    image, clean rows = view B. The original augments three copies in turn (clean, stamped, and one
    stamped with the ground-truth trigger that it never uses); its clean rows are the same images,
    so the third call only advances the RNG: we make the same draws on one image.
    """
    first, second = images.clone(), images.clone()
    injected, clean = injected.to(images.device), clean.to(images.device)
    if injected.numel():
        second[injected] = trigger(images[injected])
    if clean.numel():
        shared = images[clean]
        first[clean] = augment(shared)
        second[clean] = augment(shared)
        augment(shared[:1])  # one draw per call, whatever the batch: keeps the RNG in step with the original
    return first.clamp(0.0, 1.0), second.clamp(0.0, 1.0)


def unlearn_loss(model: nn.Module, images: Tensor, trigger: Trigger, usage: UsageInfo, *,
                 injected: Tensor, clean: Tensor, beta: float, temperature: float,
                 augment: Augment = unlearn_view) -> tuple[Tensor, dict]:
    """contrastive + beta * unlearn on one batch; two passes of ``model`` in its current mode.

    images: (B, 3, H, W) in [0, 1]; injected, clean: position indices from :func:`split_batch`.
    contrastive = NT-Xent over the clean rows of the two passes' projections (0 without clean rows);
    unlearn = -mean cos(projection of the image, of the stamped image) over the injected rows (0
    without injected rows). Returns (loss, {"contrastive", "unlearn"} detached).
    """
    first, second = unlearn_inputs(images, trigger, injected, clean, augment)
    # Two passes, not one batch of 2B: in train mode BatchNorm normalises each pass on its own statistics.
    # Under torchrun every rank builds both batches whole (the one-process draws), passes its own rows
    # (global BatchNorm statistics) and gathers every rank's projections, so the loss is the one-process loss.
    _, z1 = model(normalize(local_rows(first), usage))  # (B_r, 128), L2-normalised; B_r = B on one process
    _, z2 = model(normalize(local_rows(second), usage))
    z1, z2 = gather_rows(z1, images.shape[0]), gather_rows(z2, images.shape[0])  # (B, 128)
    injected, clean = injected.to(z1.device), clean.to(z1.device)
    contrastive = nt_xent(z1[clean], z2[clean], temperature) if clean.numel() else z1.new_zeros(())
    unlearn = -mean_cos(z1[injected], z2[injected]) if injected.numel() else z1.new_zeros(())
    return contrastive + beta * unlearn, {"contrastive": contrastive.detach(), "unlearn": unlearn.detach()}


def epoch_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of the batches of one pass over n shuffled images.

    A last batch of a single image is left out: BatchNorm1d cannot train on one image.
    """
    spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return spans[:-1] if spans and spans[-1][1] - spans[-1][0] == 1 else spans


@torch.no_grad()
def initial_similarity(backbone: nn.Module, images: Tensor, trigger: Trigger,
                       usage: UsageInfo, update_bn: bool = True, augment: Augment = unlearn_view) -> dict:
    """The original's ``test_init_sim``: {"init_sim", "test_sim"} of the encoder before unlearning.

    images: the whole unlearning set (N, 3, H, W) in [0, 1], run as ONE batch per pass, backbone in
    train mode, four passes in the original's order: f(images) (un-normalised pixels, as the
    original feeds them), f(stamped), f(view 1), f(view 2) (normalised; one augmentation draw per
    view). init_sim = mean cos(f(stamped), f(images)); test_sim = mean cos(f(view 1), f(view 2)).

    In train mode each pass moves BatchNorm's running statistics, which the epoch-0 kNN check and
    training then start from; ``update_bn=False`` restores them afterwards (same reported numbers).
    Training itself normalises on batch statistics, so only eval-mode uses (the kNN monitor, the
    saved encoder's running statistics) can see the difference. A set larger than ``INIT_SIM_CHUNK``
    images goes through each pass in chunks of that size (each chunk then updates the running
    statistics once): the original's single batch of a whole large set does not fit in memory.
    """
    inner = unwrap(backbone)
    saved = None if update_bn else {k: v.clone() for k, v in inner.named_buffers()}
    was_training = inner.training
    backbone.train()
    n = images.shape[0]  # under torchrun: each rank passes its rows (global BatchNorm), then gathers
    try:
        raw = gather_rows(_chunked(backbone, local_rows(images)), n)  # (N, D)
        stamped = gather_rows(_chunked(backbone, normalize(trigger(local_rows(images)), usage)), n)
        init_sim = mean_cos(stamped, raw).item()
        view1, view2 = augment(images), augment(images)  # one draw per view, the same on every rank
        test_sim = mean_cos(gather_rows(_chunked(backbone, normalize(local_rows(view1), usage)), n),
                            gather_rows(_chunked(backbone, normalize(local_rows(view2), usage)), n)).item()
    finally:
        backbone.train(was_training)
        if saved is not None:
            buffers = dict(inner.named_buffers())
            for k, v in saved.items():
                buffers[k].copy_(v)
    return {"init_sim": init_sim, "test_sim": test_sim}


INIT_SIM_CHUNK = 4096  # images per forward pass of the initial-similarity check (one batch below that)


def _chunked(backbone: nn.Module, x: Tensor) -> Tensor:
    """backbone(x) as float32 (torch's default dtype) (N, D), in chunks of INIT_SIM_CHUNK images."""
    dtype = torch.get_default_dtype()
    return torch.cat([backbone(x[s:s + INIT_SIM_CHUNK]).to(dtype) for s in range(0, x.shape[0], INIT_SIM_CHUNK)])


def mean_cos(a: Tensor, b: Tensor) -> Tensor:
    """Mean over rows of cos(a_i, b_i): (N, D), (N, D) -> scalar (the original's negated loss_similarity)."""
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1).mean()


def unlearn_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: TensorSet, *, batch_size: int,
                  trigger: Trigger, usage: UsageInfo, portion: float, beta: float,
                  temperature: float, desc: str = "unlearn",
                  kept: str = "The last good checkpoint is kept", first_batch: int = 0,
                  augment: Augment = unlearn_view) -> dict:
    """One pass over the shuffled unlearning set, model in train mode; returns the mean losses.

    ``first_batch`` is the run's batch counter at the start of this epoch (it picks the stamped
    images, see :func:`split_batch`). Each batch weighs the same in the means, as the original's
    ``loss-log.npy``. A NaN/inf loss stops before the optimiser step with one line naming the batch;
    ``kept`` says which checkpoint survives.
    """
    model.train()
    order = torch.randperm(len(data)).to(data.x.device)
    totals = torch.zeros(3, dtype=torch.float64)
    spans = epoch_batches(len(data), batch_size)
    for i, (start, stop) in enumerate(progress(spans, desc=desc, total=len(spans))):
        images = data.x[order[start:stop]]
        injected, clean = split_batch(stop - start, portion, first_batch + i)
        loss, parts = unlearn_loss(model, images, trigger, usage, injected=injected, clean=clean, beta=beta,
                                   temperature=temperature, augment=augment)
        values = torch.stack([loss.detach(), parts["contrastive"], parts["unlearn"]]).double().cpu()  # one sync
        if not math.isfinite(values[0].item()):
            fail(f"{desc}, batch {i}: the unlearning loss became {values[0].item()}; stopped. "
                 f"{kept}. Lower --lr or --beta, then start over with --overwrite")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals += values
    named = list(unwrap(model).named_parameters())
    finite = torch.stack([torch.isfinite(p).all() for _, p in named])  # one sync for all weights
    bad = None if finite.all() else next(n for (n, _), ok in zip(named, finite) if not ok)
    if bad is not None:
        fail(f"{desc}: the encoder's weights became NaN or inf (first in {bad}); stopped. {kept}. "
             f"Lower --lr or --beta, then start over with --overwrite")
    mean = (totals / len(spans)).tolist()
    return {"loss": mean[0], "contrastive": mean[1], "unlearn": mean[2]}


def check_unlearning_set(n: int, batch_size: int, data_ratio: float) -> None:
    """Refuse a set no batch of which can train; say once when a single-image last batch is left out."""
    if n < 2:
        fail(f"--data_ratio {data_ratio}: expected a share holding at least 2 images (it holds {n}; "
             f"BatchNorm cannot train on a single image)")
    if n % batch_size == 1:
        log(f"note: {n} images with --batch_size {batch_size} leave a last batch of 1 image, which BatchNorm "
            f"cannot train on; each epoch leaves it out ({n - 1} images per epoch)")


@holding(("log_dir", "--log_dir"), ("results_dir", "--results_dir"))
def run_unlearn(cfg: UnlearnConfig) -> dict:
    """The whole stage: load, initial-similarity pass, epoch-0 kNN check, epochs with checkpoints."""
    # the results folder first: its earlier checkpoints are what --resume continues from
    run = start_run(cfg, (Outputs("log_dir"), Outputs("results_dir", RESULTS),
                          Outputs("log_dir", LOGS, (SETTINGS_FILE, PREVIEW_FILE))),
                    inputs={"--pretrained_encoder": cfg.pretrained_encoder, "--re_mask_pattern": cfg.re_mask_pattern,
                            "--trigger_file": cfg.trigger_file})
    device, usage, log_dir, results_dir = run.device, run.usage, run.dirs["log_dir"], run.dirs["results_dir"]
    earlier, earlier_logs = run.earlier["results_dir"], run.earlier["log_dir"]
    model = load_stage_encoder(cfg, cfg.pretrained_encoder, device, "--pretrained_encoder")
    trigger = load_trigger(cfg.re_mask_pattern, "--re_mask_pattern", expected_size=usage.size)
    ground_truth = load_ground_truth(cfg.trigger_file, usage.size) if cfg.monitor_every > 0 else None
    data = load_train_share(cfg.dataset, cfg.data_ratio, cfg.data_dir, usage, device)
    reseed_after_loading(cfg.data_ratio, cfg.seed)  # --seed 0 with --data_ratio < 1: the original's torch seed
    check_unlearning_set(len(data), cfg.batch_size, cfg.data_ratio)
    monitor = None
    if cfg.monitor_every > 0 and is_main():  # the other ranks write no metrics
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, device, trigger=ground_truth,
                                target=cfg.reference_label, k=cfg.knn_k, t=cfg.knn_t,
                                include_target=cfg.asr_include_target)
    # the two passes normalise on their batch statistics (the method's): under torchrun, the global batch's
    sync_batchnorm(model)
    net, backbone = with_precision(model, cfg.amp), with_precision(model.f, cfg.amp)  # = model, model.f without --amp
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    files = None if not is_main() else input_record({  # rank 0 writes and checks the checkpoints
        "--pretrained_encoder": cfg.pretrained_encoder, "--re_mask_pattern": cfg.re_mask_pattern,
        "--trigger_file": cfg.trigger_file if ground_truth is not None else None,
        "--dataset": split_files(cfg.dataset, "train", cfg.data_dir, usage.size),
        "--downstreamTask": monitor_files(cfg.downstreamTask, cfg.data_dir, usage.size) if monitor else None})
    checkpoints = EpochCheckpoints(results_dir, save_every=1, epochs=cfg.epochs, pattern=CKPT,  # keep every epoch
                                   inputs=files)
    rows, start_epoch = checkpoints.resume(cfg, model, optimizer, earlier_logs)
    if is_main():
        if cfg.overwrite:
            remove_outputs(earlier + earlier_logs)
        write_settings(log_dir / SETTINGS_FILE, cfg)
        save_trigger_preview(log_dir / PREVIEW_FILE, trigger, data.x[:4])
    if start_epoch == 0:  # a resumed run has these numbers in its epoch-0 row and must not move BatchNorm again
        rows = [_before_row(backbone, data.x, trigger, usage, monitor, cfg.init_sim_bn_update == "on")]
    net = data_parallel(net)  # after resume: DDP starts every rank from rank 0's weights
    per_epoch = len(epoch_batches(len(data), cfg.batch_size))  # the batch counter goes on across epochs

    def train(epoch: int) -> dict:
        kept = (f"The last good checkpoint is kept: {results_dir / CKPT.format(epoch - 1)}" if epoch > 1
                else "No epoch had finished, so no checkpoint was written")
        return unlearn_epoch(net, optimizer, data, batch_size=cfg.batch_size, trigger=trigger, usage=usage,
                             portion=cfg.portion, beta=cfg.beta, temperature=cfg.knn_t,
                             desc=f"unlearn epoch {epoch}/{cfg.epochs}", kept=kept, first_batch=(epoch - 1) * per_epoch)

    loop = EpochLoop(NAME, checkpoints, model, optimizer, fields=METRIC_FIELDS, fingerprint=run_fingerprint(cfg, files),
                     train=train, monitor=lambda epoch: monitor_row(monitor, backbone, epoch, cfg.monitor_every),
                     rows=rows, log_dir=log_dir,
                     write_extra=lambda rows: _write_loss_log(log_dir, rows), shown=("loss", "knn_acc", "knn_asr"))
    rows = loop.run(start_epoch)
    before = next((r for r in rows if r["epoch"] == 0), {})
    summary = {"epochs": cfg.epochs, "final_encoder": str(results_dir / CKPT.format(cfg.epochs)),
               "final_knn_acc": rows[-1].get("knn_acc", float("nan")) if rows else float("nan"),
               "final_knn_asr": rows[-1].get("knn_asr", float("nan")) if rows else float("nan"),
               "init_sim": before.get("init_sim", float("nan")), "test_sim": before.get("test_sim", float("nan")),
               "per_epoch": rows}
    if is_main():
        write_json(log_dir / "unlearn-metrics.json", summary)
    return summary


def _before_row(backbone: nn.Module, images: Tensor, trigger: Trigger, usage: UsageInfo, monitor: Optional[Monitor],
                update_bn: bool) -> dict:
    """The epoch-0 row: the initial-similarity pass, then (monitor on) the kNN check, in the original's order."""
    sims = initial_similarity(backbone, images, trigger, usage, update_bn=update_bn)
    log(f"[unlearn] init sim: {sims['init_sim']:.3f}, test sim: {sims['test_sim']:.8f}"
        + ("" if update_bn else " (BatchNorm statistics restored: --init_sim_bn_update off)"))
    knn = {"acc": float("nan"), "asr": float("nan")}
    if monitor is not None:
        knn = monitor(backbone)
        log("[unlearn] before: " + fmt_metrics({"knn_acc": knn["acc"], "knn_asr": knn["asr"]}))
    return {"epoch": 0, "loss": float("nan"), "contrastive": float("nan"), "unlearn": float("nan"),
            "knn_acc": knn["acc"], "knn_asr": knn["asr"], **sims}


def _write_loss_log(log_dir: Path, rows: list[dict]) -> None:
    """The original's ``loss-log.npy``: the mean loss of every trained epoch (epoch 0 is the check before)."""
    trained = [r for r in rows if r["epoch"] > 0]
    losses = np.asarray([r["loss"] for r in trained], dtype=np.float64)
    atomic_write(log_dir / "loss-log.npy", lambda h: np.save(h, losses))


