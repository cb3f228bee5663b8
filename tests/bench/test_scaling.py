"""bench/scaling.py as a tool: its tables' rows (times are never asserted)."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scaling():
    return load_bench("scaling", "bench_scaling")


def test_the_baseline_comes_first(scaling):
    assert scaling.parse_args([]).procs == [1, 2]
    from UTILS.errors import UserError

    with pytest.raises(UserError, match="--procs must start with 1"):
        scaling.parse_args(["--procs", "2,4"])


def test_round_table_names_every_part_and_the_bound(scaling):
    args = scaling.parse_args(["--model", "tiny", "--re_steps", "2", "--attack_size", "4", "--distance_images", "8"])
    text = scaling.round_shares(args)
    for part in ("2 inversion steps (attack_size 4)", "hardening step", "early-stop distance (8 images)",
                 "Amdahl bound with 2 processes", "half the attack set (2 images)"):
        assert part in text


@pytest.mark.slow
def test_a_tiny_scaling_run_prints_every_row(tmp_path):
    out = tmp_path / "scaling.txt"
    subprocess.run([sys.executable, str(ROOT / "bench" / "scaling.py"), "--model", "tiny", "--per_process", "4",
                    "--warmup", "0", "--steps", "1", "--skip_round", "--out", str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert [r.split("|")[1].strip() for r in rows] == ["1 data-parallel", "2 data-parallel",
                                                      "2 data-parallel, per-rank BatchNorm", "2 unrelated"]
