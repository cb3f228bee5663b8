import math

import pytest
import torch

from INVERSION.detect import Verdict, growth, judge, relative_size


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
