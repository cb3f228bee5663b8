"""MAIN.py --phase detect through its command line: exit code, files, flags."""
import json

import pytest

from INVERSION.detect import TargetCheck, judge_record
from Trainer.configs import CALIBRATED_CLEAN_PSIM_MAX, DETECT_PL1_BY_KIND, DETECT_RATIO_BY_KIND
from INVERSION.relative import DETECT_SHARE, relative_threshold
from tests.scripts.conftest import run_cli


def test_main_phase_detect_through_the_command_line(workspace):
    args = ["--phase", "detect", "--dataset", "cifar10", "--model", "tiny", "--pretrained_encoder", "encoder.pth",
            "--encoder_usage_info", "cifar10", "--data_ratio", "1.0", "--re_steps", "3", "--re_steps_cap", "3", "--log_dir", "logs-detect",
            "--results_dir", "ckpts-detect", "--monitor_every", "0", "--device", "cpu"]
    proc = run_cli("MAIN.py", args, workspace)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verdict: " in proc.stdout + proc.stderr
    summary = json.loads((workspace / "logs-detect" / "detect.json").read_text())
    expected = judge_record(summary)  # the recorded measurements, judged again, give the recorded verdict
    assert summary["backdoored"] == expected.backdoored and summary["verdict"] == expected.label
    check = TargetCheck.from_summary(summary)  # the diagnostic, recorded when a trigger was found
    assert (check is None) is (not summary["reached_threshold"])
    assert summary["collapse_off_clean"] == (check.off if check else None)
    assert summary["calibrated_clean_psim_max"] == CALIBRATED_CLEAN_PSIM_MAX  # the default threshold: limited
    assert summary["outside_calibration"] == (summary["clean_psim"] > CALIBRATED_CLEAN_PSIM_MAX)
    assert summary["calibrated"] is False and "--re_steps 3 (calibrated: 300)" in summary["calibration_note"]
    assert summary["psim_kind"] == "pairs" and summary["psim_threshold_rule"] == "auto"
    assert summary["psim_threshold"] == pytest.approx(relative_threshold(summary["clean_psim"], 1.0, DETECT_SHARE),
                                                      rel=1e-5)  # the same chunks in the same order: rounding only
    assert summary["image_pixels"] == 1024
    assert summary["gt_pl1"] == pytest.approx(100 / 1024)  # the default trigger file of the workspace
    assert (workspace / "logs-detect" / "detect.png").is_file()
    assert (workspace / "logs-detect" / "setting-detect.txt").is_file()
    again = run_cli("MAIN.py", args, workspace)  # an earlier verdict is not silently replaced
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize("flag, value", [("--detect_psim", "1.5"), ("--detect_pl1", "0"), ("--phase", "detekt"),
                                         ("--detect_psim_kind", "raw")])
def test_bad_detect_flags_are_one_line_errors(workspace, flag, value):
    proc = run_cli("MAIN.py", ["--phase", "detect", "--pretrained_encoder", "encoder.pth", flag, value,
                               "--log_dir", "logs-bad", "--device", "cpu"], workspace)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and flag in proc.stderr


@pytest.mark.parametrize("pl1", [None, "0.041", "0.05"])
def test_the_centred_kind_has_its_own_threshold_and_no_clean_cosine_limit(workspace, pl1):
    logs = f"logs-centred-{pl1}"
    args = ["--phase", "detect", "--detect_psim_kind", "centred", "--model", "tiny", "--pretrained_encoder",
            "encoder.pth", "--data_ratio", "1.0", "--re_steps", "3", "--re_steps_cap", "3", "--log_dir", logs,
            "--results_dir", logs, "--monitor_every", "0", "--device", "cpu"]
    proc = run_cli("MAIN.py", args + (["--detect_pl1", pl1] if pl1 else []), workspace)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((workspace / logs / "detect.json").read_text())
    assert summary["psim_kind"] == "centred" and abs(summary["clean_psim"]) < 0.2  # centred: about 0
    assert summary["pl1_threshold"] == (float(pl1) if pl1 else DETECT_PL1_BY_KIND["centred"])
    # the raw cosine's limit does not apply; a threshold of one's own drops the note on the search's flags
    assert summary["calibrated_clean_psim_max"] is None and summary["outside_calibration"] is False
    assert ("--re_steps 3 (calibrated: 300)" in (summary["calibration_note"] or "")) is (pl1 != "0.05")


def test_an_encoder_judged_against_itself_as_the_reference_is_not_called_backdoored(workspace):
    args = ["--phase", "detect", "--model", "tiny", "--pretrained_encoder", "encoder.pth", "--detect_reference",
            "encoder.pth", "--data_ratio", "1.0", "--re_steps", "3", "--re_steps_cap", "3", "--log_dir", "logs-ref",
            "--results_dir", "logs-ref", "--monitor_every", "0", "--device", "cpu"]
    proc = run_cli("MAIN.py", args, workspace)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((workspace / "logs-ref" / "detect.json").read_text())
    assert summary["ratio_threshold"] == DETECT_RATIO_BY_KIND["pairs"] and summary["reference_pl1"] > 0
    assert summary["backdoored"] is False  # the same search on the same encoder: the ratio is 1, or nothing collapsed
    assert summary["pl1_ratio"] is None or summary["pl1_ratio"] == pytest.approx(1.0)
    assert (workspace / "logs-ref" / "detect-reference.png").is_file()
    missing = run_cli("MAIN.py", args[:7] + ["no-such.pth"] + args[8:] + ["--overwrite"], workspace)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "--detect_reference" in missing.stderr
