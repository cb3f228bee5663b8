"""The default step cap binds only where the paper's code would loop forever (a stalled search), never in a
round that is still making progress; an explicit --re_steps_cap is a hard cap."""
import numpy as np
import pytest
import torch

import INVERSION.inversion as inv
from DATASETS.stats import UsageInfo
from INVERSION.inversion import InversionConfig, invert_trigger, random_start

PLAIN = UsageInfo("plain", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 8)


def scripted(monkeypatch, psims):
    """Replace one step's work by a scripted psim per step (the stopping rule is all that is under test)."""
    calls = []

    def step(backbone, images, a, b, opt, *, usage, cost, config):
        k = len(calls)
        calls.append(k)
        trigger = inv.InvertedTrigger(inv.mask_from_logits(a).detach(), inv.pattern_from_logits(b).detach())
        return -psims(k), psims(k), 1.0, trigger

    monkeypatch.setattr(inv, "_inversion_step", step)
    return calls


def run(cfg):
    return invert_trigger(torch.nn.Identity(), torch.rand(4, 3, 8, 8), PLAIN, cfg,
                          random_start(8, np.random.RandomState(0)))


def test_a_round_the_original_finishes_in_ten_times_re_steps_finishes_on_the_default_flags(monkeypatch):
    steps = 20
    # psim creeps up from 0.5 and reaches 0.9 only at step 10 * steps (with noise that never sets a record)
    psims = lambda k: 0.5 + 0.4 * k / (10 * steps) - 0.001 * (k % 3)  # noqa: E731
    calls = scripted(monkeypatch, psims)
    result = run(InversionConfig(steps=steps, threshold=0.9, psim="pairs"))
    assert result.reached and result.ended_by == "threshold"
    first = next(k for k in range(10**6) if psims(k) >= 0.9)
    assert 10 * steps - 3 <= first <= 10 * steps + 3 and len(calls) == first + 1  # it ran until psim got there


def test_a_stalled_round_ends_by_the_stall_rule_long_before_the_ceiling(monkeypatch):
    steps = 20
    noise = np.random.RandomState(0).uniform(-0.01, 0.01, 100_000)
    calls = scripted(monkeypatch, lambda k: 0.6 + noise[k])  # a plateau below the threshold
    result = run(InversionConfig(steps=steps, threshold=0.9, psim="pairs"))
    assert not result.reached and result.ended_by == "stall"
    window = InversionConfig(steps=steps).stall_window
    assert window == max(steps, inv.STALL_WINDOW)
    assert steps + window <= len(calls) < InversionConfig(steps=steps).cap
    best = max(range(len(calls)), key=lambda k: noise[k])
    assert len(calls) == best + window  # it stopped once a whole window of steps had set no new record


def test_an_explicit_cap_is_a_hard_cap_and_disables_the_stall_rule(monkeypatch):
    calls = scripted(monkeypatch, lambda k: 0.6)  # flat: the stall rule would end it after the window
    result = run(InversionConfig(steps=5, threshold=0.9, step_cap=300, psim="pairs"))
    assert not result.reached and result.ended_by == "cap" and len(calls) == 300 == result.steps


@pytest.mark.parametrize("steps", [1, 7, 300])
def test_the_ceiling_is_a_multiple_of_re_steps(steps):
    assert InversionConfig(steps=steps).cap == inv.CEILING_FACTOR * steps
    assert InversionConfig(steps=steps, step_cap=steps).cap == steps


def test_a_threshold_no_chunk_can_reach_ends_the_round_after_re_steps(monkeypatch):
    calls = scripted(monkeypatch, lambda k: 0.5 + k * 1e-3)  # rising: the stall rule alone would go on
    result = run(InversionConfig(steps=5, threshold=0.9))  # 4 images: psim at most 3/4 with --psim original
    assert not result.reached and result.ended_by == "unreachable" and len(calls) == 5
    assert inv.psim_ceiling("original", 32) == 31 / 32 and inv.psim_ceiling("pairs", 4) == 1.0
    assert InversionConfig(threshold=0.96875).reachable(64) and not InversionConfig(threshold=0.97).reachable(64)
