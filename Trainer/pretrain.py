"""SimCLR pre-training of a clean encoder (``pretraining_encoder.py``)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from DATASETS.augment import simclr_views
from DATASETS.stats import UsageInfo, get_usage, normalize
from DATASETS.tensors import TensorSet, load_train_share
from EVALUATION.monitor import build_monitor
from MODELS.losses import nt_xent
from MODELS.simclr import build_model
from Trainer.common import guard_outputs, remove_outputs, run_fingerprint, write_settings
from Trainer.epochs import EpochCheckpoints, EpochLoop
from Trainer.make_configs import PretrainConfig
from UTILS.errors import fail
from UTILS.io import ensure_writable_dir
from UTILS.lock import holding
from UTILS.runtime import progress, resolve_device, seed_everything

NAME = "pretrain"
OUTPUTS = ("model_*.pth", f"{NAME}-metrics.*", f"{NAME}-timings.csv")
FIELDS = ("epoch", "loss", "knn_acc")


def simclr_loss(model: nn.Module, images: Tensor, usage: UsageInfo, temperature: float) -> Tensor:
    """NT-Xent between the projections of two SimCLR views of each image. images: (B, 3, H, W) in [0, 1].

    The views go through the model one after the other, as in BadEncoder's pre-training, so each
    BatchNorm batch holds one view of every image.
    """
    v1, v2 = simclr_views(images)  # (B, 3, H, W) each
    _, z1 = model(normalize(v1, usage))  # (B, 128), L2-normalised
    _, z2 = model(normalize(v2, usage))
    return nt_xent(z1, z2, temperature)


def simclr_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, usage: UsageInfo,
                temperature: float) -> Tensor:
    """One SimCLR update on a batch, model in train mode; returns the (detached) loss."""
    model.train()
    loss = simclr_loss(model, images, usage, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def pretrain_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: TensorSet, batch_size: int,
                   usage: UsageInfo, temperature: float, desc: str = "pretrain") -> dict:
    """One shuffled pass in full batches (BadEncoder drops the last partial batch); returns the mean loss."""
    order = torch.randperm(len(data)).to(data.x.device)
    starts = range(0, len(data) - batch_size + 1, batch_size)
    total = torch.zeros((), dtype=torch.float64)
    for i, start in enumerate(progress(starts, desc=desc, total=len(starts))):
        loss = simclr_step(model, optimizer, data.x[order[start:start + batch_size]], usage, temperature)
        if not torch.isfinite(loss):
            fail(f"{desc}, batch {i}: the SimCLR loss became {loss.item()}; stopped (the previous epoch's "
                 f"checkpoint is kept). Lower --lr, then resume with --resume or start over with --overwrite")
        total += loss.double().cpu()
    return {"loss": (total / max(len(starts), 1)).item()}


@holding(("results_dir", "--results_dir"))
def run_pretrain(cfg: PretrainConfig) -> dict:
    """The whole stage: data, model, optimiser, resume, the epoch loop; returns the summary."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device, cfg.gpu)
    usage = get_usage(cfg.encoder_usage_info)
    results_dir = ensure_writable_dir(cfg.results_dir, "--results_dir")
    earlier = guard_outputs(results_dir, OUTPUTS, "--results_dir", cfg.overwrite, cfg.resume, remove=False)
    data = load_train_share(cfg.pretraining_dataset, cfg.data_ratio, cfg.data_dir, usage, device,
                            flag="--pretraining_dataset")
    if len(data) < cfg.batch_size:
        fail(f"--batch_size {cfg.batch_size}: larger than the {len(data)} pre-training images of "
             f"--pretraining_dataset {cfg.pretraining_dataset} (--data_ratio {cfg.data_ratio}); lower it")
    monitor = None
    if cfg.monitor_every > 0:
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, device, None, 0, cfg.knn_k, cfg.knn_t,
                                False)
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpts = EpochCheckpoints(results_dir, cfg.save_every, cfg.epochs)
    rows, start = ckpts.resume(cfg, model, optimizer, earlier)
    if cfg.overwrite:
        remove_outputs(earlier)
    write_settings(results_dir / "setting.txt", cfg)

    def train(epoch: int) -> dict:
        return pretrain_epoch(model, optimizer, data, cfg.batch_size, usage, cfg.knn_t,
                              desc=f"pretrain epoch {epoch}/{cfg.epochs}")

    def watch(epoch: int) -> dict:
        if monitor is None or epoch % cfg.monitor_every:
            return {"knn_acc": math.nan}
        return {"knn_acc": monitor(model.f)["acc"]}

    loop = EpochLoop(NAME, ckpts, model, optimizer, FIELDS, run_fingerprint(cfg), train, watch, rows)
    loop.run(start)
    return loop.finish({"pretraining_dataset": cfg.pretraining_dataset, "model": cfg.model,
                        "monitor_dataset": cfg.downstreamTask if monitor is not None else None})
