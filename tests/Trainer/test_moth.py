"""The moth run's own duties beyond the early stop: one-time warnings about the threshold."""
from INVERSION.inversion import InversionConfig
from Trainer.moth import check_threshold


def test_threshold_warnings_come_once_each_with_the_measured_value(capsys):
    warned = []
    check_threshold(InversionConfig(threshold=0.9), clean_psim=0.95, gt_psim=0.5, warned=warned)
    err = capsys.readouterr().err
    assert "clean images' own psim is already 0.9500 >= --similarity_threshold 0.9" in err
    assert "use --similarity_threshold auto (here 0.9650)" in err  # 0.95 + 0.8 * (31/32 - 0.95)
    assert "or --similarity_threshold auto --psim centred" in err  # the scale-free choice is named too
    assert "reach only psim 0.5000 < --similarity_threshold 0.9" in err
    check_threshold(InversionConfig(threshold=0.9), clean_psim=0.97, gt_psim=0.4, warned=warned)
    assert capsys.readouterr().err == ""


def test_a_threshold_just_above_the_clean_psim_warns_and_names_the_auto_value(capsys):
    warned = []
    check_threshold(InversionConfig(threshold=0.9), clean_psim=0.89996, gt_psim=0.93, warned=warned)
    err = capsys.readouterr().err
    assert "close to --similarity_threshold 0.9" in err and "auto (here 0.9550)" in err and "0.89996" in err
    assert "reach only" not in err


def test_a_threshold_no_chunk_can_reach_says_exactly_that(capsys):
    check_threshold(InversionConfig(threshold=0.9), clean_psim=0.3, gt_psim=float("nan"), warned=[])
    assert capsys.readouterr().err == ""  # 0.9 < 31/32
    check_threshold(InversionConfig(threshold=0.97), clean_psim=0.3, gt_psim=float("nan"), warned=[])
    err = capsys.readouterr().err
    assert "can never be reached" in err and "at most 0.96875" in err and "--re_steps" in err


def test_no_warning_when_the_threshold_separates_clean_from_stamped(capsys):
    warned = []
    check_threshold(InversionConfig(threshold=0.9), clean_psim=0.3, gt_psim=0.95, warned=warned)
    # no ground truth: nothing to say
    check_threshold(InversionConfig(threshold=0.9), clean_psim=0.3, gt_psim=float("nan"), warned=warned)
    # an auto threshold is never near the clean psim by construction
    check_threshold(InversionConfig(threshold=0.93), clean_psim=0.92, gt_psim=0.95, warned=[], auto=True)
    assert capsys.readouterr().err == ""
