"""Algorithm 1 as a loop (INVERSION.iterative): one record per round, no file and no printing, its position as
an input, and a stop criterion that plugs in."""
import copy
import json
import math

import torch

from DATASETS.stats import get_usage
from DATASETS.tensors import TensorSet
from INVERSION.early_stop import StopDecision
from INVERSION.inversion import InversionConfig
from INVERSION.iterative import IterativeInversion, MothSettings, RoundHooks
from MODELS.simclr import build_model
from Trainer.moth import METRIC_FIELDS, MothRun

USAGE = get_usage("cifar10")


def setup(epochs=2, batch_size=8, patience=3):
    """A tiny encoder (seeded) and 16 random images: two rounds per epoch."""
    torch.manual_seed(0)
    model = build_model("tiny")
    data = TensorSet(torch.rand(16, 3, 32, 32), torch.zeros(16, dtype=torch.long), 10)
    settings = MothSettings(epochs=epochs, batch_size=batch_size, attack_size=8, harden_lr=1e-2,
                            inversion=InversionConfig(steps=2, step_cap=2), patience=patience, epsilon=1e-4,
                            monitor_every=0)
    return model, data, settings


def same_row(a: dict, b: dict) -> bool:
    """Equal rows, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


class StopAfter:
    """A toy stop criterion: every round is the best so far; the run ends after ``rounds`` rounds."""

    def __init__(self, rounds: int) -> None:
        self.rounds, self.seen = rounds, 0

    def step(self, score: float) -> StopDecision:
        self.seen += 1
        return StopDecision(improved=True, converged=False, stop=self.seen >= self.rounds, counter=self.seen)

    def describe_stop(self) -> str:
        return f"toy: {self.rounds} rounds"

    def state_dict(self) -> dict:
        return {"rounds": self.rounds, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.rounds, self.seen = state["rounds"], state["seen"]


def test_one_record_per_round_and_neither_a_file_nor_a_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECEIVE_NO_PROGRESS", raising=False)  # a bar would print: the loop must not have one
    model, data, settings = setup()
    records = list(IterativeInversion(model, data, USAGE, settings).rounds())
    assert [(r.round, r.epoch, r.batch) for r in records] == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    assert all(set(r.row) == set(METRIC_FIELDS) for r in records)  # a whole metrics.csv row each
    assert all(r.trigger.mask.shape == r.trigger.pattern.shape == (3, 32, 32) for r in records)
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr() == ("", "")


def test_the_position_is_an_input_a_resumed_loop_goes_on_as_the_whole_one():
    model, data, settings = setup()
    whole = [r.row for r in IterativeInversion(model, data, USAGE, settings).rounds()]
    model, data, settings = setup()
    first = IterativeInversion(model, data, USAGE, settings)
    rounds = first.rounds()
    part = [next(rounds).row, next(rounds).row]  # the first epoch, then the loop is dropped
    saved = copy.deepcopy((first.state, first.trigger, first.stop_rule.state_dict(), model.state_dict(),
                           first.optimizer.state_dict()))
    original, data, settings = setup()  # a fresh loop on the original encoder (the reference)...
    second = IterativeInversion(original, data, USAGE, settings)
    original.load_state_dict(saved[3])  # ...whose hardened weights and optimiser come from the saved position
    second.optimizer.load_state_dict(saved[4])
    second.restore(*saved[:3])
    part += [r.row for r in second.rounds()]
    assert len(part) == len(whole) == 4
    assert all(same_row(a, b) for a, b in zip(part, whole))


def test_a_different_stop_criterion_plugs_in_where_the_loop_is_built(tmp_path):
    """Adding a criterion touches its class and the one place that passes it (here: this test)."""
    model, data, settings = setup(epochs=5)
    records = list(IterativeInversion(model, data, USAGE, settings, stop_rule=StopAfter(3)).rounds())
    assert len(records) == 3 and records[-1].decision.stop and [r.row["counter"] for r in records] == [1, 2, 3]
    model, data, settings = setup(epochs=5)
    summary = MothRun(model, data, USAGE, settings, log_dir=tmp_path, results_dir=tmp_path,
                      stop_rule=StopAfter(3)).run()
    assert summary["stop_reason"] == "toy: 3 rounds" and summary["rounds"] == 3 and summary["best_round"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["stop_reason"] == "toy: 3 rounds"


def test_the_hooks_see_each_round_before_its_inversion_and_before_its_hardening():
    seen = []

    class Watch(RoundHooks):
        def prepared(self, k, row, config):
            seen.append(("prepared", k, sorted(row)))

        def inverted(self, k, trigger, row, config):
            seen.append(("inverted", k, "harden_loss" in row))

    model, data, settings = setup(epochs=1)
    list(IterativeInversion(model, data, USAGE, settings, hooks=Watch()).rounds())
    similarities = sorted(["clean_psim", "refer_sim", "gt_psim", "threshold"])
    assert seen == [("prepared", 0, similarities), ("inverted", 0, False),
                    ("prepared", 1, similarities), ("inverted", 1, False)]
