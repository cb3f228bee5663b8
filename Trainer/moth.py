"""Iterative inversion with hardening and the Wasserstein early stop (SPEC §6.2, ``MAIN.py --phase moth``)."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.stats import UsageInfo, normalize
from DATASETS.triggers import InvertedTrigger
from INVERSION.inversion import InversionConfig, invert_trigger, reference_similarity
from MODELS.checkpoint import save_checkpoint
from MODELS.early_stop import EarlyStopping
from Trainer.common import TensorSet, fmt_metrics
from Trainer.preview import save_trigger_preview
from UTILS.io import write_csv, write_json
from UTILS.runtime import log, progress, rng_state, set_rng_state

RE_LOSS_FIELDS = ("loss", "loss_sim", "loss_reg", "refer_sim")
STATE_FILE = "moth_state.pth"


def harden_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
                trigger: Callable[[Tensor], Tensor], usage: UsageInfo) -> float:
    """Equation 3, one SGD step: pull f(stamped batch) onto f(clean batch) (MSE), model in train mode.

    Clean and stamped images go through the backbone as one batch so BatchNorm sees both once.
    """
    model.train()
    batch = torch.cat([images, trigger(images)])  # (2B, 3, H, W)
    clean, stamped = model.f(normalize(batch, usage)).chunk(2)
    loss = F.mse_loss(stamped, clean)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def wasserstein_rows(u_sorted: Tensor, v_sorted: Tensor) -> Tensor:
    """Row-wise 1-D Wasserstein distance between equal-size samples given sorted: (N, D), (N, D) -> (N,).

    For two empirical distributions of D values each, W1 is the mean absolute difference of the
    order statistics, so no per-image scipy call is needed.
    """
    return (u_sorted - v_sorted).abs().mean(dim=1)


@torch.no_grad()
def sorted_features(backbone: nn.Module, images: Tensor, usage: UsageInfo,
                    trigger: Optional[Callable[[Tensor], Tensor]] = None, batch_size: int = 256) -> Tensor:
    """Raw backbone features of (N, 3, H, W) images, each row sorted ascending: (N, D)."""
    was_training = backbone.training
    backbone.eval()
    rows = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        x = trigger(x) if trigger is not None else x
        rows.append(backbone(normalize(x, usage)).sort(dim=1).values)
    backbone.train(was_training)
    return torch.cat(rows)


def wasserstein_shift(backbone: nn.Module, images: Tensor, usage: UsageInfo, trigger: Callable[[Tensor], Tensor],
                      clean_sorted: Tensor, batch_size: int = 256) -> float:
    """The early-stop signal: mean over images of W1(f0(x), f0(x stamped)) on the *reference* encoder f0."""
    stamped_sorted = sorted_features(backbone, images, usage, trigger, batch_size)
    return wasserstein_rows(clean_sorted, stamped_sorted).mean().item()


@dataclass
class MothSettings:
    epochs: int
    batch_size: int
    attack_size: int
    harden_lr: float
    inversion: InversionConfig      # lr here is --re_lr; the first round uses FIRST_ROUND_LR
    patience: int
    epsilon: float
    monitor_every: int = 5


FIRST_ROUND_LR = 0.5


class IterativeInversion:
    """State and steps of the multi-round scheme; each paper step is one method."""

    def __init__(self, model: nn.Module, data: TensorSet, usage: UsageInfo, settings: MothSettings,
                 log_dir: Path, results_dir: Path, ground_truth=None, monitor=None):
        self.model, self.data, self.usage, self.s = model, data, usage, settings
        self.log_dir, self.results_dir = log_dir, results_dir
        self.ground_truth, self.monitor = ground_truth, monitor
        self.reference = copy.deepcopy(model).eval()  # the original encoder, frozen, judges the shift
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.SGD(model.f.parameters(), lr=settings.harden_lr, momentum=0.9, nesterov=True)
        self.early = EarlyStopping(settings.patience, settings.epsilon)
        self.trigger: Optional[tuple[Tensor, Tensor]] = None
        self.rows: list[dict] = []
        self.round = 0
        self.best_index = -1  # index into rows of the trigger saved as mask-pattern-best.npz
        self.stop_reason = "last epoch"
        self.clean_sorted = sorted_features(self.reference.f, data.x, usage)  # (N, D), computed once

    @property
    def rounds_per_epoch(self) -> int:
        return len(self.data) // self.s.batch_size

    def invert_round(self) -> tuple[InvertedTrigger, dict]:
        """6.2a: a fresh attack set drawn with replacement, one inversion round warm-started."""
        idx = torch.randint(len(self.data), (self.s.attack_size,))
        attack = self.data.x[idx.to(self.data.x.device)]
        lr = FIRST_ROUND_LR if self.trigger is None else self.s.inversion.lr
        result = invert_trigger(self.model.f, attack, self.usage, replace(self.s.inversion, lr=lr), init=self.trigger,
                                desc=f"round {self.round} inversion")
        self.trigger = (result.mask, result.pattern)
        refer = reference_similarity(self.model.f, attack, self.usage, self.ground_truth)
        row = {"loss": result.loss, "loss_sim": result.loss_sim, "loss_reg": result.loss_reg, "refer_sim": refer,
               "l1": result.l1, "psim": result.psim, "reached": int(result.reached), "steps": result.steps,
               "cost": result.cost}
        return InvertedTrigger(result.mask, result.pattern), row

    def harden(self, batch: Tensor, trigger: InvertedTrigger) -> float:
        """6.2c: one hardening step of the current encoder against the round's trigger."""
        return harden_step(self.model, self.optimizer, batch, trigger, self.usage)

    def detect(self, trigger: InvertedTrigger) -> float:
        """6.2d: how far the trigger moves the reference encoder's features."""
        return wasserstein_shift(self.reference.f, self.data.x, self.usage, trigger, self.clean_sorted)

    def one_round(self, epoch: int, batch_index: int) -> bool:
        """Rounds a-f of SPEC §6.2 step 3; returns True when the early stop fires."""
        start = time.perf_counter()
        k = self.round
        trigger, row = self.invert_round()
        trigger.save(self.log_dir / f"mask-pattern-{k}.npz")
        save_trigger_preview(self.log_dir / f"preview-{k}.png", trigger, self.data.x[:4])
        bs = self.s.batch_size
        row["harden_loss"] = self.harden(self.data.x[batch_index * bs:(batch_index + 1) * bs], trigger)
        row["distance"] = self.detect(trigger)
        decision = self.early.step(row["distance"])
        if decision.improved or decision.converged:
            trigger.save(self.log_dir / "mask-pattern-best.npz", idx=k)
            self.best_index = len(self.rows)
        row.update(round=k, epoch=epoch, batch=batch_index, improved=int(decision.improved),
                   converged=int(decision.converged), counter=self.early.counter,
                   best_round=k if self.best_index == len(self.rows) else self.rows[self.best_index]["round"])
        row.update(self.run_monitor(k))
        row["seconds"] = time.perf_counter() - start
        self.rows.append(row)
        self.round += 1
        self.write_logs()
        log(f"[round {k}] " + fmt_metrics({n: row[n] for n in ("l1", "psim", "distance", "counter", "knn_acc",
                                                                   "knn_asr", "refer_sim")}))
        if decision.stop:
            self.stop_reason = "converged" if decision.converged else f"patience {self.s.patience}"
        return decision.stop

    def run_monitor(self, k: int) -> dict:
        if self.monitor is None or self.s.monitor_every <= 0 or k % self.s.monitor_every:
            return {"knn_acc": float("nan"), "knn_asr": float("nan")}
        result = self.monitor(self.model.f)
        return {"knn_acc": result["acc"], "knn_asr": result["asr"]}

    def write_logs(self) -> None:
        write_csv(self.log_dir / "re_loss.csv", [{k: r[k] for k in RE_LOSS_FIELDS} for r in self.rows], RE_LOSS_FIELDS)
        fields = ["round", "epoch", "batch", *RE_LOSS_FIELDS, "l1", "psim", "reached", "steps", "cost",
                  "harden_loss", "distance", "improved", "converged", "counter", "best_round", "knn_acc", "knn_asr",
                  "seconds"]
        write_csv(self.log_dir / "metrics.csv", self.rows, fields)

    def run(self, start_epoch: int = 0, start_batch: int = 0) -> dict:
        """Step 3 of SPEC §6.2 over all epochs; returns the summary written to metrics.json."""
        stopped, epoch = False, start_epoch
        rounds = range(start_epoch * self.rounds_per_epoch + start_batch, self.s.epochs * self.rounds_per_epoch)
        for flat in progress(rounds, desc="moth rounds"):
            epoch, batch_index = divmod(flat, self.rounds_per_epoch)
            stopped = self.one_round(epoch, batch_index)
            self.save_state(epoch, batch_index + 1)
            if stopped:
                break
        return self.finish(epoch, stopped)

    def finish(self, epoch: int, stopped: bool) -> dict:
        ckpt = save_checkpoint(self.results_dir / f"Harden_model_{epoch + 1}.pth", self.model, epoch + 1)
        best = self.rows[self.best_index]
        summary = {"stopped_early": stopped, "stop_reason": self.stop_reason if stopped else "last epoch",
                   "rounds": len(self.rows), "best_round": best["round"], "best_l1": best["l1"],
                   "best_distance": best["distance"], "best_psim": best["psim"],
                   "best_reached_threshold": bool(best["reached"]),
                   "best_trigger": str(self.log_dir / "mask-pattern-best.npz"), "hardened_encoder": str(ckpt),
                   "l1_per_round": [r["l1"] for r in self.rows], "distance_per_round": [r["distance"] for r in self.rows]}
        write_json(self.log_dir / "metrics.json", summary)
        log(f"early stop chose round {best['round']}: trigger L1 {best['l1']:.2f}, distance {best['distance']:.4f} "
            f"({summary['stop_reason']}); hardened encoder -> {ckpt}")
        return summary

    def save_state(self, epoch: int, next_batch: int) -> None:
        """Everything needed to resume after this round (weights_only-loadable)."""
        if next_batch >= self.rounds_per_epoch:
            epoch, next_batch = epoch + 1, 0
        save_checkpoint(self.results_dir / STATE_FILE, self.model, epoch, self.optimizer,
                        next_batch=next_batch, round=self.round, trigger_mask=self.trigger[0].cpu(),
                        trigger_pattern=self.trigger[1].cpu(), early_stopping=self.early.state_dict(),
                        rng=rng_state(), rows=self.rows, best_index=self.best_index,
                        stop_reason=self.stop_reason)

    def load_state(self, state: dict) -> tuple[int, int]:
        """Inverse of :meth:`save_state`; returns (epoch, batch) to continue from."""
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        device = self.data.x.device
        self.trigger = (state["trigger_mask"].to(device), state["trigger_pattern"].to(device))
        self.early.load_state_dict(state["early_stopping"])
        self.rows, self.round = list(state["rows"]), int(state["round"])
        self.best_index = int(state["best_index"])
        self.stop_reason = str(state["stop_reason"])
        set_rng_state(state["rng"])
        return int(state["epoch"]), int(state["next_batch"])

