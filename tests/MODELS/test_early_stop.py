"""EarlyStopping on scripted score sequences; expected decisions worked out by hand."""
import io

import pytest
import torch

from MODELS import EarlyStopping, StopDecision


def run(stopper, scores):
    """(improved, stop, converged) for each score, in order."""
    return [(d.improved, d.stop, d.converged) for d in map(stopper.step, scores)]


def test_converged_stops_even_with_a_new_best():
    # 1.0 first -> best; 2.0 gain 1 > eps; 2.05 moves 0.05 < eps: converged (gain small -> counter 1).
    stopper = EarlyStopping(patience=3, epsilon=0.1)
    assert run(stopper, [1.0, 2.0, 2.05]) == [(True, False, False), (True, False, False), (True, True, True)]
    assert stopper.best == 2.05 and stopper.best_round == 2 and stopper.counter == 1


def test_patience_reached_without_improvement():
    stopper = EarlyStopping(patience=2, epsilon=0.01)
    assert run(stopper, [1.0, 0.5, 0.8]) == [(True, False, False), (False, False, False), (False, True, False)]
    assert stopper.best == 1.0 and stopper.best_round == 0 and stopper.counter == 2


def test_small_gain_sets_counter_to_one():
    # 3.0 -> 2.0 (no best, counter 1) -> 3.5: new best, gain exactly eps (not above) -> counter 1, and
    # |3.5 - 2.0| = 1.5 is no convergence; then 2.5 adds 1 -> patience 2 reached.
    stopper = EarlyStopping(patience=2, epsilon=0.5)
    decisions = run(stopper, [1.0, 3.0, 2.0, 3.5])
    assert decisions == [(True, False, False), (True, False, False), (False, False, False), (True, False, False)]
    assert stopper.counter == 1 and stopper.best_round == 3
    assert run(stopper, [2.5]) == [(False, True, False)]


def test_large_gain_resets_counter():
    stopper = EarlyStopping(patience=3, epsilon=0.1)
    run(stopper, [1.0, 0.0, 0.5])  # counter 2
    assert stopper.counter == 2
    assert run(stopper, [2.0]) == [(True, False, False)] and stopper.counter == 0


def test_change_exactly_epsilon_is_not_convergence():
    stopper = EarlyStopping(patience=5, epsilon=0.5)
    assert run(stopper, [1.0, 1.5]) == [(True, False, False), (True, False, False)]
    assert stopper.counter == 1  # gain 0.5 is not above epsilon


def test_decision_is_frozen():
    d = EarlyStopping(1, 0.1).step(1.0)
    assert isinstance(d, StopDecision)
    with pytest.raises(Exception):
        d.stop = True


def test_state_dict_resume_gives_same_decisions():
    scores = [0.3, 0.9, 0.7, 0.95, 0.6, 0.61, 0.2]
    full = EarlyStopping(patience=3, epsilon=0.1)
    expected = run(full, scores)
    first = EarlyStopping(patience=3, epsilon=0.1)
    run(first, scores[:3])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = EarlyStopping(patience=1, epsilon=9.0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert run(resumed, scores[3:]) == expected[3:]
    assert resumed.state_dict() == full.state_dict()
