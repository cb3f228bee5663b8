"""bench/gpu_check.py, the check prepared for a GPU: its comparison rules, its report, and (slow) its whole
``--device cpu --quick`` path, run where matplotlib cannot be imported (the GPU host has none)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gc():
    return load_bench("gpu_check", "gpu_check_tool")


def test_differences_are_relative_or_in_points_and_lists_must_match_in_length(gc):
    assert gc.difference("rel", 2.0, 2.1) == pytest.approx(0.1 / 2.1)
    assert gc.difference("points", 50.0, 47.0) == 3.0
    assert gc.difference("rel", [1.0, 4.0], [1.0, 5.0]) == pytest.approx(0.2)
    assert gc.difference("rel", [1.0], [1.0, 1.0]) == math.inf
    assert gc.difference("rel", float("nan"), float("nan")) == 0.0  # "not measured" on both sides
    assert gc.difference("rel", float("nan"), 1.0) == math.inf


def test_a_stage_comparison_applies_each_kind_of_rule(gc, tmp_path, monkeypatch):
    runs = {}
    for name, loss, verdict, steps in (("ref", 1.0, "a", 3), ("dev", 1.2, "b", 3), ("seed1", 1.1, "a", 3)):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "m.json").write_text(json.dumps({"loss": loss, "verdict": verdict, "steps": steps}))
    value = lambda key: (lambda d: json.loads((d / "m.json").read_text())[key])  # noqa: E731
    monkeypatch.setitem(gc.CHECKS, "fake", [("steps", "exact", value("steps")), ("verdict", "decision", value("verdict")),
                                            ("loss", "rel", value("loss")), ("loss", "rel~", value("loss")),
                                            ("missing", "rel", value("nope"))])
    rows = gc.compare_stage("fake", runs["ref"], runs["dev"], runs["seed1"])
    assert [r["verdict"] for r in rows] == ["ok", "decision differs", "DIFF", "ok", "FAIL"]
    assert rows[3]["tol"] == pytest.approx(3 * 0.1 / 1.1)  # 3x the CPU seed gap, above the 0.05 floor


def test_the_report_is_valid_json_and_names_skipped_parts(gc, tmp_path):
    report = gc.Report(device="cpu", quick=True, environment={"torch": "x"})
    report.parts = {"stages": "skipped (budget)", "bench": "ran in 1 s"}
    report.bench_rows = [{"model": "tiny", "precision": "float32", "stage": "inversion step", "ours_s": 1.0,
                          "floor_s": 0.5, "ratio": 2.0, "repeats": 1, "peak_mb": None, "note": ""},
                         {"model": "tiny", "precision": "amp", "stage": "inversion step --amp", "ours_s": 0.5,
                          "floor_s": 1.0, "ratio": 0.5, "repeats": 1, "peak_mb": float("nan"),
                          "note": "floor = ours in float32"}]
    json.dumps(report.data(), allow_nan=False)
    text = report.text()
    assert "stages skipped (budget)" in text and "2. bench.py rows" in text and "3. The recipe" not in text
    assert [row[:3] for row in gc.amp_speedups(report.bench_rows)] == [("tiny", "inversion step", "0.50")]


def test_bad_flags_and_a_missing_gpu_end_with_one_line(gc):
    with pytest.raises(SystemExit):
        gc.parse_args(["--parts", "stages,nope"])
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--parts", "bench"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0
    assert "CUDA is not available" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_quick_cpu_path_runs_every_part_without_matplotlib(tmp_path):
    """The whole script as the GPU host will run it, on the CPU (a few minutes on 2 busy cores)."""
    blocker = tmp_path / "no-matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed on the GPU host')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker.parent), str(ROOT)]))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--results", str(tmp_path / "results")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "results" / "gpu-check-cpu-quick.json").read_text())
    assert all(v.startswith("ran") for v in data["parts"].values()), data["parts"]
    assert set(data["parts"]) == {"stages", "bench", "recipe", "torchrun"}
    verdicts = [r["verdict"] for r in data["stage_rows"]]
    assert {r["stage"] for r in data["stage_rows"]} >= {"pretrain", "badencoder", "moth", "nc", "detect", "unlearn",
                                                        "downstream"}
    assert set(verdicts) == {"ok"}  # on the CPU both runs are the same computation
    assert not any("error" in r for r in data["bench_rows"]) and len(data["bench_rows"]) == 24
    assert not data["recipe_error"] and len(data["recipe_times"]) == 8
    assert [r["verdict"] for r in data["torchrun_rows"]] == ["ok", "ok"]
    assert "total wall time" in proc.stdout
