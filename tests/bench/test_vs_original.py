"""bench/vs_original.py without the user's snapshot of the original: one line, exit 0; a wrong folder: one
error line, exit 2; its table; the original's flags as our scripts read them; our side's children on a tiny
workspace. (The comparison itself needs the original's code, which the project does not hold; times are
never asserted.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench import load_bench
from tests.scripts.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--moth-rounds", "2", "--moth-steps", "3", "--unlearn-images", "64", "--unlearn-batch", "32"]


@pytest.fixture(scope="module")
def vs():
    return load_bench("vs_original", "bench_vs_original")


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "vs_original.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_without_the_original_it_skips_in_one_line():
    proc = run()
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("vs_original: skipped")


def test_a_folder_that_is_not_the_original_is_refused_in_one_line(tmp_path):
    proc = run("--orig", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and f"--orig {tmp_path}" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unknown_part_is_refused_in_one_line(vs):
    with pytest.raises(SystemExit, match="--parts round,warp: expected some of round, moth, unlearn"):
        vs.parse_parts("round,warp")
    assert vs.parse_parts("unlearn, moth") == ["unlearn", "moth"]


def test_the_table_gives_each_part_its_ratio_and_says_when_the_work_differs(vs):
    args = vs.build_parser().parse_args(TINY + ["--steps", "5"])
    moth = vs.summarise("moth", {"ours": [{"seconds": 2.0, "steps": 6}, {"seconds": 4.0, "steps": 6},
                                          {"seconds": 3.0, "steps": 6}],
                                 "original": [{"seconds": 6.0, "steps": 6}, {"seconds": 5.0, "steps": 6},
                                              {"seconds": 9.0, "steps": 6}]}, args)
    unlearn = vs.summarise("unlearn", {"ours": [{"seconds": 1.0, "batches": 2}],
                                       "original": [{"seconds": 4.0, "batches": 3}]}, args)
    assert moth["ratio_median"] == 3.0 / 6.0 and moth["ratio_min"] == 2.0 / 5.0 and moth["same_amount"]
    assert unlearn["ratio_median"] == 0.25 and not unlearn["same_amount"]
    lines = vs.table("header", {"moth": moth, "unlearn": unlearn}, ["a note"]).splitlines()
    assert lines[0] == "header" and lines[-1] == "a note" and len(lines) == 6
    assert lines[3].split()[:3] == ["moth", "loop", "(MAIN.py)"]
    assert "2 rounds x 3 steps" in lines[3]
    assert lines[3].split()[-11:] == "3.00 6.00 0.50 0.40 3 yes (6 steps ours, 6 original)".split()
    assert lines[4].split()[-11:] == "1.00 4.00 0.25 0.25 1 NO (2 batches ours, 3 original)".split()


@pytest.mark.parametrize("part, script", [("moth", "MAIN.py"), ("unlearn", "Unlearn-trigger.py")])
def test_our_scripts_read_every_flag_the_original_gets(vs, part, script, tmp_path):
    """Both sides run with the original's flags; ours adds its own only (device, data folder, cap, ASR set)."""
    args = vs.build_parser().parse_args(TINY + ["--work", str(tmp_path)])
    theirs = vs.script_flags(part, args, tmp_path, ours=False)
    ours = vs.script_flags(part, args, tmp_path, ours=True)
    assert ours[:len(theirs)] == theirs
    module = load_script(script)
    parsed = module.build_parser().parse_args(theirs)
    assert parsed.epochs == 1 and parsed.data_ratio == 1.0 and parsed.log_dir == str(tmp_path / "logs")


@pytest.mark.slow
def test_our_side_runs_the_moth_loop_and_the_unlearning_epoch_on_a_tiny_workspace(vs, tmp_path):
    """What the parent runs for our side, on the parent's own workspace: every round reaches the low threshold
    in exactly its steps (the tiny encoder's clean psim is far above 0.5), every batch is trained."""
    args = vs.build_parser().parse_args(TINY)
    vs.write_workspace(args, tmp_path)
    results = {}
    for part in ("moth", "unlearn"):
        log = tmp_path / f"log-{part}"
        log.mkdir()
        results[part] = vs.run_side("ours", part, args, tmp_path, log)
    assert results["moth"]["rounds"] == 2 and results["moth"]["steps"] == 6 and results["moth"]["reached"]
    assert results["unlearn"]["batches"] == 2
    assert all(r["seconds"] > 0 for r in results.values())
    assert json.loads((tmp_path / "log-moth" / "logs" / "metrics.json").read_text())["rounds"] == 2
