import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from DATASETS.stats import UsageInfo, get_usage, normalize
from INVERSION.inversion import (CostSchedule, InversionConfig, attack_set_similarities, chunk_similarity, chunks,
                                 equation2, invert_trigger,
                                 logits_from_values, mask_from_logits, mask_l1, original_similarity,
                                 pair_mean_similarity, pairwise_similarity, pattern_from_logits, restart_noise,
                                 random_start, step_permutation)

PLAIN = UsageInfo("plain", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 8)


def cosines(features):
    b = features.shape[0]
    return [[(features[i].double() @ features[j].double() / (features[i].double().norm() * features[j].double().norm()))
             .item() for j in range(b)] for i in range(b)]


def slow_pair_mean(features):
    c, b = cosines(features), features.shape[0]
    return sum(c[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))


def slow_original(features):
    """The paper's code subtracts the 3-D diag_embed of the cosine matrix S before a mean over all
    B^3 entries: entry (i, j, k) is S[j][k] minus S[i][j] where j == k. Summed here entry by entry."""
    c, b = cosines(features), features.shape[0]
    total = 0.0
    for i in range(b):
        for j in range(b):
            for k in range(b):
                total += c[j][k] - (c[i][j] if j == k else 0.0)
    return total / b**3


def test_pair_mean_similarity_matches_a_slow_loop_without_diagonal():
    torch.manual_seed(0)
    for b, d in [(2, 3), (5, 7), (16, 64)]:
        f = torch.randn(b, d, dtype=torch.float64)  # float64: two summation orders, compared at 1e-12
        assert pair_mean_similarity(f).item() == pytest.approx(slow_pair_mean(f), rel=0, abs=1e-12)
        assert pairwise_similarity(f, "pairs").item() == pytest.approx(slow_pair_mean(f), rel=0, abs=1e-12)


def test_original_similarity_is_what_the_papers_expression_evaluates_to():
    torch.manual_seed(1)
    for b, d in [(2, 3), (5, 7), (9, 16)]:
        f = torch.randn(b, d, dtype=torch.float64)  # float64: two summation orders, compared at 1e-12
        assert original_similarity(f).item() == pytest.approx(slow_original(f), rel=0, abs=1e-12)
        assert pairwise_similarity(f).item() == pytest.approx(slow_original(f), rel=0, abs=1e-12)  # the default


def test_original_similarity_by_hand_and_its_ceiling():
    # two unit vectors at 60 degrees: cosines 1, 0.5, 0.5, 1 -> sum 3; (B-1)/B^3 * 3 = 1/8 * 3
    f = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert original_similarity(f).item() == pytest.approx(3 / 8)
    assert pair_mean_similarity(f).item() == pytest.approx(0.5)
    same = torch.ones(32, 4)
    assert original_similarity(same).item() == pytest.approx(31 / 32)  # never reaches 1: 0.969 at B = 32
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
    # a float32 round trip: atanh's condition number (<= 1 / (1 - 0.98^2) = 25) is undone by tanh's
    # derivative, so the error is a few float32 roundings (~1e-7); 1e-5 is a bound, not a measurement
    assert torch.allclose(pattern_from_logits(logits_from_values(values)), values, atol=1e-5)


def test_mask_l1_counts_a_three_channel_mask_once():
    m = torch.rand(8, 8, dtype=torch.float64)  # float64: the (3, H, W) sum / 3 adds in another order
    assert mask_l1(m).item() == pytest.approx(m.sum().item(), rel=1e-12)
    assert mask_l1(m.expand(3, 8, 8)).item() == pytest.approx(m.sum().item(), rel=1e-12)


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
    zero = CostSchedule(init_cost=0.0, threshold=0.9)
    for _ in range(5):
        zero.update(1.0)
    assert zero.cost == 0.0  # init_cost 0 stays 0: "reset to init_cost" is a no-op


def test_seeded_draws_are_numpys_and_torchs_global_streams():
    # the paper's code reseeds the global generators; ours draws the same numbers from private ones
    np.random.seed(103)
    order = np.arange(40)
    np.random.shuffle(order)
    assert torch.equal(step_permutation(40, 103), torch.from_numpy(order))
    torch.manual_seed(104)
    expected = torch.distributions.Uniform(low=-0.01, high=0.01).sample((3, 8, 8))
    assert torch.equal(restart_noise((3, 8, 8), 104, 0.01), expected)
    np.random.seed(7)
    mask, pattern = np.random.random((8, 8)), np.random.random((3, 8, 8))
    got = random_start(8, np.random.RandomState(7))
    assert np.array_equal(got[0].numpy(), mask) and np.array_equal(got[1].numpy(), pattern)


def test_chunks_are_32_images_with_the_remainder_dropped():
    x = torch.arange(100).float()
    parts = chunks(x, 32)
    assert [len(p) for p in parts] == [32, 32, 32] and parts[2][-1].item() == 95
    assert [len(p) for p in chunks(x[:20], 32)] == [20]  # fewer than 32: one chunk of all


class Linear(nn.Module):
    """A small differentiable stand-in backbone (B, 3, 8, 8) -> (B, 16)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.w = nn.Parameter(torch.randn(3 * 8 * 8, 16) * 0.2)

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.w)


def slow_round(backbone, images, init, *, steps, lr, init_cost, threshold, seed):
    """One inversion round written out from the paper's code's description, one line per rule:
    numpy-seeded cumulative reshuffle per step, chunks of 32 (remainder dropped), one Adam for the
    round, step means over chunks, best = last chunk's trigger when the mean psim reaches the
    threshold with a smaller mean L1, restart from it plus torch-seeded noise into the same tensors."""
    eps = 1e-7
    a = torch.atanh((init[0].clamp(0, 1) - 0.5) * (2 - eps)).float().requires_grad_(True)
    b = torch.atanh((init[1].clamp(0, 1) - 0.5) * (2 - eps)).float().requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=lr, betas=(0.5, 0.9))
    cost, up, down, best, best_l1 = init_cost, 0, 0, None, float("inf")
    x_set = images.clone()
    for _ in range(steps):
        np.random.seed(seed)
        seed += 1
        order = np.arange(len(x_set))
        np.random.shuffle(order)
        x_set = x_set[torch.from_numpy(order)]
        sims, regs = [], []
        for i in range(len(x_set) // 32):
            mask = (torch.tanh(a) / (2 - eps) + 0.5).clamp(0, 1).repeat(3, 1, 1)
            pattern = (torch.tanh(b) / (2 - eps) + 0.5).clamp(0, 1)
            chunk = x_set[i * 32:(i + 1) * 32]
            feats = backbone(torch.clip((1 - mask) * chunk + mask * pattern, 0, 1))
            sim = slow_original_fast(feats)
            reg = mask.sum() / 3
            opt.zero_grad()
            (-sim + cost * reg).backward()
            opt.step()
            sims.append(sim.item())
            regs.append(reg.item())
        sim, reg = np.mean(sims), np.mean(regs)
        if sim >= threshold and reg < best_l1:
            best, best_l1 = (mask[0].detach().clone(), pattern.detach().clone()), reg
            torch.manual_seed(seed)
            m = (best[0] + torch.distributions.Uniform(-0.01, 0.01).sample(best[0].shape)).clamp(0, 1)
            torch.manual_seed(seed + 1)
            p = (best[1] + torch.distributions.Uniform(-0.01, 0.01).sample(best[1].shape)).clamp(0, 1)
            with torch.no_grad():
                a.copy_(torch.atanh((m - 0.5) * (2 - eps)))
                b.copy_(torch.atanh((p - 0.5) * (2 - eps)))
        up, down = (up + 1, 0) if sim >= threshold else (0, down + 1)
        if up >= 5:
            up, cost = 0, cost * 1.2
        elif down >= 5:
            down, cost = 0, cost / 1.5 ** 1.5
    return best, best_l1, seed


def slow_original_fast(feats):
    z = F.normalize(feats, dim=1)
    s = z @ z.T
    b = s.shape[0]
    return s.sum() * (b - 1) / b**3


def test_a_round_equals_the_slow_reference_of_the_papers_round():
    # The two rounds compute psim in another order (|sum z|^2 against the sum of the cosine matrix). The
    # encoder and images run in float64, so the gradients agree to ~1e-16 before their cast to the float32
    # logits (both rounds keep the trigger and Adam in float32, as the paper's code): the rounds then agree
    # to float32's rounding of the same updates, and no threshold decision can flip on rounding. In float32
    # Adam's normalised steps would turn rounding differences of small gradients into lr-sized ones.
    torch.manual_seed(0)
    images = torch.rand(70, 3, 8, 8, dtype=torch.float64)  # two chunks of 32, six images dropped each step
    init = random_start(8, np.random.RandomState(1))
    backbone = Linear().double()
    cfg = InversionConfig(steps=25, lr=0.1, init_cost=1e-3, threshold=0.6)
    trace = []
    ours = invert_trigger(backbone, images, PLAIN, cfg, init, seed=100, trace=trace)
    (mask, pattern), reg, next_seed = slow_round(backbone, images, init, steps=25, lr=0.1, init_cost=1e-3,
                                                 threshold=0.6, seed=100)
    assert sum(t["new_best"] for t in trace) >= 2, "the check needs restarts"
    assert ours.reached and ours.next_seed == next_seed == 125
    # values in [0, 1] from float32 logits: 1e-5 is ~100 float32 roundings (4e-7 measured), far below a changed decision
    assert torch.allclose(ours.mask, mask, rtol=0, atol=1e-5) and torch.allclose(ours.pattern, pattern, rtol=0, atol=1e-5)
    assert min(t["l1"] for t in trace if t["new_best"]) == pytest.approx(reg, rel=1e-5)  # an L1 of ~14 summed in float32: 1e-5 ~ 100 roundings


class Orthogonal(nn.Module):
    """Features that never agree: psim stays tiny whatever the trigger, so no trigger reaches a threshold."""

    def forward(self, x):
        return torch.eye(x.shape[0], 16) + 0.0 * x.mean()


def test_hard_cap_stops_a_round_that_never_reaches_the_threshold():
    images = torch.rand(4, 3, 8, 8)
    cfg = InversionConfig(steps=5, lr=0.1, init_cost=0.0, threshold=0.9, step_cap=12)
    result = invert_trigger(Orthogonal(), images, PLAIN, cfg, random_start(8, np.random.RandomState(0)))
    assert not result.reached and result.steps == 12 and math.isnan(result.psim)
    assert result.next_seed == 100 + 12
    assert result.ended_by == "cap"


def test_backbone_parameters_get_no_gradient_and_mode_is_restored():
    backbone = Linear().train()
    cfg = InversionConfig(steps=3, lr=0.1, init_cost=1e-3, threshold=0.5)
    invert_trigger(backbone, torch.rand(4, 3, 8, 8), PLAIN, cfg, random_start(8, np.random.RandomState(0)))
    assert backbone.w.grad is None and backbone.w.requires_grad and backbone.training


def test_chunk_similarity_is_the_mean_over_chunks():
    backbone = Linear().double()
    images = torch.rand(64, 3, 8, 8, dtype=torch.float64)  # float64: compared at 1e-12
    with torch.no_grad():
        expected = (original_similarity(backbone(images[:32])) + original_similarity(backbone(images[32:]))) / 2
    assert chunk_similarity(backbone, images, PLAIN) == pytest.approx(expected.item(), rel=1e-12)


def test_refer_sim_is_the_papers_logged_value_of_twice_normalised_images():
    """The paper's code takes the attack set from a loader that normalises, then normalises it again before
    the encoder, and logs -(S - diag_embed(S)).mean() of the clean chunks' features (re_loss.csv refer_sim)."""
    usage = get_usage("cifar10")  # a real mean/std: normalising twice differs from once
    backbone = Linear().double()
    images = torch.rand(70, 3, 8, 8, dtype=torch.float64)  # two chunks of 32, the remainder dropped
    loaded = normalize(images, usage)  # what the paper's loader hands over
    with torch.no_grad():
        feats = torch.cat([backbone(normalize(loaded[i * 32:(i + 1) * 32], usage)) for i in range(2)])
    z = F.normalize(feats, dim=-1)
    s = z @ z.T
    expected = -(s - torch.diag_embed(s)).mean().item()
    got = attack_set_similarities(backbone, images, usage, None)
    assert got["refer_sim"] == pytest.approx(expected, rel=0, abs=1e-12)  # float64: two summation orders
    once = -original_similarity(torch.cat([backbone(normalize(images[i * 32:(i + 1) * 32], usage))
                                           for i in range(2)])).item()
    assert abs(once - expected) > 1e-3  # the double normalisation shows: the check can fail
    assert got["clean_psim"] == pytest.approx(chunk_similarity(backbone, images, usage), rel=1e-12)  # decisions: once


@pytest.mark.parametrize("kind, slow", [("original", slow_original), ("pairs", slow_pair_mean)])
def test_equation2_is_minus_psim_plus_cost_times_the_mask_l1(kind, slow):
    torch.manual_seed(3)
    features, mask = torch.randn(5, 7, dtype=torch.float64), torch.rand(4, 4, dtype=torch.float64).expand(3, 4, 4)
    loss, psim, l1 = equation2(features, mask, cost=0.25, psim_kind=kind)
    assert psim.item() == pytest.approx(slow(features), rel=1e-12)
    assert l1.item() == pytest.approx(mask[0].sum().item(), rel=1e-12)  # a (3, H, W) mask counts once
    assert loss.item() == pytest.approx(-slow(features) + 0.25 * mask[0].sum().item(), rel=1e-12)
