"""The demo report's threshold line: it says when the clean images already stand near the threshold."""
from DEMO.report import _threshold_lines


def test_a_threshold_near_the_clean_psim_recommends_the_scale_free_setting():
    near = _threshold_lines([{"clean_psim": "0.89", "threshold": "0.9"}])
    assert len(near) == 1 and "0.890" in near[0] and "--similarity_threshold auto --psim centred" in near[0]
    far = _threshold_lines([{"clean_psim": "0.61", "threshold": "0.9"}])
    assert len(far) == 1 and "real collapse" in far[0] and "centred" not in far[0]


def test_no_line_without_the_measured_values():
    assert _threshold_lines([]) == []
    assert _threshold_lines([{"clean_psim": "nan", "threshold": "0.9"}]) == []
    assert _threshold_lines([{"threshold": "0.9"}]) == []
