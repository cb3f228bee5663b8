"""SimCLR pre-training of a clean encoder (``pretraining_encoder.py``)."""
from __future__ import annotations


import torch
from torch import Tensor, nn

from DATASETS.augment import simclr_views
from DATASETS.stats import UsageInfo, normalize
from DATASETS.tensors import TensorSet, load_train_share
from EVALUATION.monitor import build_monitor, monitor_row
from MODELS.losses import nt_xent
from MODELS.simclr import build_model
from Trainer.common import Outputs, remove_outputs, run_fingerprint, start_run, write_settings
from Trainer.epochs import EpochCheckpoints, EpochLoop
from Trainer.configs import PretrainConfig
from UTILS.distributed import check_batch, data_parallel, gather_rows, is_main, local_rows, sync_batchnorm
from UTILS.errors import fail
from UTILS.lock import holding
from UTILS.runtime import progress

NAME = "pretrain"
OUTPUTS = ("model_{int}.pth", f"{NAME}-metrics.csv", f"{NAME}-metrics.json", f"{NAME}-timings.csv")
FIELDS = ("epoch", "loss", "knn_acc")


def simclr_loss(model: nn.Module, images: Tensor, usage: UsageInfo, temperature: float) -> Tensor:
    """NT-Xent between the projections of two SimCLR views of each image. images: (B, 3, H, W) in [0, 1].

    The views go through the model one after the other, as in BadEncoder's pre-training, so each
    BatchNorm batch holds one view of every image. Under torchrun every rank draws the views of the
    whole global batch (the same draws as one process), passes its own rows through the model and
    computes NT-Xent over the gathered rows of every rank: the one-process loss, negatives included.
    """
    v1, v2 = simclr_views(images)  # (B, 3, H, W) each
    _, z1 = model(normalize(local_rows(v1), usage))  # (B_r, 128), L2-normalised; B_r = B on one process
    _, z2 = model(normalize(local_rows(v2), usage))
    return nt_xent(gather_rows(z1, images.shape[0]), gather_rows(z2, images.shape[0]), temperature)


def simclr_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, usage: UsageInfo,
                temperature: float) -> Tensor:
    """One SimCLR update on a batch, model in train mode; returns the (detached) loss."""
    model.train()
    loss = simclr_loss(model, images, usage, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def pretrain_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: TensorSet, *, batch_size: int,
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
    run = start_run(cfg, (Outputs("results_dir", OUTPUTS),))
    device, usage, results_dir, earlier = run.device, run.usage, run.dirs["results_dir"], run.earlier["results_dir"]
    check_batch(cfg.batch_size)
    data = load_train_share(cfg.pretraining_dataset, cfg.data_ratio, cfg.data_dir, usage, device,
                            flag="--pretraining_dataset")
    if len(data) < cfg.batch_size:
        fail(f"--batch_size {cfg.batch_size}: larger than the {len(data)} pre-training images of "
             f"--pretraining_dataset {cfg.pretraining_dataset} (--data_ratio {cfg.data_ratio}); lower it")
    monitor = None
    if cfg.monitor_every > 0 and is_main():  # the other ranks write no metrics
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, device, trigger=None, target=0,
                                k=cfg.knn_k, t=cfg.knn_t, include_target=False)
    # SimCLR's loss depends on BatchNorm's batch statistics: under torchrun they are the global batch's
    model = sync_batchnorm(build_model(cfg.model).to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpts = EpochCheckpoints(results_dir, cfg.save_every, cfg.epochs)
    rows, first = ckpts.resume(cfg, model, optimizer, earlier)
    if is_main():
        if cfg.overwrite:
            remove_outputs(earlier)
        write_settings(results_dir / "setting.txt", cfg)
    net = data_parallel(model)  # after resume: DDP starts every rank from rank 0's weights

    def train(epoch: int) -> dict:
        return pretrain_epoch(net, optimizer, data, batch_size=cfg.batch_size, usage=usage,
                              temperature=cfg.knn_t, desc=f"pretrain epoch {epoch}/{cfg.epochs}")

    def watch(epoch: int) -> dict:
        return {"knn_acc": monitor_row(monitor, model.f, epoch, cfg.monitor_every)["knn_acc"]}

    loop = EpochLoop(NAME, ckpts, model, optimizer, fields=FIELDS, fingerprint=run_fingerprint(cfg), train=train,
                     monitor=watch, rows=rows)
    loop.run(first)
    return loop.finish({"pretraining_dataset": cfg.pretraining_dataset, "model": cfg.model,
                        "monitor_dataset": cfg.downstreamTask if monitor is not None else None})
