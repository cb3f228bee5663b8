"""Algorithm 1, the iterative inversion: rounds of invert -> harden -> distance -> decide (docs/ALGORITHMS.md §2-3).

One loop, :meth:`IterativeInversion.rounds`, with no file and no printing: it yields one
:class:`RoundRecord` per round and its caller (``Trainer/moth.py``) writes, logs and resumes. Round k, over
the epochs' consecutive batches of the inversion set (the letters of docs/ALGORITHMS.md §2):

a. the attack set, drawn with a seed of k; the start: the previous round's trigger (round 0: a random start
   and the first-round learning rate ``FIRST_ROUND_LR``);
b. one inversion round (INVERSION/inversion.py);
c. hardening: one SGD step of the encoder on the round's batch (Equation 3);
d. the kNN monitor, when one is given and the batch is due;
e. the Wasserstein shift of the original encoder's features under the trigger;
f. the stop rule's decision (:class:`INVERSION.early_stop.StopRule`; the paper's ``EarlyStop`` by default):
   a new best or a converged round makes the trigger the best one, "converged" skips the rest of the epoch,
   "stop" ends the run.

The caller sees a round in the making through :class:`RoundHooks` (the round's trigger is on disk before the
hardening, so an interrupted round leaves it), and a NaN or inf anywhere raises :class:`NonFiniteRound`.
The whole position (:class:`LoopState`, the last trigger, the stop rule's state, the encoder and optimiser)
is the loop's input: set it back and :meth:`rounds` goes on from there.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from DATASETS.stats import UsageInfo
from DATASETS.tensors import TensorSet
from DATASETS.triggers import InvertedTrigger, Trigger
from EVALUATION.monitor import monitor_row
from INVERSION.defaults import MONITOR_EVERY
from INVERSION.early_stop import EarlyStop, StopDecision, StopRule
from INVERSION.hardening import draw_attack_set, first_nonfinite, harden_step, sorted_features, wasserstein_shift
from INVERSION.inversion import (InversionConfig, InversionResult, attack_set_similarities,
                                 chunk_similarity, invert_trigger, random_start)
from INVERSION.relative import prepare_round
from MODELS.precision import with_precision
from UTILS.seeds import FIRST_STEP_SEED, attack_set_seed, first_step_seed

FIRST_ROUND_LR = 0.5  # Adam's learning rate in the first round (the paper's code); --re_lr in the later ones


@dataclass
class MothSettings:
    """The settings of the iterative inversion (MAIN.py's flags for the rounds, hardening and early stop)."""

    epochs: int
    batch_size: int
    attack_size: int
    harden_lr: float
    inversion: InversionConfig      # lr here is --re_lr; the first round uses FIRST_ROUND_LR
    patience: int
    epsilon: float
    monitor_every: int = MONITOR_EVERY  # kNN monitor after every N-th batch of an epoch (and once before round 0)
    amp: bool = False               # encoder passes in bf16 autocast (MODELS.precision)
    seed_index: int = 0             # --seed


@dataclass
class LoopState:
    """The loop's position, which changes from round to round (saved after each one for ``--resume``)."""

    round: int = 0                  # index of the next round (rounds count from 0 over the whole run)
    epoch: int = 0                  # position of the next round
    batch: int = 0
    step_seed: int = FIRST_STEP_SEED  # the inversion's step counter, carried across rounds
    best_round: int = -1            # the round whose trigger is the best one so far
    stopped: bool = False           # the stop rule ended the run
    last_epoch: int = 0             # epoch of the last finished round
    converged_rounds: list = field(default_factory=list)


@dataclass
class RoundRecord:
    """One finished round: its position, trigger, metrics row and the stop rule's decision."""

    round: int
    epoch: int
    batch: int
    trigger: InvertedTrigger        # mask and pattern (3, H, W)
    row: dict                       # the round's metrics (Trainer.moth.METRIC_FIELDS)
    decision: StopDecision          # improved or converged: ``trigger`` is the best one now
    seconds: float                  # wall-clock time of the round


class NonFiniteRound(ArithmeticError):
    """A NaN or inf in a round: ``step`` is "inversion", "hardening", "weights" or "distance"; ``values`` the
    numbers checked (the non-finite among them), ``parameter`` the first non-finite weight ("weights")."""

    def __init__(self, step: str, values: dict[str, float], parameter: str = "") -> None:
        super().__init__(f"{step}: {values} {parameter}".strip())
        self.step, self.values, self.parameter = step, values, parameter


class RoundHooks:
    """What the loop's caller sees of a round in the making; these defaults do nothing."""

    def progress(self, iterable: Iterable, desc: str, total: Optional[int] = None) -> Iterable:
        """Wrap the inversion's steps in a progress bar (``desc`` names the round); none by default."""
        return iterable

    def prepared(self, k: int, row: dict, config: InversionConfig) -> None:
        """Round ``k``'s settings are known (``config.threshold`` the round's) and ``row`` holds the attack
        set's similarities (clean_psim, refer_sim, gt_psim, threshold); the inversion starts next."""

    def inverted(self, k: int, trigger: InvertedTrigger, row: dict, config: InversionConfig) -> None:
        """Round ``k`` has its (finite) trigger and inversion metrics; the hardening starts next."""


def check_finite(step: str, values: dict[str, float]) -> None:
    """Raise :class:`NonFiniteRound` when one of ``values`` is NaN or inf."""
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteRound(step, values)


class IterativeInversion:
    """Algorithm 1 on ``model`` (hardened in place) over ``data`` (N, 3, H, W), the inversion set.

    Holds the method's objects: the encoder being hardened (``f``), a frozen copy of the original
    (``reference_f``, which judges the shift), the hardening optimiser, the clean features' sorted columns
    (N, D), the stop rule, the position (``state``) and the last round's trigger (the next round's start).
    """

    def __init__(self, model: nn.Module, data: TensorSet, usage: UsageInfo, settings: MothSettings, *,
                 ground_truth: Optional[Trigger] = None, monitor: Optional[Callable] = None,
                 stop_rule: Optional[StopRule] = None, hooks: Optional[RoundHooks] = None) -> None:
        self.model, self.data, self.usage, self.settings = model, data, usage, settings
        self.ground_truth, self.monitor = ground_truth, monitor
        self.hooks = hooks if hooks is not None else RoundHooks()
        self.stop_rule = stop_rule if stop_rule is not None else EarlyStop(settings.patience, settings.epsilon)
        self.reference = copy.deepcopy(model).eval()  # the original encoder, frozen, judges the shift
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.f = with_precision(model.f, settings.amp)  # the encoder being hardened
        self.reference_f = with_precision(self.reference.f, settings.amp)
        self.optimizer = torch.optim.SGD(model.f.parameters(), lr=settings.harden_lr, momentum=0.9, nesterov=True)
        self.clean_sorted = sorted_features(self.reference_f, data.x, usage)  # (N, D)
        self.state = LoopState(step_seed=first_step_seed(settings.seed_index))
        self.trigger: Optional[InvertedTrigger] = None

    @property
    def rounds_per_epoch(self) -> int:
        """Consecutive batches of ``--batch_size`` in the inversion set: one round each."""
        return len(self.data) // self.settings.batch_size

    @property
    def finished(self) -> bool:
        """The stop rule ended the run, or the last epoch has run."""
        return self.state.stopped or self.state.epoch >= self.settings.epochs

    def rounds(self) -> Iterator[RoundRecord]:
        """Round after round from the current position until :attr:`finished`; the position (``state``) has
        moved past a round when its record is yielded."""
        s = self.state
        while not self.finished:
            start = time.perf_counter()
            k = s.round
            trigger, row = self.invert(k)                                      # a, b
            row["harden_loss"] = self.harden(s.batch, trigger)                 # c
            row.update(monitor_row(self.monitor, self.f, s.batch + 1, self.settings.monitor_every))  # d
            row["distance"] = self.distance(trigger)                           # e
            decision = self.stop_rule.step(row["distance"])                    # f
            if decision.improved or decision.converged:  # the paper's code saves the best trigger in both cases
                s.best_round = k
            if decision.converged:
                s.converged_rounds.append(k)
            row.update(round=k, epoch=s.epoch, batch=s.batch, improved=int(decision.improved),
                       converged=int(decision.converged), counter=decision.counter, best_round=s.best_round)
            record = RoundRecord(k, s.epoch, s.batch, trigger, row, decision, time.perf_counter() - start)
            self.advance(decision)
            yield record

    def advance(self, decision: StopDecision) -> None:
        """Past the round just decided: the next batch, or the next epoch after the last batch or a converged
        round; a stop decision ends the run."""
        s = self.state
        s.round += 1
        s.last_epoch, s.stopped = s.epoch, decision.stop
        s.batch = self.rounds_per_epoch if decision.converged else s.batch + 1
        if s.batch >= self.rounds_per_epoch:
            s.epoch, s.batch = s.epoch + 1, 0

    def invert(self, k: int) -> tuple[InvertedTrigger, dict]:
        """Steps a-b of round ``k``: a fresh attack set drawn with replacement, one inversion round warm-started
        from the last trigger (a random start and ``FIRST_ROUND_LR`` in round 0). Advances the step counter;
        returns the trigger and the round's first metrics."""
        indices, rng = draw_attack_set(len(self.data), self.settings.attack_size,
                                       attack_set_seed(self.settings.seed_index, k))
        attack = self.data.x[indices.to(self.data.x.device)]
        first = self.trigger is None
        start = random_start(self.data.x.shape[-1], rng) if first else (self.trigger.mask[0], self.trigger.pattern)
        config = replace(self.settings.inversion, lr=FIRST_ROUND_LR if first else self.settings.inversion.lr)
        backbone, config = prepare_round(self.f, attack, self.usage, config)
        row = attack_set_similarities(backbone, attack, self.usage, self.ground_truth, config.psim, config.chunk_size)
        row["threshold"] = config.threshold
        self.hooks.prepared(k, row, config)
        result = invert_trigger(backbone, attack, self.usage, config, start, seed=self.state.step_seed,
                                desc=f"round {k} inversion", bar=self.hooks.progress)
        self.state.step_seed = result.next_seed
        psim = result.psim
        if not result.reached and math.isfinite(result.loss):  # no step recorded one: measure the last trigger
            psim = chunk_similarity(backbone, attack, self.usage, result.trigger, config.psim, config.chunk_size)
        row.update(loss=result.loss, loss_sim=-result.loss_sim, loss_reg=result.loss_reg, l1=result.l1, psim=psim,
                   reached=int(result.reached), ended_by=result.ended_by, steps=result.steps, cost=result.cost)
        self.trigger = result.trigger  # the next round warm-starts from it
        check_finite("inversion", {"inversion loss": row["loss"], "mean psim": row["loss_sim"],
                                   "mean mask L1": row["loss_reg"], "trigger L1": row["l1"]})
        self.hooks.inverted(k, self.trigger, row, config)
        return self.trigger, row

    def harden(self, batch_index: int, trigger: InvertedTrigger) -> float:
        """Step c, hardening, on the round's batch of the inversion set; raises :class:`NonFiniteRound` on a NaN loss or
        weight."""
        bs = self.settings.batch_size
        loss = harden_step(self.f, self.optimizer, self.data.x[batch_index * bs:(batch_index + 1) * bs], trigger,
                           self.usage)
        check_finite("hardening", {"hardening loss": loss})
        bad = first_nonfinite(self.model.f.named_parameters())
        if bad is not None:
            raise NonFiniteRound("weights", {}, parameter=f"f.{bad}")
        return loss

    def distance(self, trigger: InvertedTrigger) -> float:
        """Step e: the Wasserstein shift of the original encoder's features under ``trigger``; raises
        :class:`NonFiniteRound` when it is NaN or inf."""
        shift = wasserstein_shift(self.reference_f, self.data.x, self.usage, trigger, self.clean_sorted)
        check_finite("distance", {"Wasserstein distance": shift})
        return shift

    def restore(self, state: LoopState, trigger: InvertedTrigger, stop_rule_state: dict) -> None:
        """Go on from a saved position (--resume); the caller loads the encoder's and optimiser's states."""
        self.state, self.trigger = state, trigger
        self.stop_rule.load_state_dict(stop_rule_state)


@dataclass
class OneRound:
    """One inversion round from a random start (the NC baseline, the detection): the round's result, the psim
    of the returned trigger (measured again when no step reached the threshold) and the attack set's
    similarities with the round's threshold."""

    result: InversionResult
    psim: float
    reference: dict[str, float]


def one_round(backbone: nn.Module, images: Tensor, usage: UsageInfo, config: InversionConfig,
              ground_truth: Optional[Trigger], *, seed: int, step_seed: int, desc: str) -> OneRound:
    """One round with the first round's learning rate from a random start drawn with ``seed`` over ``images``
    (N, 3, H, W), the step counter starting at ``step_seed``. Raises :class:`NonFiniteRound` ("inversion") on
    a NaN loss or trigger size."""
    backbone, config = prepare_round(backbone, images, usage, replace(config, lr=FIRST_ROUND_LR))
    start = random_start(images.shape[-1], np.random.RandomState(seed % 2**32))
    result = invert_trigger(backbone, images, usage, config, start, seed=step_seed, desc=desc)
    check_finite("inversion", {"inversion loss": result.loss, "trigger L1": result.l1})
    psim = result.psim if result.reached else chunk_similarity(backbone, images, usage, result.trigger, config.psim,
                                                               config.chunk_size)
    reference = attack_set_similarities(backbone, images, usage, ground_truth, config.psim, config.chunk_size)
    return OneRound(result, psim, {**reference, "threshold": config.threshold})
