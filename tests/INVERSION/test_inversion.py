import math
import warnings

import pytest
import torch
from torch import nn

from DATASETS.stats import UsageInfo
from INVERSION.inversion import (CostSchedule, InversionConfig, invert_trigger, logits_from_values, mask_from_logits,
                                 mask_l1, pairwise_similarity, pattern_from_logits)

PLAIN = UsageInfo("plain", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 8)


def slow_psim(features):
    b = features.shape[0]
    total = 0.0
    for i in range(b):
        for j in range(b):
            if i != j:
                fi, fj = features[i].double(), features[j].double()
                total += (fi @ fj / (fi.norm() * fj.norm())).item()
    return total / (b * (b - 1))


def test_pairwise_similarity_matches_slow_loop_without_diagonal():
    torch.manual_seed(0)
    for b, d in [(2, 3), (5, 7), (16, 64)]:
        f = torch.randn(b, d)
        assert pairwise_similarity(f).item() == pytest.approx(slow_psim(f), abs=1e-5)


def test_pairwise_similarity_is_one_for_identical_rows_and_needs_pairs():
    f = torch.randn(1, 10).repeat(4, 1) * torch.tensor([[1.0], [2.0], [3.0], [0.5]])
    assert pairwise_similarity(f).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        pairwise_similarity(torch.randn(1, 5))


def test_tanh_parametrisation_stays_inside_unit_interval_and_inverts():
    big = torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4])
    m = mask_from_logits(big)
    assert (m >= 0).all() and (m <= 1).all()
    assert m[2].item() == pytest.approx(0.5)
    p = pattern_from_logits(torch.linspace(-5, 5, 3 * 4 * 4).reshape(3, 4, 4))
    assert (p > 0).all() and (p < 1).all()
    values = torch.rand(3, 4, 4) * 0.98 + 0.01
    assert torch.allclose(pattern_from_logits(logits_from_values(values)), values, atol=1e-5)


def test_mask_l1_counts_a_three_channel_mask_once():
    m = torch.rand(8, 8)
    assert mask_l1(m).item() == pytest.approx(m.sum().item(), rel=1e-6)
    assert mask_l1(m.expand(3, 8, 8)).item() == pytest.approx(m.sum().item(), rel=1e-6)


def slow_schedule(psims, init_cost, threshold, patience=5):
    cost, up, down, costs = init_cost, 0, 0, []
    for s in psims:
        if s >= threshold:
            up += 1
            down = 0
        else:
            down += 1
            up = 0
        if up >= patience:
            up = 0
            cost = init_cost if cost == 0 else cost * 1.2
        elif down >= patience:
            down = 0
            cost = cost / 1.5 ** 1.5
        costs.append(cost)
    return costs


def test_cost_schedule_matches_the_rule():
    psims = [0.95] * 12 + [0.5] * 11 + [0.95, 0.5] * 5 + [0.99] * 6
    schedule = CostSchedule(init_cost=0.05, threshold=0.9)
    got = [schedule.update(s) for s in psims]
    assert got == pytest.approx(slow_schedule(psims, 0.05, 0.9))
    assert got[4] == pytest.approx(0.05 * 1.2) and got[9] == pytest.approx(0.05 * 1.44)
    zero = CostSchedule(init_cost=0.0, threshold=0.9)
    for _ in range(5):
        zero.update(1.0)
    assert zero.cost == 0.0  # init_cost 0 stays 0: "reset to init_cost" is a no-op


class Flatten(nn.Module):
    """A stand-in backbone: stamped images collapse in feature space when the mask covers them."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return (x * self.scale).flatten(1) - 0.5


class Orthogonal(nn.Module):
    """Features that never agree: psim is 0 whatever the trigger, so no trigger reaches a threshold."""

    def forward(self, x):
        return torch.eye(x.shape[0], 16) + 0.0 * x.mean()


def test_best_trigger_is_the_smallest_above_threshold_and_restarts():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 8, 8)
    trace = []
    cfg = InversionConfig(steps=60, lr=0.1, init_cost=1e-3, threshold=0.8, batch_size=8)
    result = invert_trigger(Flatten(), images, PLAIN, cfg, trace=trace)
    assert result.reached and result.psim >= 0.8
    above = [t for t in trace if t["psim"] >= 0.8]
    assert above, "the stand-in must reach the threshold"
    assert result.l1 == pytest.approx(min(t["l1"] for t in above))
    assert result.l1 == pytest.approx(mask_l1(result.mask).item(), rel=1e-5)
    bests = [t for t in trace if t["new_best"]]
    assert all(b2["l1"] < b1["l1"] for b1, b2 in zip(bests, bests[1:]))  # each new best is strictly smaller
    assert [t["cost"] for t in trace][1:] == pytest.approx(slow_schedule([t["psim"] for t in trace], 1e-3, 0.8)[:-1])
    assert result.mask.shape == (8, 8) and result.pattern.shape == (3, 8, 8)
    assert 0 <= result.mask.min() and result.mask.max() <= 1


def test_restart_moves_at_most_the_noise_from_the_best():
    torch.manual_seed(1)
    images = torch.rand(6, 3, 8, 8)
    cfg = InversionConfig(steps=1, lr=1e-6, init_cost=0.0, threshold=0.0, batch_size=6, restart_noise=0.01)
    trace = []
    result = invert_trigger(Flatten(), images, PLAIN, cfg, trace=trace)
    assert trace[0]["new_best"] and result.steps == 1
    init = (result.mask.clone(), result.pattern.clone())
    second = invert_trigger(Flatten(), images, PLAIN, cfg, init=init)
    assert (second.mask - init[0]).abs().max() <= 1e-3  # warm start from the given trigger, lr tiny


def test_hard_cap_stops_a_round_that_never_reaches_the_threshold():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    cfg = InversionConfig(steps=5, lr=0.1, init_cost=0.0, threshold=0.9, batch_size=4, step_cap=12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invert_trigger(Orthogonal(), images, PLAIN, cfg)
    assert not result.reached and result.steps == 12 and math.isnan(result.psim)
    assert any("no trigger reached" in str(w.message) for w in caught)
    assert InversionConfig(steps=7).cap == 21


def test_backbone_parameters_get_no_gradient_and_mode_is_restored():
    backbone = Flatten().train()
    cfg = InversionConfig(steps=3, lr=0.1, init_cost=1e-3, threshold=0.5, batch_size=4)
    invert_trigger(backbone, torch.rand(4, 3, 8, 8), PLAIN, cfg)
    assert backbone.scale.grad is None and backbone.scale.requires_grad and backbone.training


def test_inversion_is_deterministic_for_a_seed():
    images = torch.rand(4, 3, 8, 8)
    cfg = InversionConfig(steps=10, lr=0.1, init_cost=1e-3, threshold=0.5, batch_size=4)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(invert_trigger(Flatten(), images, PLAIN, cfg))
    assert torch.equal(runs[0].mask, runs[1].mask) and torch.equal(runs[0].pattern, runs[1].pattern)
