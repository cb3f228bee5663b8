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
from MODELS.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from MODELS.losses import nt_xent
from Trainer.common import (TensorSet, build_monitor, fmt_metrics, guard_outputs, load_ground_truth,
                            load_train_share, seed_from_list, write_settings)
from Trainer.configs import UNLEARN_SEEDS, UnlearnConfig
from Trainer.preview import save_trigger_preview
from UTILS.errors import fail
from UTILS.io import atomic_write, ensure_writable_dir, write_csv, write_json
from UTILS.runtime import log, progress, resolve_device, rng_state, seed_everything, set_rng_state

CKPT = "Harden_Unlearn_model_{}.pth"


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
                  temperature: float, desc: str = "unlearn") -> dict:
    """One pass over the shuffled unlearning set, model in train mode; returns mean losses."""
    model.train()
    order = torch.randperm(len(data)).to(data.x.device)
    totals = torch.zeros(3, dtype=torch.float64)
    batches = range(0, len(data), batch_size)
    for start in progress(batches, desc=desc, total=len(batches)):
        images = data.x[order[start:start + batch_size]]
        loss, parts = unlearn_loss(model, images, trigger, usage, portion, beta, temperature)
        if not torch.isfinite(loss):
            fail(f"unlearning: loss became {loss.item()} at batch {start // batch_size} ({desc}); "
                 f"the last good checkpoint is kept; lower --lr or --beta")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals += torch.stack([loss.detach(), parts["contrastive"], parts["unlearn"]]).double().cpu()
    mean = (totals / len(batches)).tolist()
    return {"loss": mean[0], "contrastive": mean[1], "unlearn": mean[2]}


def run_unlearn(cfg: UnlearnConfig) -> dict:
    seed_everything(seed_from_list(cfg.seed, UNLEARN_SEEDS))
    device = resolve_device(cfg.device, cfg.gpu)
    usage = get_usage(cfg.encoder_usage_info)
    log_dir = ensure_writable_dir(cfg.log_dir, "--log_dir")
    results_dir = ensure_writable_dir(cfg.results_dir, "--results_dir")
    guard_outputs(results_dir, ("Harden_Unlearn_model_*.pth",), "--results_dir", cfg.overwrite, cfg.resume)
    guard_outputs(log_dir, ("loss-log.npy", "unlearn-metrics.*"), "--log_dir", cfg.overwrite, cfg.resume)
    model = load_encoder(cfg.pretrained_encoder, cfg.model, device, flag="--pretrained_encoder")
    trigger = load_trigger(cfg.re_mask_pattern, "--re_mask_pattern", expected_size=usage.size)
    data = load_train_share(cfg.dataset, cfg.data_ratio, cfg.data_dir, usage, device)
    monitor = None
    if cfg.monitor_every > 0:
        monitor = build_monitor(cfg.downstreamTask, cfg.data_dir, usage, device,
                                load_ground_truth(cfg.trigger_file, usage.size), cfg.reference_label,
                                cfg.knn_k, cfg.knn_t, cfg.asr_include_target)
    write_settings(log_dir / "unlearn-setting.txt", cfg)
    save_trigger_preview(log_dir / "unlearn-trigger.png", trigger, data.x[:4])
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    rows, start_epoch = _maybe_resume(cfg, results_dir, model, optimizer)
    if monitor is not None and not rows:
        before = monitor(model.f)
        log("[unlearn] before: " + fmt_metrics({"knn_acc": before["acc"], "knn_asr": before["asr"]}))
        rows.append({"epoch": 0, "loss": float("nan"), "contrastive": float("nan"), "unlearn": float("nan"),
                     "knn_acc": before["acc"], "knn_asr": before["asr"], "seconds": 0.0})
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        began = time.perf_counter()
        row = {"epoch": epoch, **unlearn_epoch(model, optimizer, data, cfg.batch_size, trigger, usage, cfg.portion,
                                               cfg.beta, cfg.knn_t, desc=f"unlearn epoch {epoch}/{cfg.epochs}")}
        row.update(_monitor_row(monitor, model, epoch, cfg.monitor_every))
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
        save_checkpoint(results_dir / CKPT.format(epoch), model, epoch, optimizer, rng=rng_state(), rows=rows)
        _write_logs(log_dir, rows)
        log(f"[unlearn epoch {epoch}] " + fmt_metrics({k: row[k] for k in ("loss", "knn_acc", "knn_asr")}))
    summary = {"epochs": cfg.epochs, "final_encoder": str(results_dir / CKPT.format(cfg.epochs)),
               "final_knn_acc": rows[-1]["knn_acc"] if rows else float("nan"),
               "final_knn_asr": rows[-1]["knn_asr"] if rows else float("nan"), "per_epoch": rows}
    write_json(log_dir / "unlearn-metrics.json", summary)
    return summary


def _monitor_row(monitor, model: nn.Module, epoch: int, every: int) -> dict:
    if monitor is None or every <= 0 or epoch % every:
        return {"knn_acc": float("nan"), "knn_asr": float("nan")}
    result = monitor(model.f)
    return {"knn_acc": result["acc"], "knn_asr": result["asr"]}


def _write_logs(log_dir: Path, rows: list[dict]) -> None:
    trained = [r for r in rows if r["epoch"] > 0]
    losses = np.asarray([r["loss"] for r in trained], dtype=np.float64)
    atomic_write(log_dir / "loss-log.npy", lambda h: np.save(h, losses))
    write_csv(log_dir / "unlearn-metrics.csv", rows,
              ["epoch", "loss", "contrastive", "unlearn", "knn_acc", "knn_asr", "seconds"])


def _maybe_resume(cfg: UnlearnConfig, results_dir: Path, model: nn.Module,
                  optimizer: torch.optim.Optimizer) -> tuple[list[dict], int]:
    """Continue from the newest complete Harden_Unlearn_model_<e>.pth when --resume is given."""
    if not cfg.resume:
        return [], 0
    done = sorted((int(p.stem.rsplit("_", 1)[1]), p) for p in results_dir.glob("Harden_Unlearn_model_*.pth")
                  if p.stem.rsplit("_", 1)[1].isdigit())
    if not done:
        log("--resume: no Harden_Unlearn_model_<epoch>.pth found; starting from the beginning")
        return [], 0
    epoch, path = done[-1]
    state = load_checkpoint(path, "--resume")
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    log(f"resuming from {path} (epoch {epoch})")
    return list(state["rows"]), epoch
