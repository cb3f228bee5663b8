"""The run of ``MAIN.py --phase moth``: Algorithm 1's files, logs and resume.

The method itself, the loop of rounds with no file I/O, is ``INVERSION.iterative.IterativeInversion``; this
module writes every round's files and log line, warns, and saves a resumable state after each round
(docs/ALGORITHMS.md §2-3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from torch import nn

from DATASETS.stats import UsageInfo
from DATASETS.tensors import TensorSet
from DATASETS.triggers import InvertedTrigger
from INVERSION.early_stop import StopRule
from INVERSION.inversion import InversionConfig, ended_phrase, psim_ceiling
from INVERSION.iterative import (IterativeInversion, LoopState, MothSettings, NonFiniteRound, RoundHooks,
                                 RoundRecord)
from INVERSION.relative import NEAR_SHARE, near_clean, relative_threshold
from MODELS.checkpoint import BackgroundSaver, save_checkpoint
from Trainer.common import Outputs, check_nonfinite, fmt_metrics, load_training_state
from Trainer.epochs import read_timings
from Trainer.filenames import BEST_TRIGGER, HARDENED_CKPT, ROUND_TRIGGER
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
RE_LOSS_FILE = "re_loss.csv"
ROUND_METRICS = "metrics.csv"  # one row per round (METRIC_FIELDS)
SUMMARY_FILE = "metrics.json"
STATE_FILE = "moth_state.pth"
TIMINGS_FILE = "timings.csv"  # wall-clock seconds per round: kept apart so metrics.csv is reproducible
ROUND_PREVIEW = "preview-{int}.png"  # the picture of round {int}'s trigger
SETTINGS_FILE = "setting.txt"  # the run's flags (Trainer.common.write_settings)
# Every file this phase writes, by folder (exact names, {int} for a number; the README's recipe shares one log
# dir between stages, so only these count as this phase's): the --overwrite guard reads this declaration
# (Trainer/main_flow.py) and tests/scripts/test_outputs.py checks that a run writes nothing else.
OUTPUTS = (Outputs("log_dir", (ROUND_TRIGGER, BEST_TRIGGER, RE_LOSS_FILE, ROUND_METRICS, SUMMARY_FILE, TIMINGS_FILE,
                               ROUND_PREVIEW), (SETTINGS_FILE,)),
           Outputs("results_dir", (HARDENED_CKPT, STATE_FILE)))
# What a run killed before its first state reached the disk leaves: the state of a round is written in the
# background while the next round runs, so rounds 0 and 1 may have files and no state. Nothing to resume,
# nothing of value either: --resume starts over instead of refusing.
UNSAVED_START_FILES = {ROUND_TRIGGER.format(int=0), ROUND_TRIGGER.format(int=1), ROUND_PREVIEW.format(int=0),
                       ROUND_PREVIEW.format(int=1), BEST_TRIGGER, ROUND_METRICS, RE_LOSS_FILE, TIMINGS_FILE}
NONFINITE_HINTS = {"inversion": "Lower --re_lr or check the encoder, then start over with --overwrite",
                   "hardening": "Lower --harden_lr, then start over with --overwrite",
                   "distance": "Check the encoder and the trigger"}


# the scale-free choice for an encoder whose clean images already look alike (docs/ALGORITHMS.md §1b)
CENTRED_HINT = ", or --similarity_threshold auto --psim centred, on which clean images score about 0 on any encoder"


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
             f"--similarity_threshold auto (here {suggested:.4f}){CENTRED_HINT}")
    elif not auto and near_clean(threshold, clean_psim, ceiling) and "clean" not in warned:
        warned.append("clean")
        warn(f"the clean images' own psim is {clean_psim:.5f}, close to --similarity_threshold {threshold:g} (less "
             f"than {NEAR_SHARE:.0%} of the way to the largest psim possible, {ceiling:.4f}): a tiny trigger can "
             f"reach it, not only a backdoor's; use --similarity_threshold auto (here {suggested:.4f}){CENTRED_HINT}")
    if gt_psim < threshold and "gt" not in warned:
        warned.append("gt")
        shown = f"auto ({threshold:.4f})" if auto else f"{threshold:g}"
        warn(f"images stamped with the injected trigger (--trigger_file) reach only psim {gt_psim:.4f} < "
             f"--similarity_threshold {shown}: the true trigger would not count as found; consider a lower "
             f"--similarity_threshold")


@dataclass
class RunNotes:
    """What the run keeps beside the loop's position, saved with it: one-time warnings already given and the
    kNN monitor's numbers before round 0."""

    warned: list = field(default_factory=list)
    initial_knn: dict = field(default_factory=dict)


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
        write_csv(self.log_dir / RE_LOSS_FILE, [{k: r[k] for k in RE_LOSS_FIELDS} for r in self.rows], RE_LOSS_FIELDS)
        write_csv(self.log_dir / ROUND_METRICS, self.rows, METRIC_FIELDS)
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

    def resume(self, rows: list, path: Path, run: LoopState, epochs: int) -> None:
        """Take back the saved rows, check that the folders agree with ``run``, re-read the timings."""
        self.rows = list(rows)
        self.check_resumable(path, run, epochs)
        self.timings = read_timings(self.log_dir / TIMINGS_FILE, "round", run.round)

    def check_resumable(self, path: Path, run: LoopState, epochs: int) -> None:
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

    def write_summary(self, run: LoopState, notes: RunNotes, stop_reason: str, ckpt: Path) -> dict:
        """metrics.json: how the run ended, the chosen round's numbers, per-round L1 and distance."""
        if run.best_round < 0:
            fail(f"no round gave a positive Wasserstein distance, so no best trigger was chosen ({len(self.rows)} "
                 f"rounds; see {self.log_dir / ROUND_METRICS})")
        best = self.rows[run.best_round]
        summary = {"stopped_early": run.stopped, "stop_reason": stop_reason if run.stopped
                   else "last epoch", "rounds": len(self.rows), "converged_rounds": list(run.converged_rounds),
                   "best_round": best["round"], "best_l1": best["l1"], "best_distance": best["distance"],
                   "best_psim": best["psim"], "best_reached_threshold": bool(best["reached"]),
                   "rounds_below_threshold": sum(1 for r in self.rows if not r["reached"]),
                   "rounds_ended_by_stall": [r["round"] for r in self.rows if r.get("ended_by") == "stall"],
                   "rounds_ended_by_cap": [r["round"] for r in self.rows if r.get("ended_by") == "cap"],
                   "rounds_unreachable": [r["round"] for r in self.rows if r.get("ended_by") == "unreachable"],
                   "initial_knn": notes.initial_knn, "best_trigger": str(self.log_dir / BEST_TRIGGER),
                   "hardened_encoder": str(ckpt), "l1_per_round": [r["l1"] for r in self.rows],
                   "distance_per_round": [r["distance"] for r in self.rows]}
        write_json(self.log_dir / SUMMARY_FILE, summary)
        return summary


class MothRun(RoundHooks):
    """``--phase moth``: Algorithm 1 (:class:`INVERSION.iterative.IterativeInversion`) with its files, logs and
    resume. ``files`` (:class:`RoundFiles`) writes; as the loop's :class:`RoundHooks` this run warns about the
    round's threshold and puts the round's trigger on disk before the hardening."""

    def __init__(self, model: nn.Module, data: TensorSet, usage: UsageInfo, settings: MothSettings, *,
                 log_dir: Path, results_dir: Path, ground_truth=None, monitor=None,
                 fingerprint: Optional[dict] = None, stop_rule: Optional[StopRule] = None):
        self.data, self.settings = data, settings
        self.loop = IterativeInversion(model, data, usage, settings, ground_truth=ground_truth, monitor=monitor,
                                       stop_rule=stop_rule, hooks=self)
        self.files = RoundFiles(log_dir, results_dir, fingerprint)
        self.notes = RunNotes()

    # ---- the loop's hooks: progress, warnings and the round's trigger file ----------------------------------

    def progress(self, iterable, desc: str, total: Optional[int] = None):
        """The inversion's steps under the project's progress bar."""
        return progress(iterable, desc=desc, total=total)

    def prepared(self, k: int, row: dict, config: InversionConfig) -> None:
        """Say once when the round's threshold cannot mean what it should (:func:`check_threshold`)."""
        check_threshold(config, row["clean_psim"], row["gt_psim"] if k == 0 else float("nan"), self.notes.warned,
                        auto=self.settings.inversion.auto_share > 0)

    def inverted(self, k: int, trigger: InvertedTrigger, row: dict, config: InversionConfig) -> None:
        """A round without a trigger says so; the round's trigger and its preview are written."""
        if not row["reached"]:
            warn(f"round {k}: no trigger reached --similarity_threshold {config.threshold} in {row['steps']} steps "
                 f"({ended_phrase(row['ended_by'], config)}); kept the last trigger (psim {row['psim']:.4f}, "
                 f"recorded with reached=0 in metrics.csv)")
        trigger.save(self.files.log_dir / ROUND_TRIGGER.format(int=k))
        save_trigger_preview(self.files.log_dir / ROUND_PREVIEW.format(int=k), trigger, self.data.x[:4])

    # ---- the run ----------------------------------------------------------------------------------------------

    def run(self, stop: Optional[StopRequest] = None) -> dict:
        """All rounds from the current position; returns the summary written to metrics.json.

        ``stop``: a graceful-stop request (UTILS.signals); when set, the run ends after the current
        round (its state saved) by raising :class:`Interrupted`.
        """
        loop = self.loop
        if loop.finished:
            log(f"the run had already ended after round {loop.state.round - 1}; rewriting its final outputs")
            return self.finish()
        if loop.state.round == 0 and loop.monitor is not None and self.settings.monitor_every > 0:
            self.notes.initial_knn = dict(loop.monitor(loop.f))  # before any round, as the paper's code
            log("[before round 0] " + fmt_metrics(self.notes.initial_knn))
        try:
            self.rounds(stop)
            self.files.saver.wait()  # the last state is on disk before the final files claim the run is done
        except BaseException:
            self.files.saver.close()  # finish the write in flight; its failure must not hide this error
            raise
        return self.finish()

    def rounds(self, stop: Optional[StopRequest]) -> None:
        """Each round's files and log line, then its resumable state; a NaN or inf stops with one line."""
        s, rpe = self.loop.state, self.loop.rounds_per_epoch
        left = self.settings.epochs * rpe - (s.epoch * rpe + s.batch)  # at most; convergence skips rounds
        try:
            for record in progress(self.loop.rounds(), desc="moth rounds", total=left):
                self.record(record)
                self.save_state()
                if stop is not None and stop.requested and not self.loop.finished:
                    self.files.saver.wait()
                    raise Interrupted(f"{stop.name}: stopped after round {s.round - 1}; state saved to "
                                      f"{self.files.state_path}; {RESUME_HINT}")
        except NonFiniteRound as err:  # the position is still the failed round's
            self.refuse_nonfinite(err, f"round {s.round} (epoch {s.epoch}, batch {s.batch})",
                                  self.files.kept_message(s.round))

    @staticmethod
    def refuse_nonfinite(err: NonFiniteRound, where: str, kept: str) -> None:
        """One line for a NaN or inf in a round: where, what, which good state is kept, what to try."""
        if err.step == "weights":
            fail(f"{where}: the hardening step made the encoder's weights NaN or inf (first in {err.parameter}); "
                 f"stopped. {kept}. Lower --harden_lr, then start over with --overwrite")
        check_nonfinite(err.values, where, kept, NONFINITE_HINTS[err.step])
        raise err  # (check_nonfinite has failed already: the values hold a NaN or inf)

    def record(self, record: RoundRecord) -> None:
        """A finished round: the best trigger's file, the round's logs and its line."""
        k, row, decision = record.round, record.row, record.decision
        if decision.improved or decision.converged:  # the loop made it the best trigger
            record.trigger.save(self.files.log_dir / BEST_TRIGGER, idx=k)
        self.files.record(row, record.seconds)
        log(f"[round {k}] " + fmt_metrics({n: row[n] for n in ("l1", "psim", "distance", "counter", "knn_acc",
                                                                   "knn_asr", "clean_psim", "gt_psim")})
            + (" converged: the rest of this epoch is skipped" if decision.converged else ""))

    def finish(self) -> dict:
        """Step 4: the hardened encoder of the last epoch run, metrics.json, and the verdict in one line."""
        s, rows = self.loop.state, self.files.rows
        ckpt = save_checkpoint(self.files.results_dir / HARDENED_CKPT.format(int=s.last_epoch + 1), self.loop.model,
                               s.last_epoch + 1)
        summary = self.files.write_summary(s, self.notes, self.loop.stop_rule.describe_stop(), ckpt)
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
        loop = self.loop
        run_state = {**vars(loop.state), "warned": self.notes.warned, "initial_knn": self.notes.initial_knn}
        self.files.saver.save(self.files.state_path, loop.model, loop.state.epoch, loop.optimizer,
                              run_state=run_state, trigger_mask=loop.trigger.mask[0],
                              trigger_pattern=loop.trigger.pattern,  # copied to the CPU
                              early_stopping=loop.stop_rule.state_dict(), rows=self.files.rows,
                              inversion_set_size=len(self.data), config=self.files.fingerprint)

    def load_state(self, state: dict, path: Path) -> None:
        """Inverse of :meth:`save_state`."""
        self.files.check_state(state, path, len(self.data))
        loop, position = self.loop, {}

        def run_state() -> None:
            saved = dict(state["run_state"])
            self.notes = RunNotes(warned=saved.pop("warned"), initial_knn=saved.pop("initial_knn"))
            position["state"] = LoopState(**saved)

        load_training_state(state, path, loop.model, loop.optimizer, "encoder/optimiser", also=run_state)
        device = self.data.x.device
        loop.restore(position["state"], InvertedTrigger(state["trigger_mask"].to(device),
                                                        state["trigger_pattern"].to(device)), state["early_stopping"])
        self.files.resume(state["rows"], path, loop.state, self.settings.epochs)
