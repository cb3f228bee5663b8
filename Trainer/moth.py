"""Iterative inversion with hardening and the Wasserstein early stop (SPEC §6.2, ``MAIN.py --phase moth``)."""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.stats import UsageInfo, normalize
from DATASETS.triggers import InvertedTrigger
from INVERSION.inversion import InversionConfig, invert_trigger, reference_similarity
from MODELS.checkpoint import BackgroundSaver, save_checkpoint
from MODELS.early_stop import EarlyStopping
from MODELS.precision import with_precision
from Trainer.common import TensorSet, check_nonfinite, fmt_metrics
from Trainer.epochs import read_timings
from Trainer.preview import save_trigger_preview
from UTILS.errors import RESUME_HINT, Interrupted, fail
from UTILS.io import write_csv, write_json
from UTILS.runtime import log, progress, rng_state, set_rng_state, warn
from UTILS.signals import StopRequest

RE_LOSS_FIELDS = ("loss", "loss_sim", "loss_reg", "refer_sim")
METRIC_FIELDS = ("round", "epoch", "batch", *RE_LOSS_FIELDS, "l1", "psim", "reached", "steps", "cost",
                 "harden_loss", "distance", "improved", "converged", "counter", "best_round", "knn_acc", "knn_asr")
STATE_FILE = "moth_state.pth"
TIMINGS_FILE = "timings.csv"  # wall-clock seconds per round: kept apart so metrics.csv is reproducible


def harden_step(backbone: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
                trigger: Callable[[Tensor], Tensor], usage: UsageInfo) -> float:
    """Equation 3, one SGD step: pull f(stamped batch) onto f(clean batch) (MSE), backbone in train mode.

    images: (B, 3, H, W) in [0, 1]. Clean and stamped images go through the backbone as one batch
    so BatchNorm sees both once.
    """
    backbone.train()
    batch = torch.cat([images, trigger(images)])  # (2B, 3, H, W)
    clean, stamped = backbone(normalize(batch, usage)).chunk(2)  # (B, D) each
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
    amp: bool = False               # encoder passes in bf16 autocast (MODELS.precision)


FIRST_ROUND_LR = 0.5


class IterativeInversion:
    """State and steps of the multi-round scheme; each paper step is one method.

    After every round the whole state (encoder, optimiser, trigger, early stopping, per-round rows,
    RNG) goes to ``<results_dir>/moth_state.pth``, so a run killed at any moment resumes from the last
    finished round and ends with the same files as an uninterrupted run.
    """

    def __init__(self, model: nn.Module, data: TensorSet, usage: UsageInfo, settings: MothSettings,
                 log_dir: Path, results_dir: Path, ground_truth=None, monitor=None,
                 fingerprint: Optional[dict] = None):
        self.model, self.data, self.usage, self.s = model, data, usage, settings
        self.log_dir, self.results_dir = log_dir, results_dir
        self.ground_truth, self.monitor = ground_truth, monitor
        self.fingerprint = fingerprint  # the run's settings, stored in the state and checked on --resume
        self.reference = copy.deepcopy(model).eval()  # the original encoder, frozen, judges the shift
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.f = with_precision(model.f, settings.amp)  # the encoder being hardened
        self.reference_f = with_precision(self.reference.f, settings.amp)
        self.optimizer = torch.optim.SGD(model.f.parameters(), lr=settings.harden_lr, momentum=0.9, nesterov=True)
        self.early = EarlyStopping(settings.patience, settings.epsilon)
        self.trigger: Optional[tuple[Tensor, Tensor]] = None
        self.rows: list[dict] = []
        self.timings: list[dict] = []
        self.round = 0
        self.best_index = -1  # index into rows of the trigger saved as mask-pattern-best.npz
        self.stop_reason = "last epoch"
        self.stopped = False  # the early stop fired: the run is complete
        self.last_epoch = 0  # epoch of the last finished round
        self.saver = BackgroundSaver()  # the per-round state is written while the next round runs
        self.clean_sorted = sorted_features(self.reference_f, data.x, usage)  # (N, D), computed once

    @property
    def rounds_per_epoch(self) -> int:
        return len(self.data) // self.s.batch_size

    @property
    def state_path(self) -> Path:
        return self.results_dir / STATE_FILE

    def invert_round(self) -> tuple[InvertedTrigger, dict]:
        """6.2a: a fresh attack set drawn with replacement, one inversion round warm-started."""
        idx = torch.randint(len(self.data), (self.s.attack_size,))
        attack = self.data.x[idx.to(self.data.x.device)]
        lr = FIRST_ROUND_LR if self.trigger is None else self.s.inversion.lr
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = invert_trigger(self.f, attack, self.usage, replace(self.s.inversion, lr=lr),
                                    init=self.trigger, desc=f"round {self.round} inversion")
        reissue_warnings(caught)
        trigger = InvertedTrigger(result.mask, result.pattern)
        psim = result.psim
        if not result.reached and math.isfinite(result.loss):  # (a NaN round fails in one_round instead)
            # No trigger reached the threshold within the cap: record the last one and its measured psim
            # (a number, not nan), and say so. The run goes on; the early stop judges the round as usual.
            psim = reference_similarity(self.f, attack, self.usage, trigger)
            warn(f"round {self.round}: no trigger reached --similarity_threshold {self.s.inversion.threshold} "
                 f"within the cap of {self.s.inversion.cap} steps (--re_steps_cap); kept the last trigger "
                 f"(psim {psim:.4f}, recorded with reached=0 in metrics.csv)")
        self.trigger = (result.mask, result.pattern)
        refer = reference_similarity(self.f, attack, self.usage, self.ground_truth)
        row = {"loss": result.loss, "loss_sim": result.loss_sim, "loss_reg": result.loss_reg, "refer_sim": refer,
               "l1": result.l1, "psim": psim, "reached": int(result.reached), "steps": result.steps,
               "cost": result.cost}
        return trigger, row

    def harden(self, batch: Tensor, trigger: InvertedTrigger) -> float:
        """6.2c: one hardening step of the current encoder against the round's trigger."""
        return harden_step(self.f, self.optimizer, batch, trigger, self.usage)

    def detect(self, trigger: InvertedTrigger) -> float:
        """6.2d: how far the trigger moves the reference encoder's features."""
        return wasserstein_shift(self.reference_f, self.data.x, self.usage, trigger, self.clean_sorted)

    def kept(self) -> str:
        """What survives a failed round: the state saved after the previous one."""
        if self.round == 0:
            return "No round had finished, so nothing of this run was saved"
        triggers = "mask-pattern-0.npz" if self.round == 1 else f"mask-pattern-0..{self.round - 1}.npz"
        return f"The last good state is kept: {self.state_path} (after round {self.round - 1}) and {triggers}"

    def one_round(self, epoch: int, batch_index: int) -> bool:
        """Rounds a-f of SPEC §6.2 step 3; returns True when the early stop fires.

        A NaN or inf anywhere (inversion loss, hardening loss, hardened weights, distance) stops the
        run with one line naming the round; nothing of the failed round replaces the saved state.
        """
        start = time.perf_counter()
        k = self.round
        where = f"round {k} (epoch {epoch}, batch {batch_index})"
        trigger, row = self.invert_round()
        check_nonfinite({"inversion loss": row["loss"], "mean psim": row["loss_sim"], "mean mask L1": row["loss_reg"],
                         "trigger L1": row["l1"]}, where, self.kept(),
                        "Lower --re_lr or check the encoder, then start over with --overwrite")
        trigger.save(self.log_dir / f"mask-pattern-{k}.npz")
        save_trigger_preview(self.log_dir / f"preview-{k}.png", trigger, self.data.x[:4])
        bs = self.s.batch_size
        row["harden_loss"] = self.harden(self.data.x[batch_index * bs:(batch_index + 1) * bs], trigger)
        check_nonfinite({"hardening loss": row["harden_loss"]}, where, self.kept(),
                        "Lower --harden_lr, then start over with --overwrite")
        bad = next((n for n, p in self.model.f.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            fail(f"{where}: the hardening step made the encoder's weights NaN or inf (first in f.{bad}); stopped. "
                 f"{self.kept()}. Lower --harden_lr, then start over with --overwrite")
        row["distance"] = self.detect(trigger)
        check_nonfinite({"Wasserstein distance": row["distance"]}, where, self.kept(),
                        "Check the encoder and the trigger")
        decision = self.early.step(row["distance"])
        if decision.improved or decision.converged:
            trigger.save(self.log_dir / "mask-pattern-best.npz", idx=k)
            self.best_index = len(self.rows)
        row.update(round=k, epoch=epoch, batch=batch_index, improved=int(decision.improved),
                   converged=int(decision.converged), counter=self.early.counter,
                   best_round=k if self.best_index == len(self.rows) else self.rows[self.best_index]["round"])
        row.update(self.run_monitor(k))
        self.rows.append(row)
        self.timings.append({"round": k, "seconds": time.perf_counter() - start})
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
        result = self.monitor(self.f)
        return {"knn_acc": result["acc"], "knn_asr": result["asr"]}

    def write_logs(self) -> None:
        write_csv(self.log_dir / "re_loss.csv", [{k: r[k] for k in RE_LOSS_FIELDS} for r in self.rows], RE_LOSS_FIELDS)
        write_csv(self.log_dir / "metrics.csv", self.rows, METRIC_FIELDS)
        write_csv(self.log_dir / TIMINGS_FILE, self.timings, ("round", "seconds"))

    def run(self, start_epoch: int = 0, start_batch: int = 0, stop: Optional[StopRequest] = None) -> dict:
        """Step 3 of SPEC §6.2 over all epochs; returns the summary written to metrics.json.

        ``stop``: a graceful-stop request (UTILS.signals); when set, the run ends after the current
        round (its state saved) by raising :class:`Interrupted`.
        """
        if self.stopped:  # resumed a run whose early stop had already fired: just rewrite its final files
            log(f"the run had already stopped ({self.stop_reason}) after round {self.round - 1}; "
                f"rewriting its final outputs")
            return self.finish(self.last_epoch, True)
        try:
            self.rounds(start_epoch, start_batch, stop)
            self.saver.wait()  # the last state is on disk before the final files claim the run is done
        except BaseException:
            self.saver.close()  # finish the write in flight; its failure must not hide this error
            raise
        return self.finish(self.last_epoch, self.stopped)

    def rounds(self, start_epoch: int, start_batch: int, stop: Optional[StopRequest]) -> None:
        rpe = self.rounds_per_epoch
        first, total = start_epoch * rpe + start_batch, self.s.epochs * rpe
        for flat in progress(range(first, total), desc="moth rounds", total=max(total - first, 0)):
            epoch, batch_index = divmod(flat, rpe)
            self.stopped = self.one_round(epoch, batch_index)
            self.last_epoch = epoch
            self.save_state(epoch, batch_index + 1)
            if self.stopped:
                return
            if stop is not None and stop.requested and flat + 1 < total:
                self.saver.wait()
                raise Interrupted(f"{stop.name}: stopped after round {self.round - 1}; state saved to "
                                  f"{self.state_path}; {RESUME_HINT}")

    def finish(self, epoch: int, stopped: bool) -> dict:
        ckpt = save_checkpoint(self.results_dir / f"Harden_model_{epoch + 1}.pth", self.model, epoch + 1)
        best = self.rows[self.best_index]
        below = sum(1 for r in self.rows if not r["reached"])
        summary = {"stopped_early": stopped, "stop_reason": self.stop_reason if stopped else "last epoch",
                   "rounds": len(self.rows), "best_round": best["round"], "best_l1": best["l1"],
                   "best_distance": best["distance"], "best_psim": best["psim"],
                   "best_reached_threshold": bool(best["reached"]), "rounds_below_threshold": below,
                   "best_trigger": str(self.log_dir / "mask-pattern-best.npz"), "hardened_encoder": str(ckpt),
                   "l1_per_round": [r["l1"] for r in self.rows], "distance_per_round": [r["distance"] for r in self.rows]}
        write_json(self.log_dir / "metrics.json", summary)
        if not best["reached"]:
            warn(f"the chosen trigger (round {best['round']}) never reached --similarity_threshold "
                 f"{self.s.inversion.threshold}; {below} of {len(self.rows)} rounds did not. Consider more "
                 f"--re_steps, a larger --re_steps_cap or a lower --similarity_threshold")
        log(f"early stop chose round {best['round']}: trigger L1 {best['l1']:.2f}, distance {best['distance']:.4f} "
            f"({summary['stop_reason']}); hardened encoder -> {ckpt}")
        return summary

    def save_state(self, epoch: int, next_batch: int) -> None:
        """Everything needed to resume after this round (weights_only-loadable), written atomically in
        the background (:class:`MODELS.checkpoint.BackgroundSaver`)."""
        if next_batch >= self.rounds_per_epoch:
            epoch, next_batch = epoch + 1, 0
        self.saver.save(self.state_path, self.model, epoch, self.optimizer,
                        next_batch=next_batch, round=self.round, trigger_mask=self.trigger[0].cpu(),
                        trigger_pattern=self.trigger[1].cpu(), early_stopping=self.early.state_dict(),
                        rng=rng_state(), rows=self.rows, best_index=self.best_index,
                        stop_reason=self.stop_reason, stopped=self.stopped, last_epoch=self.last_epoch,
                        inversion_set_size=len(self.data), config=self.fingerprint)

    def load_state(self, state: dict, path: Path) -> tuple[int, int]:
        """Inverse of :meth:`save_state`; returns (epoch, batch) to continue from."""
        needed = ("state_dict", "optimizer", "trigger_mask", "trigger_pattern", "early_stopping", "rows", "round",
                  "best_index", "rng", "epoch", "next_batch", "stopped", "last_epoch", "inversion_set_size")
        missing = [k for k in needed if k not in state]
        if missing:
            fail(f"--resume {path}: not a complete moth state (lacks {', '.join(missing[:3])}); "
                 f"pass --overwrite to start over")
        if int(state["inversion_set_size"]) != len(self.data):
            fail(f"--resume {path}: was written for an inversion set of {state['inversion_set_size']} images, "
                 f"this run has {len(self.data)} (another --data_dir?); repeat the original data or pass --overwrite")
        try:
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            fail(f"--resume {path}: does not fit this encoder/optimiser ({str(exc).splitlines()[0][:160]}); "
                 f"pass --overwrite to start over")
        device = self.data.x.device
        self.trigger = (state["trigger_mask"].to(device), state["trigger_pattern"].to(device))
        self.early.load_state_dict(state["early_stopping"])
        self.rows, self.round = list(state["rows"]), int(state["round"])
        self.best_index = int(state["best_index"])
        self.stop_reason = str(state["stop_reason"])
        self.stopped, self.last_epoch = bool(state["stopped"]), int(state["last_epoch"])
        self.timings = read_timings(self.log_dir / TIMINGS_FILE, "round", self.round)
        set_rng_state(state["rng"])
        return int(state["epoch"]), int(state["next_batch"])


def reissue_warnings(caught: list) -> None:
    """Show warnings recorded around a call again, except the no-threshold one (the caller words it)."""
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "no trigger reached" in str(w.message):
            continue
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
