"""The early stop, alone and replayed through the real round loop with fixed distance sequences."""
import json
import random

import numpy as np
import pytest
import torch

from DATASETS.stats import get_usage
from DATASETS.tensors import TensorSet
from DATASETS.triggers import InvertedTrigger
from INVERSION.early_stop import EarlyStop
from INVERSION.inversion import InversionConfig
from MODELS.simclr import build_model
from INVERSION.iterative import MothSettings
from Trainer.moth import METRIC_FIELDS, MothRun


def original_run(distances, epochs, rounds_per_epoch, patience, eps):
    """The paper's code's loop, written out from reading it: epochs of batches; the early-stopping
    object (best starts at 0; counter 0 after a gain above eps, 1 after a smaller one, +1 without a
    gain, stop at patience); then, unless stopped, a distance within eps of the previous round's
    (which starts at 0 and is not updated on such a round) saves the round as best and ends the
    epoch. The model is saved, and the run ends, on a stop or after the last epoch."""
    best, counter, previous, k, best_file, stopped = 0.0, 0, 0.0, 0, None, False
    for epoch in range(epochs):
        for _ in range(rounds_per_epoch):
            d = distances[k]
            k += 1
            if d > best:
                gain, best, best_file = d - best, d, k - 1
                counter = 0 if abs(gain) > eps else 1
            else:
                counter += 1
                stopped = counter >= patience
            if stopped:
                break
            if abs(d - previous) < eps:
                best_file = k - 1
                break
            previous = d
        if stopped or epoch + 1 == epochs:
            return {"rounds": k, "stopped": stopped, "best": best_file, "model_epoch": epoch + 1}


def test_early_stop_counter_and_convergence_rules():
    es = EarlyStop(patience=3, epsilon=0.01)
    d = es.step(0.5)
    assert d.improved and not d.converged and es.counter == 0
    d = es.step(0.505)  # a gain below epsilon: counter 1, and the distance barely moved: converged
    assert d.improved and d.converged and es.counter == 1
    assert es.previous == 0.5  # not updated on a converged round
    d = es.step(0.4)
    assert not d.improved and es.counter == 2 and not d.stop and not d.converged
    d = es.step(0.3)
    assert d.stop and es.counter == 3


def test_round_zero_edges_follow_the_paper_code():
    first_small = EarlyStop(patience=5, epsilon=1e-3)
    assert first_small.step(5e-4).converged  # compared with a previous distance of 0
    zero = EarlyStop(patience=5, epsilon=1e-3)
    d = zero.step(0.0)
    assert not d.improved and zero.counter == 1  # 0 is no gain over a best of 0


def test_state_dict_round_trips():
    es = EarlyStop(patience=4, epsilon=0.1)
    for v in (0.3, 0.35, 0.2):
        es.step(v)
    twin = EarlyStop(1, 0)
    twin.load_state_dict(es.state_dict())
    assert twin.state_dict() == es.state_dict()


CASES = {
    "converged_then_more": [0.1, 0.2, 0.2000001, 0.3, 0.25, 0.25, 0.5, 0.45, 0.44, 0.43, 0.42, 0.41, 0.40, 0.39,
                            0.38, 0.37],
    "first_round_below_eps": [0.0005, 0.3, 0.31, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
    "zero_distance_first": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "patience_plain": [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "converged_last_epoch": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.3, 1.4, 1.5],
}


def replay(tmp_path, distances, epochs=4, batch=4, patience=3, eps=1e-3):
    """Run the real round loop (INVERSION.iterative) and its run (Trainer.moth) with the round's measurements
    replaced: inversion, hardening and distance (from ``distances``)."""
    torch.manual_seed(0)
    model = build_model("tiny")
    data = TensorSet(torch.rand(16, 3, 32, 32), torch.zeros(16, dtype=torch.long), 10)
    settings = MothSettings(epochs=epochs, batch_size=batch, attack_size=4, harden_lr=1e-3,
                            inversion=InversionConfig(), patience=patience, epsilon=eps, monitor_every=0)
    flow = MothRun(model, data, get_usage("cifar10"), settings, log_dir=tmp_path, results_dir=tmp_path)
    loop, feed = flow.loop, iter(distances)

    def invert(k):
        loop.trigger = InvertedTrigger(torch.full((32, 32), k / 100), torch.rand(3, 32, 32))
        return loop.trigger, {**{f: float("nan") for f in METRIC_FIELDS}, "reached": 1}

    loop.invert, loop.harden, loop.distance = invert, lambda batch_index, trigger: 0.0, lambda trigger: next(feed)
    summary = flow.run()
    return flow, summary


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_distance_sequences_end_as_in_the_paper_code(tmp_path, name):
    distances = CASES[name]
    expected = original_run(distances, epochs=4, rounds_per_epoch=4, patience=3, eps=1e-3)
    flow, summary = replay(tmp_path, distances)
    assert summary["rounds"] == expected["rounds"]
    assert summary["stopped_early"] == expected["stopped"]
    assert summary["best_round"] == expected["best"]
    assert (tmp_path / f"Harden_model_{expected['model_epoch']}.pth").is_file()
    with np.load(tmp_path / "mask-pattern-best.npz") as best:
        assert int(best["idx"]) == expected["best"] and best["mask"][0, 0, 0] == pytest.approx(expected["best"] / 100)
    assert json.loads((tmp_path / "metrics.json").read_text())["best_round"] == expected["best"]


def test_convergence_skips_to_the_next_epoch_and_does_not_end_the_run(tmp_path):
    flow, summary = replay(tmp_path, CASES["converged_then_more"])
    rows = flow.files.rows
    assert summary["converged_rounds"] == [2, 5]
    assert (rows[3]["epoch"], rows[3]["batch"]) == (1, 0)  # round 2 converged in epoch 0: epoch 1 starts
    assert summary["stop_reason"] == "patience 3" and summary["rounds"] > 3


def test_random_sequences_agree_with_the_paper_loop(tmp_path):
    rng = random.Random(5)
    for i in range(6):
        distances = [round(rng.choice([0.0, 0.2, 0.4]) + rng.random() * 0.002, 4) for _ in range(16)]
        expected = original_run(distances, epochs=4, rounds_per_epoch=4, patience=3, eps=1e-3)
        folder = tmp_path / str(i)
        folder.mkdir()
        _, summary = replay(folder, distances)
        assert (summary["rounds"], summary["stopped_early"], summary["best_round"]) == \
            (expected["rounds"], expected["stopped"], expected["best"]), distances
