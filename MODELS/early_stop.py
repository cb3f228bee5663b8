"""Early stopping on a score where higher is better (SPEC §6.2e): patience, small gains, convergence."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class StopDecision:
    improved: bool  # a new best score: the caller saves the current trigger as best
    stop: bool  # patience reached or converged
    converged: bool  # score moved less than epsilon from the previous round


class EarlyStopping:
    """Counter resets to 0 on a gain above ``epsilon``, to 1 on a smaller gain, +1 without a new best."""

    def __init__(self, patience: int, epsilon: float) -> None:
        self.patience = int(patience)
        self.epsilon = float(epsilon)
        self.best: Optional[float] = None
        self.best_round: Optional[int] = None
        self.previous: Optional[float] = None
        self.counter = 0
        self.rounds = 0

    def step(self, score: float) -> StopDecision:
        score = float(score)
        converged = self.previous is not None and abs(score - self.previous) < self.epsilon
        self.previous = score
        if self.best is None or score > self.best:
            gain = math.inf if self.best is None else score - self.best
            self.best = score
            self.best_round = self.rounds
            improved = True
            self.counter = 0 if gain > self.epsilon else 1
        else:
            improved = False
            self.counter += 1
        self.rounds += 1
        stop = self.counter >= self.patience or converged
        return StopDecision(improved=improved, stop=stop, converged=converged)

    def state_dict(self) -> dict:
        """Plain numbers only, so it can sit inside a weights_only checkpoint."""
        return {"patience": self.patience, "epsilon": self.epsilon, "best": self.best,
                "best_round": self.best_round, "previous": self.previous,
                "counter": self.counter, "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.patience = int(state["patience"])
        self.epsilon = float(state["epsilon"])
        self.best = None if state["best"] is None else float(state["best"])
        self.best_round = None if state["best_round"] is None else int(state["best_round"])
        self.previous = None if state["previous"] is None else float(state["previous"])
        self.counter = int(state["counter"])
        self.rounds = int(state["rounds"])
