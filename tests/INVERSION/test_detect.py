import math

import pytest
import torch

from INVERSION.detect import TargetCheck, Verdict, growth, judge, judge_record, relative_size, target_check


def test_relative_size_is_the_one_channel_mask_l1_over_the_pixels():
    mask = torch.zeros(32, 32)
    mask[21:31, 21:31] = 1.0  # BadEncoder's 10x10 square: L1 100
    assert relative_size(mask) == pytest.approx(100 / 1024)
    # a (3, H, W) mask holding the same plane three times is the same trigger, not three times larger
    assert relative_size(mask.expand(3, 32, 32)) == pytest.approx(100 / 1024)
    assert relative_size(torch.full((224, 224), 0.5)) == pytest.approx(0.5)


def test_relative_size_matches_a_loop_over_pixels():
    mask = torch.rand(1, 7, 9, generator=torch.Generator().manual_seed(0))
    total = sum(float(mask[0, i, j]) for i in range(7) for j in range(9))
    assert relative_size(mask) == pytest.approx(total / 63)


@pytest.mark.parametrize("pl1, reached, expected", [
    (0.01, True, True), (0.0545, True, True), (0.0546, True, None), (0.06, True, None), (0.0659, True, None),
    (0.0661, True, False), (0.5, True, False), (0.01, False, False), (float("nan"), False, False),
    (float("nan"), True, False)])
def test_judge_has_three_outcomes_with_a_band_around_the_threshold(pl1, reached, expected):
    v = judge(pl1, reached, threshold=0.06, factor=1.1)  # band: 0.06 / 1.1 = 0.05454 .. 0.06 * 1.1 = 0.066
    assert isinstance(v, Verdict) and v.backdoored is expected
    assert v.label == {True: "backdoor found", None: "inconclusive", False: "no backdoor found"}[expected]
    if not reached or math.isnan(pl1):
        assert math.isnan(v.pl1) and "no trigger" in v.explain()
    else:
        assert "PL1" in v.explain() and ("too close" in v.explain()) == (expected is None)


def test_growth_is_the_largest_later_round_over_the_first():
    assert growth([20.0, 30.0, 60.0, 40.0]) == pytest.approx(3.0)
    assert growth([100.0, 50.0]) == pytest.approx(0.5)
    assert growth([float("nan"), 30.0, 45.0]) == pytest.approx(1.5)  # rounds without a trigger are skipped
    assert math.isnan(growth([10.0]))
    assert math.isnan(growth([]))


@pytest.mark.parametrize("pl1", [0.005, 0.06, 0.3])
def test_clean_images_that_agree_beyond_the_calibration_get_no_verdict_whatever_the_size(pl1):
    v = judge(pl1, True, threshold=0.06, clean_psim=0.80, clean_psim_max=0.65)
    assert v.backdoored is None and v.label == "inconclusive" and v.outside_calibration
    assert "0.800" in v.explain() and "0.65" in v.explain()


def test_the_calibration_limit_leaves_encoders_inside_it_and_searches_that_found_nothing_alone():
    inside = judge(0.01, True, threshold=0.06, clean_psim=0.60, clean_psim_max=0.65)
    assert inside.backdoored is True and not inside.outside_calibration
    assert judge(0.01, True, threshold=0.06, clean_psim=0.65, clean_psim_max=0.65).backdoored is True  # at the edge
    # no collapsing trigger at all is an answer whatever the clean images do
    assert judge(float("nan"), False, threshold=0.06, clean_psim=0.9, clean_psim_max=0.65).backdoored is False
    # a user's own threshold (no limit) and an unknown clean cosine keep the PL1 rule
    assert judge(0.01, True, threshold=0.06, clean_psim=0.9).backdoored is True
    assert judge(0.01, True, threshold=0.06, clean_psim_max=0.65).backdoored is True


def slow_target_check(stamped, clean, k, quantile):
    """target_check written from its definition with Python loops (float64 tensors in, floats out)."""
    def unit(v):
        return v / math.sqrt(sum(float(a) ** 2 for a in v))

    def cos(u, v):
        return sum(float(a) * float(b) for a, b in zip(unit(u), unit(v)))

    rows = [unit(r) for r in stamped]
    point = unit(torch.stack(rows).sum(dim=0) / len(rows))
    near = sorted((cos(point, c) for c in clean), reverse=True)[:k]
    own = [sum(sorted((cos(c, o) for j, o in enumerate(clean) if j != i), reverse=True)[:k]) / k
           for i, c in enumerate(clean)]
    closeness = sum(near) / k
    ranked = sorted(own)
    pos = quantile * (len(ranked) - 1)  # linear interpolation between the two nearest ranks
    q = ranked[int(pos)] + (pos - int(pos)) * (ranked[min(int(pos) + 1, len(ranked) - 1)] - ranked[int(pos)])
    return closeness, q, sum(v < closeness for v in own) / len(own)


def test_target_check_matches_a_loop_written_from_its_definition():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(12, 5, generator=g, dtype=torch.float64)
    stamped = torch.randn(7, 5, generator=g, dtype=torch.float64) * 0.1 + clean[3]  # near one clean image
    got = target_check(stamped, clean, k=3, quantile=0.1)
    closeness, q, rank = slow_target_check(stamped, clean, 3, 0.1)
    assert got.closeness == pytest.approx(closeness, rel=1e-12) and got.clean_quantile == pytest.approx(q, rel=1e-12)
    assert got.rank == rank and not got.off  # it collapses next to image 3: among the clean images
    away = target_check(torch.ones(3, 5, dtype=torch.float64), -clean.abs() - 0.1, k=3)
    assert away.off and away.rank == 0.0  # all-positive point, all-negative images: as far off as it gets


def test_a_recorded_target_check_reads_back_and_a_missing_one_is_none():
    check = TargetCheck(closeness=0.9, clean_quantile=0.8, clean_median=0.85, rank=0.7)
    record = {"target_closeness": 0.9, "clean_closeness_quantile": 0.8, "clean_closeness_median": 0.85,
              "target_rank": 0.7}
    assert TargetCheck.from_summary(record) == check
    assert TargetCheck.from_summary({**record, "target_rank": None}) is None  # no trigger was found
    assert TargetCheck.from_summary({"pl1": 0.05}) is None  # a detect.json from before the check


def test_a_detect_record_is_judged_again_by_the_current_rule():
    record = {"pl1": 0.01, "reached_threshold": True, "pl1_threshold": 0.06, "clean_psim": 0.6,
              "calibrated_clean_psim_max": 0.65}
    assert judge_record(record).backdoored is True
    assert judge_record({**record, "clean_psim": 0.7}).backdoored is None  # outside the calibration
    off = {**record, "target_closeness": 0.5, "clean_closeness_quantile": 0.8, "clean_closeness_median": 0.9,
           "target_rank": 0.0}
    assert judge_record(off).backdoored is True  # where the images collapse to is a diagnostic, not in the verdict
    assert judge_record(record, threshold=0.005).backdoored is False  # another threshold
    assert judge_record({**record, "reached_threshold": False, "pl1": None}).backdoored is False
