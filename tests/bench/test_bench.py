"""bench/bench.py as a tool: what it plans to measure, and a tiny real run that writes its table and CSV.
(Times are never asserted.)"""
import csv
import math
import sys
from pathlib import Path

import pytest

from tests.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench", "bench_tool")


def test_quick_plan_covers_every_stage_of_both_models_and_the_amp_rows(bench):
    plan = dict(bench.plan(bench.parse_args([])))
    assert set(plan) == {"resnet18_small", "resnet18"}
    assert set(bench.BASE_STAGES) <= set(plan["resnet18"])  # the resnet18 unlearning epoch included
    assert plan["resnet18_small"]["inversion"] == (32, 64, 128)
    assert plan["resnet18_small"]["unlearn"] == (0.01, 0.02, 0.05)
    assert {"amp-inversion", "amp-unlearn", "amp-features", "amp-distance"} <= set(plan["resnet18_small"])
    assert plan["resnet18"]["state-save"] == (0,)  # no size axis: --data-ratios leaves it alone
    picked = dict(bench.plan(bench.parse_args(["--model", "resnet18", "--stages", "amp-unlearn,inversion",
                                                 "--attack-sizes", "8", "--data-ratios", "0.002"])))
    assert picked == {"resnet18": {"amp-unlearn": (0.002,), "inversion": (8,)}}
    sizeless = dict(bench.plan(bench.parse_args(["--model", "resnet18", "--stages", "state-save",
                                                   "--data-ratios", "0.002"])))
    assert sizeless == {"resnet18": {"state-save": (0,)}}


def test_a_tiny_run_prints_and_writes_one_row_per_measurement(bench, tmp_path, capsys):
    rows = bench.main(["--model", "resnet18_small", "--stages", "inversion,amp-inversion", "--attack-sizes", "4",
                       "--repeats", "1", "--budget", "0.01", "--steps", "1", "--idle-wait", "0", "--device", "cpu",
                       "--out", str(tmp_path / "b.csv"), "--table", str(tmp_path / "t.txt")])
    assert [r.stage for r in rows] == ["inversion step", "inversion step --amp"]
    assert all(r.ours_s > 0 and r.floor_s > 0 and math.isfinite(r.ratio) for r in rows)
    assert rows[1].note == "floor = ours in float32"
    table = capsys.readouterr().out
    assert table == (tmp_path / "t.txt").read_text() and "inversion step --amp" in table
    with open(tmp_path / "b.csv") as handle:
        assert [r["stage"] for r in csv.DictReader(handle)] == ["inversion step", "inversion step --amp"]


def test_a_224_tower_plans_its_own_rows(bench):
    for name in ("clip_rn50", "clip_vit_b32", "clip_vit_b16", "clip_vit_tiny"):
        plan = dict(bench.plan(bench.parse_args(["--model", name])))
        assert set(plan) == {name} and set(plan[name]) == set(bench.STAGES_224)
    plan = dict(bench.plan(bench.parse_args(["--model", "imagenet_tiny", "--stages", "inversion-micro",
                                             "--sizes-224", "4,8"])))
    assert plan == {"imagenet_tiny": {"inversion-micro": (4, 8)}}


@pytest.mark.parametrize("script, args, flag", [
    ("bench.py", ["--repeats", "-1"], "--repeats"), ("bench.py", ["--attack-sizes", "abc"], "--attack-sizes"),
    ("bench.py", ["--attack-sizes", "0"], "--attack-sizes"), ("bench.py", ["--steps", "0"], "--steps"),
    ("bench.py", ["--threads", "-2"], "--threads"), ("bench.py", ["--micro-batch", "-1"], "--micro-batch"),
    ("scaling.py", ["--device", "mps"], "--device"), ("scaling.py", ["--threads", "-1"], "--threads"),
    ("detect.py", ["--threshold", "-0.1"], "--threshold")])
def test_bad_bench_flags_are_one_line_errors_before_any_work(script, args, flag):
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith(f"error: {flag}")
