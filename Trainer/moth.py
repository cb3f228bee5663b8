"""The run of ``MAIN.py --phase moth``: rounds of inversion + hardening + early stop, their files and resume.

The method's steps live in INVERSION (``invert_trigger``, ``harden_step``, ``wasserstein_shift``,
``EarlyStop``); this module runs them round by round over the epochs, writes every round's files,
and saves a resumable state after each round (docs/ALGORITHMS.md §2-3).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from DATASETS.stats import UsageInfo
from DATASETS.tensors import TensorSet
from DATASETS.triggers import InvertedTrigger
from EVALUATION.monitor import monitor_row
from INVERSION.early_stop import EarlyStop, StopDecision
from INVERSION.hardening import draw_attack_set, harden_step, sorted_features, wasserstein_shift
from INVERSION.inversion import (FIRST_STEP_SEED, InversionConfig, attack_set_similarities, chunk_similarity,
                                 invert_trigger, random_start, psim_ceiling)
from INVERSION.relative import NEAR_SHARE, prepare_round, relative_threshold
from MODELS.checkpoint import BackgroundSaver, save_checkpoint
from MODELS.precision import with_precision
from Trainer.common import check_nonfinite, first_nonfinite, fmt_metrics, load_training_state, seed_offset
from Trainer.epochs import read_timings
from Trainer.filenames import BEST_TRIGGER
from Trainer.preview import save_trigger_preview
from UTILS.errors import RESUME_HINT, Interrupted, fail
from UTILS.io import load_npz, write_csv, write_json
from UTILS.runtime import log, progress, warn
from UTILS.signals import StopRequest

# re_loss.csv keeps the paper's code's columns and meanings: loss_sim is the mean *negative* psim and
# refer_sim the negative psim of the clean attack set, normalised twice as there
# (INVERSION.inversion.attack_set_similarities).
RE_LOSS_FIELDS = ("loss", "loss_sim", "loss_reg", "refer_sim")
METRIC_FIELDS = ("round", "epoch", "batch", *RE_LOSS_FIELDS, "l1", "psim", "threshold", "reached", "ended_by", "steps",
                 "cost", "clean_psim", "gt_psim",
                 "harden_loss", "distance", "improved", "converged", "counter", "best_round", "knn_acc", "knn_asr")
STATE_FILE = "moth_state.pth"
TIMINGS_FILE = "timings.csv"  # wall-clock seconds per round: kept apart so metrics.csv is reproducible
FIRST_ROUND_LR = 0.5


def check_threshold(config: InversionConfig, clean_psim: float, gt_psim: float, warned: list, *,
                    auto: bool = False) -> None:
    """Say once per run (``warned`` records what was said) when the round's threshold cannot mean what it
    should on this encoder: the clean images reach it already or nearly (it names the value ``auto`` would
    use), no chunk can reach it, or the injected trigger (``gt_psim``, judged on the encoder as given, round
    0: hardening is meant to lower it) does not reach it."""
    threshold, chunk = config.threshold, config.chunk_size
    ceiling = psim_ceiling(config.psim, chunk)
    suggested = relative_threshold(clean_psim, ceiling)
    if threshold > ceiling and "ceiling" not in warned:
        warned.append("ceiling")
        warn(f"--similarity_threshold {threshold:g} can never be reached: with --psim {config.psim} a chunk of "
             f"{chunk} images has psim at most {ceiling:.5f}, so every round ends without a trigger whatever "
             f"--re_steps is; use a threshold below {ceiling:.5f}, or --similarity_threshold auto (here "
             f"{suggested:.4f})")
    elif not auto and clean_psim >= threshold and "clean" not in warned:
        warned.append("clean")
        warn(f"the clean images' own psim is already {clean_psim:.4f} >= --similarity_threshold {threshold:g}: "
             f"any trigger, even an empty one, counts as found, so the inverted trigger means little; use "
             f"--similarity_threshold auto (here {suggested:.4f})")
    elif not auto and threshold - clean_psim < NEAR_SHARE * (ceiling - clean_psim) and "clean" not in warned:
        warned.append("clean")
        warn(f"the clean images' own psim is {clean_psim:.5f}, close to --similarity_threshold {threshold:g} (less "
             f"than {NEAR_SHARE:.0%} of the way to the largest psim possible, {ceiling:.4f}): a tiny trigger can "
             f"reach it, not only a backdoor's; use --similarity_threshold auto (here {suggested:.4f})")
    if gt_psim < threshold and "gt" not in warned:
        warned.append("gt")
        shown = f"auto ({threshold:.4f})" if auto else f"{threshold:g}"
        warn(f"images stamped with the injected trigger (--trigger_file) reach only psim {gt_psim:.4f} < "
             f"--similarity_threshold {shown}: the true trigger would not count as found; consider a lower "
             f"--similarity_threshold")


def ended_phrase(ended_by: str, config) -> str:
    """Why a round without a trigger stopped, in words for a warning."""
    if ended_by == "stall":
        return f"its best psim had not risen for {config.stall_window} steps"
    if ended_by == "unreachable":
        return "the threshold lies above what a chunk of these images can reach"
    return f"the cap of {config.cap} steps, --re_steps_cap"


@dataclass
class MothSettings:
    """The settings of a moth run (MAIN.py's flags for the rounds, hardening and early stop)."""

    epochs: int
    batch_size: int
    attack_size: int
    harden_lr: float
    inversion: InversionConfig      # lr here is --re_lr; the first round uses FIRST_ROUND_LR
    patience: int
    epsilon: float
    monitor_every: int = 5          # kNN monitor after every N-th batch of an epoch (and once before round 0)
    amp: bool = False               # encoder passes in bf16 autocast (MODELS.precision)
    seed_index: int = 0             # --seed


@dataclass
class RunState:
    """Everything that changes from round to round, saved after each one for ``--resume``."""

    round: int = 0                  # index of the next round (rounds count from 0 over the whole run)
    epoch: int = 0                  # position of the next round
    batch: int = 0
    step_seed: int = FIRST_STEP_SEED  # the inversion's step counter, carried across rounds
    best_round: int = -1            # the round whose trigger mask-pattern-best.npz holds
    stopped: bool = False           # patience ended the run
    last_epoch: int = 0             # epoch of the last finished round
    converged_rounds: list = field(default_factory=list)
    warned: list = field(default_factory=list)  # one-time warnings already given
    initial_knn: dict = field(default_factory=dict)


class RoundSteps:
    """Steps a-d and f of a round on the encoder being hardened: invert, harden, monitor, measure the shift.

    Holds the method's objects: the encoder (``f``, hardened in place), a frozen copy of the original
    (``reference_f``, which judges the shift), the hardening optimiser and the clean features' sorted
    columns (N, D), computed once.
    """

    def __init__(self, model: nn.Module, data: TensorSet, usage: UsageInfo, settings: MothSettings,
                 ground_truth=None, monitor=None):
        self.model, self.data, self.usage, self.settings = model, data, usage, settings
        self.ground_truth, self.monitor = ground_truth, monitor
        self.reference = copy.deepcopy(model).eval()  # the original encoder, frozen, judges the shift
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.f = with_precision(model.f, settings.amp)  # the encoder being hardened
        self.reference_f = with_precision(self.reference.f, settings.amp)
        self.optimizer = torch.optim.SGD(model.f.parameters(), lr=settings.harden_lr, momentum=0.9, nesterov=True)
        self.offset = seed_offset(settings.seed_index)
        self.clean_sorted = sorted_features(self.reference_f, data.x, usage)  # (N, D)

    def invert(self, k: int, previous: Optional[InvertedTrigger], state: RunState) -> tuple[InvertedTrigger, dict]:
        """Step a of round ``k``: a fresh attack set drawn with replacement, one inversion round warm-started
        from ``previous`` (a random start in round 0). Advances ``state.step_seed``; returns the trigger and
        the round's first metrics."""
        indices, rng = draw_attack_set(len(self.data), self.settings.attack_size, self.offset + k)
        attack = self.data.x[indices.to(self.data.x.device)]
        first = previous is None
        start = random_start(self.data.x.shape[-1], rng) if first else (previous.mask[0], previous.pattern)
        config = replace(self.settings.inversion, lr=FIRST_ROUND_LR if first else self.settings.inversion.lr)
        backbone, config = prepare_round(self.f, attack, self.usage, config)
        row = attack_set_similarities(backbone, attack, self.usage, self.ground_truth, config.psim, config.chunk_size)
        row["threshold"] = config.threshold
        check_threshold(config, row["clean_psim"], row["gt_psim"] if k == 0 else float("nan"), state.warned,
                        auto=self.settings.inversion.auto_share > 0)
        result = invert_trigger(backbone, attack, self.usage, config, start, seed=state.step_seed,
                                desc=f"round {k} inversion")
        state.step_seed = result.next_seed
        psim = result.psim
        if not result.reached and math.isfinite(result.loss):  # (a NaN round fails in measure_round instead)
            psim = chunk_similarity(backbone, attack, self.usage, result.trigger, config.psim, config.chunk_size)
            warn(f"round {k}: no trigger reached --similarity_threshold {config.threshold} in {result.steps} steps "
                 f"({ended_phrase(result.ended_by, config)}); kept the last trigger (psim {psim:.4f}, recorded with "
                 f"reached=0 in metrics.csv)")
        row.update(loss=result.loss, loss_sim=-result.loss_sim, loss_reg=result.loss_reg, l1=result.l1, psim=psim,
                   reached=int(result.reached), ended_by=result.ended_by, steps=result.steps, cost=result.cost)
        return result.trigger, row

    def harden(self, batch_index: int, trigger: InvertedTrigger, where: str, kept: str) -> float:
        """Step c on the round's batch of the inversion set; a NaN loss or weight stops the run with one line
        naming ``where`` and what is ``kept``."""
        bs = self.settings.batch_size
        loss = harden_step(self.f, self.optimizer, self.data.x[batch_index * bs:(batch_index + 1) * bs], trigger,
                           self.usage)
        check_nonfinite({"hardening loss": loss}, where, kept, "Lower --harden_lr, then start over with --overwrite")
        bad = first_nonfinite(self.model.f.named_parameters())
        if bad is not None:
            fail(f"{where}: the hardening step made the encoder's weights NaN or inf (first in f.{bad}); stopped. "
                 f"{kept}. Lower --harden_lr, then start over with --overwrite")
        return loss

    def knn_row(self, batch_index: int) -> dict:
        """Step f: kNN ACC/ASR after every ``monitor_every``-th batch of an epoch, as the paper's code."""
        return monitor_row(self.monitor, self.f, batch_index + 1, self.settings.monitor_every)

    def distance(self, trigger: InvertedTrigger) -> float:
        """Step d: the Wasserstein shift of the hardened encoder's features from the original's under ``trigger``."""
        return wasserstein_shift(self.reference_f, self.data.x, self.usage, trigger, self.clean_sorted)


class RoundFiles:
    """The files of a moth run: per-round logs in ``log_dir`` (re_loss.csv, metrics.csv, timings.csv), the
    resumable state in ``results_dir`` (written in the background while the next round runs), metrics.json."""

    def __init__(self, log_dir: Path, results_dir: Path, fingerprint: Optional[dict] = None):
        self.log_dir, self.results_dir = log_dir, results_dir
        self.fingerprint = fingerprint  # the run's settings, stored in the state and checked on --resume
        self.rows: list[dict] = []
        self.timings: list[dict] = []
        self.saver = BackgroundSaver()

    @property
    def state_path(self) -> Path:
        """``<results_dir>/moth_state.pth``."""
        return self.results_dir / STATE_FILE

    def kept_message(self, k: int) -> str:
        """What survives a failure in round ``k``: the state saved after the previous round."""
        if k == 0:
            return "No round had finished, so nothing of this run was saved"
        triggers = "mask-pattern-0.npz" if k == 1 else f"mask-pattern-0..{k - 1}.npz"
        return f"The last good state is kept: {self.state_path} (after round {k - 1}) and {triggers}"

    def record(self, row: dict, seconds: float) -> None:
        """Add a finished round's metrics row and its wall-clock seconds, and rewrite the per-round logs."""
        self.rows.append(row)
        self.timings.append({"round": row["round"], "seconds": seconds})
        self.write_logs()

    def write_logs(self) -> None:
        """re_loss.csv (the paper's code's columns), metrics.csv (one row per round), timings.csv."""
        write_csv(self.log_dir / "re_loss.csv", [{k: r[k] for k in RE_LOSS_FIELDS} for r in self.rows], RE_LOSS_FIELDS)
        write_csv(self.log_dir / "metrics.csv", self.rows, METRIC_FIELDS)
        write_csv(self.log_dir / TIMINGS_FILE, self.timings, ("round", "seconds"))

    def check_state(self, state: dict, path: Path, set_size: int) -> None:
        """Refuse a --resume state that lacks a field or was written for another inversion set."""
        needed = ("state_dict", "optimizer", "run_state", "trigger_mask", "trigger_pattern", "early_stopping", "rows",
                  "inversion_set_size")
        missing = [k for k in needed if k not in state]
        if missing:
            fail(f"--resume {path}: not a complete moth state of this version (lacks {', '.join(missing[:3])}); "
                 f"pass --overwrite to start over")
        if int(state["inversion_set_size"]) != set_size:
            fail(f"--resume {path}: was written for an inversion set of {state['inversion_set_size']} images, "
                 f"this run has {set_size} (another --data_dir?); repeat the original data or pass --overwrite")

    def resume(self, rows: list, path: Path, run: RunState, epochs: int) -> None:
        """Take back the saved rows, check that the folders agree with ``run``, re-read the timings."""
        self.rows = list(rows)
        self.check_resumable(path, run, epochs)
        self.timings = read_timings(self.log_dir / TIMINGS_FILE, "round", run.round)

    def check_resumable(self, path: Path, run: RunState, epochs: int) -> None:
        """Refuse a resume whose files could not agree: rounds beyond this --epochs, or a --log_dir that
        does not hold the run's triggers (metrics.json would name a mask-pattern-best.npz that is not there)."""
        ran = max((int(r["epoch"]) for r in self.rows), default=-1)
        if ran >= epochs:
            fail(f"--resume {path}: the earlier run already ran rounds of epoch {ran} (epochs count from 0), beyond "
                 f"--epochs {epochs}; pass --epochs {ran + 1} or more, or --overwrite to start over")
        needed = [f"mask-pattern-{run.round - 1}.npz"] if run.round > 0 else []
        if run.best_round >= 0:
            needed.append(BEST_TRIGGER)
        missing = [name for name in needed if not (self.log_dir / name).is_file()]
        if not missing and run.best_round >= 0:
            best = load_npz(self.log_dir / BEST_TRIGGER, ("idx",), "--log_dir")
            # a later idx is the round a killed run was in when it stopped: resuming redoes that round
            if int(best["idx"]) != run.best_round and int(best["idx"]) < run.round:
                missing = [f"mask-pattern-best.npz of round {run.best_round} (it holds round {int(best['idx'])})"]
        if missing:
            fail(f"--resume {path}: --log_dir {self.log_dir} lacks {missing[0]} of the run being resumed; repeat "
                 f"that run's --log_dir, or pass --overwrite to start over")

    def write_summary(self, run: RunState, patience: int, ckpt: Path) -> dict:
        """metrics.json: how the run ended, the chosen round's numbers, per-round L1 and distance."""
        if run.best_round < 0:
            fail(f"no round gave a positive Wasserstein distance, so no best trigger was chosen ({len(self.rows)} "
                 f"rounds; see {self.log_dir / 'metrics.csv'})")
        best = self.rows[run.best_round]
        summary = {"stopped_early": run.stopped, "stop_reason": f"patience {patience}" if run.stopped
                   else "last epoch", "rounds": len(self.rows), "converged_rounds": list(run.converged_rounds),
                   "best_round": best["round"], "best_l1": best["l1"], "best_distance": best["distance"],
                   "best_psim": best["psim"], "best_reached_threshold": bool(best["reached"]),
                   "rounds_below_threshold": sum(1 for r in self.rows if not r["reached"]),
                   "rounds_ended_by_stall": [r["round"] for r in self.rows if r.get("ended_by") == "stall"],
                   "rounds_ended_by_cap": [r["round"] for r in self.rows if r.get("ended_by") == "cap"],
                   "rounds_unreachable": [r["round"] for r in self.rows if r.get("ended_by") == "unreachable"],
                   "initial_knn": run.initial_knn, "best_trigger": str(self.log_dir / BEST_TRIGGER),
                   "hardened_encoder": str(ckpt), "l1_per_round": [r["l1"] for r in self.rows],
                   "distance_per_round": [r["distance"] for r in self.rows]}
        write_json(self.log_dir / "metrics.json", summary)
        return summary


class IterativeInversion:
    """The rounds of ``--phase moth`` over the epochs: the early stop's decisions and the resumable position.

    ``steps`` (:class:`RoundSteps`) measures a round, ``files`` (:class:`RoundFiles`) writes its files.
    """

    def __init__(self, model: nn.Module, data: TensorSet, usage: UsageInfo, settings: MothSettings,
                 log_dir: Path, results_dir: Path, ground_truth=None, monitor=None,
                 fingerprint: Optional[dict] = None):
        self.model, self.data, self.settings = model, data, settings
        self.steps = RoundSteps(model, data, usage, settings, ground_truth, monitor)
        self.files = RoundFiles(log_dir, results_dir, fingerprint)
        self.early = EarlyStop(settings.patience, settings.epsilon)
        self.state = RunState(step_seed=FIRST_STEP_SEED + self.steps.offset)
        self.trigger: Optional[InvertedTrigger] = None  # the last round's, the next round's start

    def one_round(self, epoch: int, batch_index: int) -> StopDecision:
        """Steps a-f of one round; returns the early stop's decision on it."""
        start = time.perf_counter()
        trigger, row = self.measure_round(epoch, batch_index)
        return self.decide(trigger, row, epoch, batch_index, time.perf_counter() - start)

    def measure_round(self, epoch: int, batch_index: int) -> tuple[InvertedTrigger, dict]:
        """Steps a-d and f: invert, save the round's trigger, harden, monitor, measure the distance.

        A NaN or inf anywhere (inversion loss, hardening loss, hardened weights, distance) stops the
        run with one line naming the round; nothing of the failed round replaces the saved state.
        """
        k, log_dir = self.state.round, self.files.log_dir
        where = f"round {k} (epoch {epoch}, batch {batch_index})"
        trigger, row = self.steps.invert(k, self.trigger, self.state)
        self.trigger = trigger  # the next round warm-starts from it
        check_nonfinite({"inversion loss": row["loss"], "mean psim": row["loss_sim"], "mean mask L1": row["loss_reg"],
                         "trigger L1": row["l1"]}, where, self.files.kept_message(k),
                        "Lower --re_lr or check the encoder, then start over with --overwrite")
        trigger.save(log_dir / f"mask-pattern-{k}.npz")
        save_trigger_preview(log_dir / f"preview-{k}.png", trigger, self.data.x[:4])
        row["harden_loss"] = self.harden(batch_index, trigger, where)
        row.update(self.steps.knn_row(batch_index))
        row["distance"] = self.steps.distance(trigger)
        check_nonfinite({"Wasserstein distance": row["distance"]}, where, self.files.kept_message(k),
                        "Check the encoder and the trigger")
        return trigger, row

    def harden(self, batch_index: int, trigger: InvertedTrigger, where: str) -> float:
        """Step c (:meth:`RoundSteps.harden`) with this round's failure message."""
        return self.steps.harden(batch_index, trigger, where, self.files.kept_message(self.state.round))

    def decide(self, trigger: InvertedTrigger, row: dict, epoch: int, batch_index: int,
               seconds: float) -> StopDecision:
        """Step e: the early stop on the round's distance, the best trigger's file, the round's logs."""
        k = self.state.round
        decision = self.early.step(row["distance"])
        if decision.improved or decision.converged:  # the paper's code writes the best file in both cases
            trigger.save(self.files.log_dir / BEST_TRIGGER, idx=k)
            self.state.best_round = k
        if decision.converged:
            self.state.converged_rounds.append(k)
        row.update(round=k, epoch=epoch, batch=batch_index, improved=int(decision.improved),
                   converged=int(decision.converged), counter=self.early.counter, best_round=self.state.best_round)
        self.files.record(row, seconds)
        self.state.round += 1
        log(f"[round {k}] " + fmt_metrics({n: row[n] for n in ("l1", "psim", "distance", "counter", "knn_acc",
                                                                   "knn_asr", "clean_psim", "gt_psim")})
            + (" converged: the rest of this epoch is skipped" if decision.converged else ""))
        return decision

    def run(self, stop: Optional[StopRequest] = None) -> dict:
        """All rounds from the current position; returns the summary written to metrics.json.

        ``stop``: a graceful-stop request (UTILS.signals); when set, the run ends after the current
        round (its state saved) by raising :class:`Interrupted`.
        """
        if self.state.stopped or self.state.epoch >= self.settings.epochs:
            log(f"the run had already ended after round {self.state.round - 1}; rewriting its final outputs")
            return self.finish()
        monitor = self.steps.monitor
        if self.state.round == 0 and monitor is not None and self.settings.monitor_every > 0:
            self.state.initial_knn = dict(monitor(self.steps.f))  # before any round, as the paper's code
            log("[before round 0] " + fmt_metrics(self.state.initial_knn))
        try:
            self.rounds(stop)
            self.files.saver.wait()  # the last state is on disk before the final files claim the run is done
        except BaseException:
            self.files.saver.close()  # finish the write in flight; its failure must not hide this error
            raise
        return self.finish()

    def rounds(self, stop: Optional[StopRequest]) -> None:
        """Epochs of consecutive batches, one round each; convergence skips to the next epoch."""
        rpe, s = len(self.data) // self.settings.batch_size, self.state  # rounds in a full epoch
        left = self.settings.epochs * rpe - (s.epoch * rpe + s.batch)  # at most; convergence skips rounds
        for _ in progress(self.positions(), desc="moth rounds", total=left):
            decision = self.one_round(s.epoch, s.batch)
            s.last_epoch, s.stopped = s.epoch, decision.stop
            s.batch = rpe if decision.converged else s.batch + 1
            if s.batch >= rpe:
                s.epoch, s.batch = s.epoch + 1, 0
            self.save_state()
            if s.stopped:
                return
            if stop is not None and stop.requested and s.epoch < self.settings.epochs:
                self.files.saver.wait()
                raise Interrupted(f"{stop.name}: stopped after round {s.round - 1}; state saved to "
                                  f"{self.files.state_path}; {RESUME_HINT}")

    def positions(self):
        """One item per round still to run (the loop in :meth:`rounds` moves the position)."""
        while self.state.epoch < self.settings.epochs and not self.state.stopped:
            yield self.state.round

    def finish(self) -> dict:
        """Step 4: the hardened encoder of the last epoch run, metrics.json, and the verdict in one line."""
        s, rows = self.state, self.files.rows
        ckpt = save_checkpoint(self.files.results_dir / f"Harden_model_{s.last_epoch + 1}.pth", self.model,
                               s.last_epoch + 1)
        summary = self.files.write_summary(s, self.settings.patience, ckpt)
        best, below = rows[s.best_round], summary["rounds_below_threshold"]
        if not best["reached"]:
            warn(f"the chosen trigger (round {best['round']}) never reached --similarity_threshold "
                 f"{self.settings.inversion.threshold}; {below} of {len(rows)} rounds did not. Consider more "
                 f"--re_steps, a larger --re_steps_cap or a lower --similarity_threshold")
        log(f"early stop chose round {best['round']}: trigger L1 {best['l1']:.2f}, distance {best['distance']:.4f} "
            f"({summary['stop_reason']}, {len(rows)} rounds); hardened encoder -> {ckpt}")
        return summary

    def save_state(self) -> None:
        """Everything needed to resume after this round (weights_only-loadable), written atomically in
        the background (:class:`MODELS.checkpoint.BackgroundSaver`)."""
        s = self.state
        self.files.saver.save(self.files.state_path, self.model, s.epoch, self.steps.optimizer,
                              run_state=vars(s).copy(), trigger_mask=self.trigger.mask[0],
                              trigger_pattern=self.trigger.pattern,  # copied to the CPU
                              early_stopping=self.early.state_dict(), rows=self.files.rows,
                              inversion_set_size=len(self.data), config=self.files.fingerprint)

    def load_state(self, state: dict, path: Path) -> None:
        """Inverse of :meth:`save_state`."""
        self.files.check_state(state, path, len(self.data))

        def run_state() -> None:
            self.state = RunState(**state["run_state"])

        load_training_state(state, path, self.model, self.steps.optimizer, "encoder/optimiser", also=run_state)
        device = self.data.x.device
        self.trigger = InvertedTrigger(state["trigger_mask"].to(device), state["trigger_pattern"].to(device))
        self.early.load_state_dict(state["early_stopping"])
        self.files.resume(state["rows"], path, self.state, self.settings.epochs)
