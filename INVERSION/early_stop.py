"""The early stop of the iterative inversion (docs/ALGORITHMS.md §3), with the paper's code's semantics.

Two signals come out of each round's Wasserstein distance ``d`` (higher = the trigger moves the
original encoder's features more):

* **improved** -- ``d`` beats the best so far (which starts at 0, so a first ``d <= 0`` is no
  gain): the round's trigger becomes the best one. The patience counter resets to 0 after a gain
  above ``epsilon`` and to 1 after a smaller one; a round without a gain adds 1, and reaching
  ``patience`` **stops** the run.
* **converged** -- ``d`` moved less than ``epsilon`` from the previous round's distance (which starts
  at 0, so a first ``d < epsilon`` converges): the round's trigger is saved as the best one too and
  only the current epoch ends; the run goes on with the next epoch. The previous distance is not
  updated on such a round, so the next round is compared with the same value again.

Only the patience counter or the last epoch ends a run.

:class:`StopRule` is what the round loop (INVERSION/iterative.py) asks of a stop criterion; :class:`EarlyStop`
is the paper's, the default. Another criterion is a class with these four members, passed to the loop as
``stop_rule``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StopDecision:
    """What the early stop decided on one round's distance (the paper's code's three outcomes)."""

    improved: bool  # a new maximum: save the round's trigger as the best one (with its round index)
    converged: bool  # the distance stopped moving: save the round's trigger as best, end this epoch
    stop: bool  # patience reached: end the run
    counter: int = 0  # the rule's patience count after this round (metrics.csv's "counter")


class StopRule(Protocol):
    """A stop criterion of the iterative inversion: fed each round's distance, it decides; its state is resumable."""

    def step(self, score: float) -> StopDecision:
        """Feed one round's distance (higher: the trigger shifts the original encoder's features more)."""
        ...

    def describe_stop(self) -> str:
        """Why the run ended when a decision said ``stop`` (metrics.json's stop_reason)."""
        ...

    def state_dict(self) -> dict:
        """Plain numbers only (it sits inside a weights_only checkpoint)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict` (--resume)."""
        ...


class EarlyStop:
    """Patience counter and convergence test on a score where higher is better."""

    def __init__(self, patience: int, epsilon: float) -> None:
        self.patience = int(patience)
        self.epsilon = float(epsilon)
        self.best = 0.0
        self.previous = 0.0
        self.counter = 0

    def step(self, score: float) -> StopDecision:
        """Feed one round's distance; returns what the run does with it."""
        score = float(score)
        improved = score > self.best
        stop = False
        if improved:
            gain, self.best = score - self.best, score
            self.counter = 0 if abs(gain) > self.epsilon else 1
        else:
            self.counter += 1
            stop = self.counter >= self.patience
        converged = not stop and abs(score - self.previous) < self.epsilon
        if not (stop or converged):
            self.previous = score
        return StopDecision(improved=improved, converged=converged, stop=stop, counter=self.counter)

    def describe_stop(self) -> str:
        """``patience N``: the counter reached ``patience``."""
        return f"patience {self.patience}"

    def state_dict(self) -> dict:
        """Plain numbers only, so it can sit inside a weights_only checkpoint."""
        return {"patience": self.patience, "epsilon": self.epsilon, "best": self.best,
                "previous": self.previous, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict` (--resume)."""
        self.patience = int(state["patience"])
        self.epsilon = float(state["epsilon"])
        self.best = float(state["best"])
        self.previous = float(state["previous"])
        self.counter = int(state["counter"])
