"""The epoch loop shared by the encoder-making stages (pre-training, BadEncoder injection).

Each epoch writes ``<results_dir>/model_<epoch>.pth`` (whole-model state dict, optimiser, RNG state,
the per-epoch rows and the run's settings), so ``--resume`` continues from the newest one and ends
with the same files as an uninterrupted run. To bound the disk, an epoch's checkpoint is removed
once the next one is written unless it is a milestone (``--save_every``) or the last epoch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from MODELS.checkpoint import load_checkpoint, save_checkpoint
from Trainer.common import canonical, check_fingerprint, fmt_metrics, load_training_state
from UTILS.distributed import any_rank, from_main, is_main
from UTILS.errors import RESUME_HINT, Interrupted, fail
from UTILS.io import read_csv, write_csv, write_json
from UTILS.runtime import log, rng_state, set_rng_state
from UTILS.signals import graceful_stop

CKPT = "model_{}.pth"


def checkpoint_epochs(results_dir: Path, pattern: str = CKPT) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint named like ``pattern`` (e.g. ``model_{}.pth``), oldest first."""
    found = []
    for p in results_dir.glob(pattern.format("*")):
        tail = p.stem.rsplit("_", 1)[1]
        if tail.isdigit() and p.is_file():
            found.append((int(tail), p))
    return sorted(found)


@dataclass
class EpochCheckpoints:
    """Where the per-epoch checkpoints go and which of them are kept."""

    results_dir: Path
    save_every: int
    epochs: int
    pattern: str = CKPT  # Unlearn-trigger.py keeps its original name, Harden_Unlearn_model_{}.pth
    inputs: Optional[dict] = None  # the run's input_record, compared with a checkpoint's on --resume

    def path(self, epoch: int) -> Path:
        """The checkpoint file of epoch ``epoch`` (``pattern`` filled in)."""
        return self.results_dir / self.pattern.format(epoch)

    def milestone(self, epoch: int) -> bool:
        """Whether epoch ``epoch``'s file is kept: the last epoch and every ``save_every``-th."""
        return epoch == self.epochs or (self.save_every > 0 and epoch % self.save_every == 0)

    def save(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, rows: list[dict],
             fingerprint: dict) -> Path:
        """Write epoch ``epoch`` (atomically), then drop the previous epoch's file unless it is a milestone.

        Rank 0 only (under torchrun); the model is the bare module, so the keys are the one-process keys.
        """
        path = save_checkpoint(self.path(epoch), model, epoch, optimizer, rng=rng_state(), rows=rows,
                               config=fingerprint)
        if epoch > 1 and not self.milestone(epoch - 1):
            self.path(epoch - 1).unlink(missing_ok=True)
        return path

    def resume(self, cfg, model: nn.Module, optimizer: torch.optim.Optimizer,
               earlier: list[Path]) -> tuple[list[dict], int]:
        """(rows, epoch) to continue from: the newest complete checkpoint under --resume, else ([], 0).

        Under torchrun rank 0 finds and reads the checkpoint and sends it to every rank (no shared disk
        needed); every rank then loads the same weights, optimiser state and RNG state.
        """
        if not cfg.resume:
            return [], 0
        found = from_main(lambda: self._find(cfg, earlier))
        if found is None:
            return [], 0
        path, state = found
        load_training_state(state, path, model, optimizer)
        set_rng_state(state["rng"])
        log(f"resuming from {path} (epoch {state['epoch']})")
        return list(state["rows"]), state["epoch"]

    def _find(self, cfg, earlier: list[Path]) -> Optional[tuple[Path, dict]]:
        """(path, state) of the checkpoint to resume from, checked against this run's settings; None: none."""
        done = checkpoint_epochs(self.results_dir, self.pattern)
        name = self.pattern.format("<epoch>")
        if not done:
            if earlier:
                fail(f"--resume: there is no {self.results_dir}/{name} to resume from, but {earlier[0]} "
                     f"holds an earlier run's output; point --results_dir at that run's checkpoints, "
                     f"or pass --overwrite to start over")
            log(f"--resume: no {name} found; starting from the beginning")
            return None
        epoch, path = done[-1]
        if epoch > self.epochs:
            fail(f"--resume {path}: the earlier run already reached epoch {epoch}, beyond --epochs {self.epochs}; "
                 f"raise --epochs, or pass --overwrite to start over")
        # interned strings: pickle then shares them as in the uninterrupted run, so files stay byte-identical
        state = canonical(load_checkpoint(path, "--resume"))
        missing = [k for k in ("state_dict", "optimizer", "rng", "rows", "config") if k not in state]
        if missing:
            fail(f"--resume {path}: lacks the resume state ({', '.join(missing)}; written by another program?); "
                 f"pass --overwrite to start over")
        check_fingerprint(state["config"], cfg, path, self.inputs)
        state["epoch"] = epoch
        return path, state


@dataclass
class EpochLoop:
    """Runs ``train(epoch) -> dict`` for the remaining epochs; logs, monitors, checkpoints and writes metrics.

    The one epoch loop of every stage that trains for epochs (pre-training, BadEncoder, unlearning).
    ``monitor(epoch) -> dict`` adds the kNN numbers; ``fields`` orders the CSV columns.
    Files, in ``log_dir`` (default: the checkpoints' folder): ``<name>-metrics.csv`` (one row per epoch),
    ``<name>-timings.csv`` (seconds, kept apart so the metrics are reproducible), whatever ``write_extra(rows)``
    adds, and, at the end, ``<name>-metrics.json`` (the summary, :meth:`finish`). ``shown`` picks the fields
    of the per-epoch log line (default: all). Under torchrun only rank 0 monitors, writes and logs, and a
    stop request on any rank stops every rank after the same epoch.
    """

    name: str
    ckpts: EpochCheckpoints
    model: nn.Module
    optimizer: torch.optim.Optimizer
    fields: tuple[str, ...]
    fingerprint: dict
    train: Callable[[int], dict]
    monitor: Callable[[int], dict]
    rows: list[dict] = field(default_factory=list)
    log_dir: Optional[Path] = None
    write_extra: Optional[Callable[[list[dict]], None]] = None
    shown: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        self.log_dir = self.ckpts.results_dir if self.log_dir is None else Path(self.log_dir)

    def run(self, start_epoch: int) -> list[dict]:
        """Epochs ``start_epoch + 1`` .. ``ckpts.epochs``: train, monitor, checkpoint and write the metrics after
        each; returns every epoch's row."""
        main = is_main()
        timings = read_timings(self.log_dir / f"{self.name}-timings.csv", "epoch", start_epoch + 1) if main else []
        with graceful_stop("epoch") as stop:
            for epoch in range(start_epoch + 1, self.ckpts.epochs + 1):
                began = time.perf_counter()
                row = {"epoch": epoch, **self.train(epoch)}
                if main:
                    row.update(self.monitor(epoch))
                self.rows.append(row)
                if main:
                    self._record(epoch, row, timings, began)
                if any_rank(stop.requested) and epoch < self.ckpts.epochs:
                    raise Interrupted(f"{stop.name}: stopped after epoch {epoch}; checkpoint saved to "
                                      f"{self.ckpts.path(epoch)}; {RESUME_HINT}")
        return self.rows

    def _record(self, epoch: int, row: dict, timings: list[dict], began: float) -> None:
        """Checkpoint, metrics, timings and the log line of one finished epoch (began: its perf_counter)."""
        self.ckpts.save(epoch, self.model, self.optimizer, self.rows, self.fingerprint)
        timings.append({"epoch": epoch, "seconds": time.perf_counter() - began})
        write_csv(self.log_dir / f"{self.name}-metrics.csv", self.rows, self.fields)
        write_csv(self.log_dir / f"{self.name}-timings.csv", timings, ("epoch", "seconds"))
        if self.write_extra is not None:
            self.write_extra(self.rows)
        shown = self.shown or tuple(k for k in self.fields if k != "epoch")
        log(f"[{self.name} epoch {epoch}/{self.ckpts.epochs}] " + fmt_metrics({k: row[k] for k in shown}))

    def finish(self, extra: Optional[dict] = None) -> dict:
        """Write ``<name>-metrics.json`` (rank 0) and return it."""
        last = self.rows[-1] if self.rows else {}
        summary = {"epochs": self.ckpts.epochs, "final_encoder": str(self.ckpts.path(self.ckpts.epochs)),
                   **{f"final_{k}": last.get(k, float("nan")) for k in self.fields if k != "epoch"},
                   "per_epoch": self.rows, **(extra or {})}
        if is_main():
            write_json(self.log_dir / f"{self.name}-metrics.json", summary)
        return summary


def read_timings(path: Path, key: str, below: int) -> list[dict]:
    """The timing rows a resumed run keeps: those whose ``key`` (epoch or round) is below ``below``.

    A missing or odd file just restarts the log: timings are informative, not part of the results.
    """
    try:
        rows = [{key: int(r[key]), "seconds": float(r["seconds"])} for r in read_csv(path)]
    except (OSError, KeyError, ValueError, TypeError):
        return []
    return [r for r in rows if r[key] < below]
