"""``--amp`` through the three command lines: outputs, loadable checkpoints, repeatability, resume guard."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MODELS.checkpoint import load_encoder
from MODELS.precision import FORCE_NO_BF16_ENV, cpu_has_native_bf16
from tests.scripts.fastcli import run_fast
from tests.scripts.test_resume import CLF, MOTH, UNLEARN, fresh

SHORT_MOTH = [x if x != "4" else "1" for x in MOTH]  # one epoch: 3 rounds


def run_all(ws, extra: list[str]) -> None:
    for script, args in (("MAIN.py", SHORT_MOTH), ("Unlearn-trigger.py", UNLEARN), ("training_downstream_classifier.py",
                                                                                      CLF)):
        proc = run_fast(script, args + extra, ws)
        assert proc.returncode == 0, f"{script}: {proc.stderr[-2000:]}"
        if extra:
            assert "--amp: encoder forward/backward in bfloat16 autocast" in proc.stdout


def test_amp_runs_the_pipeline_and_its_checkpoints_load_as_usual(workspace, tmp_path):
    ws = fresh(workspace, tmp_path / "ws")
    run_all(ws, ["--amp"])
    assert "amp: True" in (ws / "logs" / "setting.txt").read_text()
    with np.load(ws / "logs" / "mask-pattern-best.npz") as z:
        assert z["mask"].dtype == np.float32 and 0 <= z["mask"].min() and z["mask"].max() <= 1
    for path in (ws / "ckpts" / "Harden_model_1.pth", ws / "uckpts" / "Harden_Unlearn_model_8.pth"):
        model = load_encoder(path, "tiny", "cpu")  # plain float32 encoders: channels_last is only a layout
        assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    summary = json.loads((ws / "clf" / "downstream-metrics.json").read_text())
    assert summary["config"]["amp"] is True and 0 <= summary["acc"] <= 100


def test_amp_is_repeatable_on_cpu_and_differs_from_float32(workspace, tmp_path):
    runs = {}
    for name, extra in (("a", ["--amp"]), ("b", ["--amp"]), ("exact", [])):
        ws = fresh(workspace, tmp_path / name)
        proc = run_fast("MAIN.py", SHORT_MOTH + extra, ws)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = (ws / "logs" / "metrics.csv").read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["exact"]  # autocast really ran: bf16 numbers are not float32's


NO_BF16_WARNING = "warning: --amp: this CPU has no native bfloat16"


def split_stderr(stderr: str) -> tuple[list[str], str]:
    """A refused command's stderr: ``warning:`` lines first, then exactly one ``error:`` line, nothing else."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    assert all(line.startswith("warning: ") for line in lines[:-1]), stderr
    return lines[:-1], lines[-1]


@pytest.mark.parametrize("force_no_bf16", [False, True])
def test_resume_refuses_to_switch_precision(workspace, tmp_path, force_no_bf16):
    ws = fresh(workspace, tmp_path / "ws")
    assert run_fast("MAIN.py", SHORT_MOTH, ws).returncode == 0
    env = {FORCE_NO_BF16_ENV: "1"} if force_no_bf16 else None
    switched = run_fast("MAIN.py", SHORT_MOTH + ["--resume", "--amp"], ws, env=env)
    assert switched.returncode == 2
    warnings, error = split_stderr(switched.stderr)
    assert "other settings (--amp False there, True now)" in error
    # A CPU without native bf16 (real, or forced) warns once before the error; one with it does not.
    emulated = force_no_bf16 or not cpu_has_native_bf16()
    assert [w.startswith(NO_BF16_WARNING) for w in warnings] == ([True] if emulated else [])


def test_amp_on_a_cpu_without_native_bf16_warns_and_runs(workspace, tmp_path):
    ws = fresh(workspace, tmp_path / "ws")
    proc = run_fast("training_downstream_classifier.py", CLF + ["--amp"], ws, env={FORCE_NO_BF16_ENV: "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("warning:")] == [
        line for line in proc.stderr.splitlines() if line.startswith(NO_BF16_WARNING)]
    assert proc.stderr.count(NO_BF16_WARNING) == 1
    assert "--amp: encoder forward/backward in bfloat16 autocast" in proc.stdout
    summary = json.loads((ws / "clf" / "downstream-metrics.json").read_text())
    assert summary["config"]["amp"] is True and 0 <= summary["acc"] <= 100
    if cpu_has_native_bf16():  # the variable is what made the difference: unset, no warning here
        plain = run_fast("training_downstream_classifier.py", CLF + ["--amp", "--overwrite"], ws)
        assert plain.returncode == 0 and NO_BF16_WARNING not in plain.stderr


def test_a_state_written_before_the_amp_flag_existed_resumes_as_float32(workspace, tmp_path):
    ws = fresh(workspace, tmp_path / "ws")
    longer = [x if x != "4" else "2" for x in MOTH]
    assert run_fast("MAIN.py", SHORT_MOTH, ws).returncode == 0
    state_path = ws / "ckpts" / "moth_state.pth"
    state = torch.load(state_path, weights_only=True)
    del state["config"]["amp"]  # as written by the previous release
    torch.save(state, state_path)
    assert run_fast("MAIN.py", longer + ["--resume", "--amp"], ws).returncode == 2
    resumed = run_fast("MAIN.py", longer + ["--resume"], ws)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(list((ws / "logs").glob("mask-pattern-[0-9]*.npz"))) == 6
