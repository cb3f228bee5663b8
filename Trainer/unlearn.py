"""Unlearning the inverted trigger (SPEC §6.4, ``Unlearn-trigger.py``)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from DATASETS.augment import unlearn_view
from DATASETS.stats import UsageInfo, get_usage, normalize
from DATASETS.triggers import load_trigger
from MODELS.checkpoint import load_encoder
from MODELS.losses import nt_xent
from MODELS.precision import check_amp, unwrap, with_precision
from Trainer.common import (TensorSet, build_monitor, check_finite_model, fmt_metrics, guard_outputs,
                            load_ground_truth, load_train_share, remove_outputs, run_fingerprint, seed_from_list,
                            write_settings)
from Trainer.configs import UNLEARN_SEEDS, UnlearnConfig
from Trainer.epochs import EpochCheckpoints, read_timings
from Trainer.preview import save_trigger_preview
from UTILS.errors import RESUME_HINT, Interrupted, fail
from UTILS.io import atomic_write, ensure_writable_dir, write_csv, write_json
from UTILS.runtime import log, progress, resolve_device, seed_everything
from UTILS.signals import graceful_stop

CKPT = "Harden_Unlearn_model_{}.pth"
RESULTS = ("Harden_Unlearn_model_*.pth",)
LOGS = ("loss-log.npy", "unlearn-metrics.*", "unlearn-timings.csv")
METRIC_FIELDS = ("epoch", "loss", "contrastive", "unlearn", "knn_acc", "knn_asr")
TIMINGS_FILE = "unlearn-timings.csv"  # wall-clock seconds per epoch, apart so the metrics are reproducible


def unlearn_loss(model: nn.Module, images: Tensor, trigger: Callable[[Tensor], Tensor], usage: UsageInfo,
                 portion: float, beta: float, temperature: float) -> tuple[Tensor, dict]:
    """NT-Xent on two views of the clean share + beta * (-cos) between g(f(x)) and g(f(stamped x)).

    images: (B, 3, H, W) in [0, 1]. floor(portion * B) randomly chosen images are stamped; the
    others form the contrastive pairs. Everything goes through the model as one batch.
    """
    b = images.shape[0]
    n_stamped = math.floor(portion * b)
    perm = torch.randperm(b).to(images.device)
    stamped_src, clean = images[perm[:n_stamped]], images[perm[n_stamped:]]
    views = [unlearn_view(clean), unlearn_view(clean)] if clean.shape[0] >= 2 else []
    batch = torch.cat(views + [stamped_src, trigger(stamped_src)])
    _, z = model(normalize(batch, usage))  # (M, 128), L2-normalised projections
    n_clean = clean.shape[0] if views else 0
    z1, z2 = z[:n_clean], z[n_clean:2 * n_clean]
    z_src, z_stamped = z[2 * n_clean:2 * n_clean + n_stamped], z[2 * n_clean + n_stamped:]
    contrastive = nt_xent(z1, z2, temperature) if views else z.new_zeros(())
    unlearn = -(z_src * z_stamped).sum(dim=1).mean() if n_stamped else z.new_zeros(())
    return contrastive + beta * unlearn, {"contrastive": contrastive.detach(), "unlearn": unlearn.detach()}


def unlearn_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: TensorSet, batch_size: int,
                  trigger: Callable[[Tensor], Tensor], usage: UsageInfo, portion: float, beta: float,
                  temperature: float, desc: str = "unlearn",
                  kept: str = "The last good checkpoint is kept") -> dict:
    """One pass over the shuffled unlearning set, model in train mode; returns mean losses.

    A NaN/inf loss stops before the optimiser step with one line naming the batch; ``kept`` says
    which checkpoint survives.
    """
    model.train()
    order = torch.randperm(len(data)).to(data.x.device)
    totals = torch.zeros(3, dtype=torch.float64)
    batches = range(0, len(data), batch_size)
    for start in progress(batches, desc=desc, total=len(batches)):
        images = data.x[order[start:start + batch_size]]
        loss, parts = unlearn_loss(model, images, trigger, usage, portion, beta, temperature)
        values = torch.stack([loss.detach(), parts["contrastive"], parts["unlearn"]]).double().cpu()  # one sync
        if not math.isfinite(values[0].item()):
            fail(f"{desc}, batch {start // batch_size}: the unlearning loss became {values[0].item()}; stopped. "
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
    mean = (totals / len(batches)).tolist()
    return {"loss": mean[0], "contrastive": mean[1], "unlearn": mean[2]}


def run_unlearn(cfg: UnlearnConfig) -> dict:
    seed_everything(seed_from_list(cfg.seed, UNLEARN_SEEDS))
    device = resolve_device(cfg.device, cfg.gpu)
    check_amp(cfg.amp, device)
    usage = get_usage(cfg.encoder_usage_info)
    log_dir = ensure_writable_dir(cfg.log_dir, "--log_dir")
    results_dir = ensure_writable_dir(cfg.results_dir, "--results_dir")
    earlier = guard_outputs(results_dir, RESULTS, "--results_dir", cfg.overwrite, cfg.resume, remove=False)
    earlier_logs = guard_outputs(log_dir, LOGS, "--log_dir", cfg.overwrite, cfg.resume, remove=False)
    model = load_encoder(cfg.pretrained_encoder, cfg.model, device, flag="--pretrained_encoder")
    check_finite_model(model, cfg.pretrained_encoder, "--pretrained_encoder")
    trigger = load_trigger(cfg.re_mask_pattern, "--re_mask_pattern", expected_size=usage.size)
    data = load_train_share(cfg.dataset, cfg.data_ratio, cfg.data_dir, usage, device)
    monitor = None
    if cfg.monitor_every > 0:
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, device,
                                load_ground_truth(cfg.trigger_file, usage.size), cfg.reference_label,
                                cfg.knn_k, cfg.knn_t, cfg.asr_include_target)
    net, backbone = with_precision(model, cfg.amp), with_precision(model.f, cfg.amp)  # = model, model.f without --amp
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    checkpoints = EpochCheckpoints(results_dir, save_every=1, epochs=cfg.epochs, pattern=CKPT)  # keep every epoch
    rows, start_epoch = checkpoints.resume(cfg, model, optimizer, earlier_logs)
    if cfg.overwrite:
        remove_outputs(earlier + earlier_logs)
    write_settings(log_dir / "unlearn-setting.txt", cfg)
    save_trigger_preview(log_dir / "unlearn-trigger.png", trigger, data.x[:4])
    timings = read_timings(log_dir / TIMINGS_FILE, "epoch", start_epoch + 1)
    if monitor is not None and not rows:
        before = monitor(backbone)
        log("[unlearn] before: " + fmt_metrics({"knn_acc": before["acc"], "knn_asr": before["asr"]}))
        rows.append({"epoch": 0, "loss": float("nan"), "contrastive": float("nan"), "unlearn": float("nan"),
                     "knn_acc": before["acc"], "knn_asr": before["asr"]})
    fingerprint = run_fingerprint(cfg)
    with graceful_stop("epoch") as stop:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            began = time.perf_counter()
            kept = (f"The last good checkpoint is kept: {results_dir / CKPT.format(epoch - 1)}" if epoch > 1
                    else "No epoch had finished, so no checkpoint was written")
            row = {"epoch": epoch, **unlearn_epoch(net, optimizer, data, cfg.batch_size, trigger, usage,
                                                   cfg.portion, cfg.beta, cfg.knn_t,
                                                   desc=f"unlearn epoch {epoch}/{cfg.epochs}", kept=kept)}
            row.update(_monitor_row(monitor, backbone, epoch, cfg.monitor_every))
            rows.append(row)
            checkpoints.save(epoch, model, optimizer, rows, fingerprint)
            timings.append({"epoch": epoch, "seconds": time.perf_counter() - began})
            _write_logs(log_dir, rows, timings)
            log(f"[unlearn epoch {epoch}] " + fmt_metrics({k: row[k] for k in ("loss", "knn_acc", "knn_asr")}))
            if stop.requested and epoch < cfg.epochs:
                raise Interrupted(f"{stop.name}: stopped after epoch {epoch}; checkpoint saved to "
                                  f"{results_dir / CKPT.format(epoch)}; {RESUME_HINT}")
    summary = {"epochs": cfg.epochs, "final_encoder": str(results_dir / CKPT.format(cfg.epochs)),
               "final_knn_acc": rows[-1]["knn_acc"] if rows else float("nan"),
               "final_knn_asr": rows[-1]["knn_asr"] if rows else float("nan"), "per_epoch": rows}
    write_json(log_dir / "unlearn-metrics.json", summary)
    return summary


def _monitor_row(monitor, backbone: nn.Module, epoch: int, every: int) -> dict:
    if monitor is None or every <= 0 or epoch % every:
        return {"knn_acc": float("nan"), "knn_asr": float("nan")}
    result = monitor(backbone)
    return {"knn_acc": result["acc"], "knn_asr": result["asr"]}


def _write_logs(log_dir: Path, rows: list[dict], timings: list[dict]) -> None:
    trained = [r for r in rows if r["epoch"] > 0]
    losses = np.asarray([r["loss"] for r in trained], dtype=np.float64)
    atomic_write(log_dir / "loss-log.npy", lambda h: np.save(h, losses))
    write_csv(log_dir / "unlearn-metrics.csv", rows, METRIC_FIELDS)
    write_csv(log_dir / TIMINGS_FILE, timings, ("epoch", "seconds"))


