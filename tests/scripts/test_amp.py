"""``--amp`` through the three command lines: outputs, loadable checkpoints, repeatability, resume guard."""
from __future__ import annotations

import json

import numpy as np
import torch

from MODELS.checkpoint import load_encoder
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


def test_resume_refuses_to_switch_precision(workspace, tmp_path):
    ws = fresh(workspace, tmp_path / "ws")
    assert run_fast("MAIN.py", SHORT_MOTH, ws).returncode == 0
    switched = run_fast("MAIN.py", SHORT_MOTH + ["--resume", "--amp"], ws)
    assert switched.returncode == 2
    assert "other settings (--amp False there, True now)" in switched.stderr and "\n" not in switched.stderr.strip()


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
