"""Kill, interrupt and resume the long-running scripts; identical runs give identical files.

A run that is SIGKILLed at an arbitrary moment, resumed, stopped with Ctrl-C (SIGINT), and resumed
again must end with byte-identical files to a run that was never interrupted (CPU, same seed); the
only exception is the wall-clock timings file. Two identical uninterrupted runs must agree byte for
byte too. The interrupted runs are real interpreters started by subprocess and hit by real signals.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.scripts.fastcli import ENV, ROOT, FastProcess, run_fast

TIMINGS = {"timings.csv", "unlearn-timings.csv"}  # wall-clock seconds: the only files allowed to differ

MOTH = ["--seed", "0", "--phase", "moth", "--dataset", "cifar10", "--model", "tiny", "--pretrained_encoder",
        "encoder.pth", "--batch_size", "8", "--epochs", "4", "--data_ratio", "0.375", "--attack_size", "8",
        "--re_steps", "6", "--re_lr", "1e-2", "--harden_lr", "1e-2", "--patience", "100", "--epsilon", "0",
        "--downstreamTask", "stl10", "--reference_label", "9", "--knn-k", "5", "--monitor_every", "2",
        "--log_dir", "logs", "--results_dir", "ckpts", "--device", "cpu"]  # 24 images / 8 = 3 rounds x 4 epochs
UNLEARN = ["--seed", "1", "--dataset", "stl10", "--model", "tiny", "--pretrained_encoder", "encoder.pth",
           "--batch_size", "10", "--epochs", "8", "--lr", "0.1", "--data_ratio", "0.5", "--portion", "0.3",
           "--beta", "3.5", "--re_mask_pattern", "trigger.npz", "--knn-k", "5", "--monitor_every", "2",
           "--downstreamTask", "stl10", "--reference_label", "9", "--log_dir", "ulogs", "--results_dir", "uckpts",
           "--device", "cpu"]
CLF = ["--dataset", "stl10", "--encoder", "encoder.pth", "--model", "tiny", "--trigger_file",
       "trigger/trigger_pt_white_21_10_ap_replace.npz", "--reference_label", "9", "--nn_epochs", "4",
       "--batch_size", "16", "--results_dir", "clf", "--device", "cpu"]


def fresh(workspace: Path, path: Path) -> Path:
    """A private copy of the tiny workspace plus an inverted trigger for unlearning."""
    for name in ("data", "trigger"):  # not the outputs other tests may have left in the shared workspace
        shutil.copytree(workspace / name, path / name)
    shutil.copy(workspace / "encoder.pth", path / "encoder.pth")
    mask = np.zeros((3, 32, 32), np.float32)
    mask[:, 21:31, 21:31] = 0.9
    np.savez(path / "trigger.npz", mask=mask, pattern=np.full((3, 32, 32), 0.95, np.float32))
    return path


def start(script: str, args: list[str], cwd: Path, real: bool = False):
    """Start a run in the background: ``real`` starts a fresh interpreter as a user does (same
    environment as the fast runner's); otherwise a child of the warm zygote, which saves the
    3-second start-up and is hit by the same signals."""
    if not real:
        return FastProcess(script, args, cwd)
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=cwd, env=dict(os.environ, **ENV),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {path.name} appeared:\n"
                        f"{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.002)


def outputs(root: Path, dirs: list[str]) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for d in dirs for p in sorted((root / d).rglob("*"))
            if p.is_file() and p.name not in TIMINGS}


def assert_same_files(a: Path, b: Path, dirs: list[str]) -> int:
    fa, fb = outputs(a, dirs), outputs(b, dirs)
    assert sorted(fa) == sorted(fb)
    different = [name for name in fa if fa[name] != fb[name]]
    assert not different, f"files differ: {different}"
    return len(fa)


def test_moth_survives_sigkill_and_sigint_with_identical_results(workspace, tmp_path):
    a, b = fresh(workspace, tmp_path / "a"), fresh(workspace, tmp_path / "b")
    done = run_fast("MAIN.py", MOTH, a)
    assert done.returncode == 0, done.stderr
    assert len(list((a / "logs").glob("mask-pattern-[0-9]*.npz"))) == 12

    # 1. SIGKILL while round 1 is under way (its trigger file is written, its state is not yet saved)
    proc = start("MAIN.py", MOTH, b, real=True)
    wait_for(b / "logs" / "mask-pattern-1.npz", proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not list((b / "ckpts").glob("Harden_model_*.pth"))

    # 2. resume; Ctrl-C during a later round: that round finishes, is saved, and the run exits 130
    proc = start("MAIN.py", MOTH + ["--resume"], b)
    wait_for(b / "logs" / "mask-pattern-5.npz", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resuming from ckpts/moth_state.pth" in out
    assert "Ctrl-C (SIGINT): finishing the current round" in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("interrupted: Ctrl-C (SIGINT): stopped after round ") and last.endswith(
        "state saved to ckpts/moth_state.pth; resume with the same command plus --resume")
    stopped_after = int(last.split("stopped after round ")[1].split(";")[0])
    assert 5 <= stopped_after < 11
    state = torch.load(b / "ckpts" / "moth_state.pth", weights_only=True)
    assert state["run_state"]["round"] == stopped_after + 1 and not state["run_state"]["stopped"]

    # 3. resume to the end: every file equals the uninterrupted run's, byte for byte
    final = run_fast("MAIN.py", MOTH + ["--resume"], b)
    assert final.returncode == 0, final.stderr
    assert f"round {stopped_after + 1}" in final.stdout
    assert not list(b.rglob(".*.tmp")), "a temporary file of a killed write was left behind"
    assert assert_same_files(a, b, ["logs", "ckpts"]) >= 30

    # 4. resuming a finished run changes nothing
    again = run_fast("MAIN.py", MOTH + ["--resume"], b)
    assert again.returncode == 0, again.stderr
    assert_same_files(a, b, ["logs", "ckpts"])


def test_unlearn_survives_sigkill_sigint_and_a_double_ctrl_c(workspace, tmp_path):
    a, b = fresh(workspace, tmp_path / "a"), fresh(workspace, tmp_path / "b")
    done = run_fast("Unlearn-trigger.py", UNLEARN, a)
    assert done.returncode == 0, done.stderr
    ckpt = "uckpts/Harden_Unlearn_model_{}.pth"

    # 1. SIGKILL after the first epoch's checkpoint
    proc = start("Unlearn-trigger.py", UNLEARN, b)
    wait_for(b / ckpt.format(1), proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (b / ckpt.format(8)).exists()

    # 2. resume, then Ctrl-C: the current epoch finishes and is checkpointed, exit 130
    proc = start("Unlearn-trigger.py", UNLEARN + ["--resume"], b, real=True)
    wait_for(b / ckpt.format(3), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resuming from uckpts/Harden_Unlearn_model_" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: Ctrl-C (SIGINT): stopped after epoch ") and "--resume" in last
    epoch = int(last.split("stopped after epoch ")[1].split(";")[0])
    assert 3 <= epoch < 8 and (b / ckpt.format(epoch)).is_file() and not (b / ckpt.format(epoch + 1)).exists()

    # 3. resume, then Ctrl-C twice: the second one aborts at once, files stay whole
    proc = start("Unlearn-trigger.py", UNLEARN + ["--resume"], b)
    wait_for(b / ckpt.format(epoch + 1), proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the second Ctrl-C arrived")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: ") and "Traceback" not in err
    assert not list(b.rglob(".*.tmp"))

    # 4. resume to the end: identical to the uninterrupted run
    final = run_fast("Unlearn-trigger.py", UNLEARN + ["--resume"], b)
    assert final.returncode == 0, final.stderr
    assert assert_same_files(a, b, ["ulogs", "uckpts"]) >= 12


def test_identical_runs_write_identical_files(workspace, tmp_path):
    """Same seed, same flags, CPU: every output file of every stage is byte-identical (timings aside)."""
    a, b = fresh(workspace, tmp_path / "a"), fresh(workspace, tmp_path / "b")
    moth = [x if x != "4" else "1" for x in MOTH]  # one epoch is enough here
    for ws in (a, b):
        nc = [x if x != "moth" else "nc" for x in moth] + ["--log_dir", "nc"]
        for script, args in (("MAIN.py", moth), ("MAIN.py", nc),
                             ("Unlearn-trigger.py", [x if x != "8" else "2" for x in UNLEARN]),
                             ("training_downstream_classifier.py", CLF)):
            proc = run_fast(script, args, ws)
            assert proc.returncode == 0, proc.stderr
    assert assert_same_files(a, b, ["logs", "ckpts", "nc", "ulogs", "uckpts", "clf"]) >= 20
    for name in ("logs/metrics.csv", "logs/re_loss.csv", "ulogs/unlearn-metrics.csv", "clf/downstream-metrics.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_resume_refuses_other_settings_and_reuses_a_finished_classifier(workspace, tmp_path):
    ws = fresh(workspace, tmp_path / "ws")
    short = [x if x != "4" else "1" for x in MOTH]
    assert run_fast("MAIN.py", short, ws).returncode == 0
    other = run_fast("MAIN.py", short + ["--resume", "--harden_lr", "0.5"], ws)
    assert other.returncode == 2
    assert other.stderr.startswith("error: --resume ckpts/moth_state.pth: was written by a run with other settings "
                                   "(--harden_lr 0.01 there, 0.5 now)")
    # --resume with the state elsewhere: refused, the earlier outputs are not touched
    elsewhere = run_fast("MAIN.py", short + ["--resume", "--results_dir", "other"], ws)
    assert elsewhere.returncode == 2 and "there is no other/moth_state.pth to resume from" in elsewhere.stderr
    # a longer --epochs is allowed: the run continues where it ended
    longer = run_fast("MAIN.py", [x if x != "4" else "2" for x in MOTH] + ["--resume"], ws)
    assert longer.returncode == 0, longer.stderr
    assert len(list((ws / "logs").glob("mask-pattern-[0-9]*.npz"))) == 6
    # a corrupt state file is named
    (ws / "ckpts" / "moth_state.pth").write_bytes(b"garbage")
    bad = run_fast("MAIN.py", short + ["--resume"], ws)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --resume ckpts/moth_state.pth: not a PyTorch")
    # unlearning: checkpoints from another program cannot be resumed
    (ws / "uckpts").mkdir()
    torch.save({"state_dict": torch.load(ws / "encoder.pth", weights_only=True)["state_dict"]},
               ws / "uckpts" / "Harden_Unlearn_model_1.pth")
    foreign = run_fast("Unlearn-trigger.py", UNLEARN + ["--resume"], ws)
    assert foreign.returncode == 2 and "lacks the resume state" in foreign.stderr
    # the downstream classifier: --resume reuses a finished run, a changed flag trains again
    first = run_fast("training_downstream_classifier.py", CLF, ws)
    assert first.returncode == 0, first.stderr
    reused = run_fast("training_downstream_classifier.py", CLF + ["--resume"], ws)
    assert reused.returncode == 0 and "reusing it" in reused.stdout and '"metric"' not in reused.stdout
    retrained = run_fast("training_downstream_classifier.py", CLF + ["--resume", "--lr", "1e-3"], ws)
    assert retrained.returncode == 0 and "training from the start" in retrained.stdout


def test_ctrl_c_stops_the_downstream_classifier_after_its_epoch(workspace, tmp_path):
    ws = fresh(workspace, tmp_path / "ws")
    proc = run_fast("training_downstream_classifier.py", CLF, ws,
                    inject="tests.scripts.faults:ctrl_c_in_downstream_epoch_2")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted: Ctrl-C (SIGINT): stopped after epoch 2 of 4")
    assert not (ws / "clf" / "downstream-metrics.json").exists()
    again = run_fast("training_downstream_classifier.py", CLF + ["--resume"], ws)
    assert again.returncode == 0 and (ws / "clf" / "clf_4.pth").is_file()
