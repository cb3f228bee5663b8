"""The third round of hostile input (issue 21), through the real entry scripts: links at the lock path,
look-alike files in an output folder, resume from changed inputs, mixed demo outputs, JSON without NaN and
the smaller cases. Each case is also a row or paragraph of docs/ROBUSTNESS.md.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts.fastcli import ENV, ROOT, run_fast
from tests.scripts.test_bad_input import assert_one_error_line, flags, main_args
from tests.scripts.test_resume import fresh

M, U, D = "MAIN.py", "Unlearn-trigger.py", "training_downstream_classifier.py"


@pytest.fixture
def ws(workspace, tmp_path):
    return fresh(workspace, tmp_path / "ws")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1. the lock file is never written through a link --------------------------------------------------------


@pytest.mark.parametrize("link", ["encoder", "other", "dangling", "hard"])
def test_a_link_at_the_lock_path_is_refused_and_its_target_untouched(ws, link):
    out = ws / "out" / "x"
    out.mkdir(parents=True)
    other = ws / "notes.txt"
    other.write_text("my notes\n")
    lock = out / ".receive.lock"
    target = {"encoder": ws / "encoder.pth", "other": other, "dangling": ws / "elsewhere" / "new.txt",
              "hard": other}[link]
    if link == "hard":
        os.link(target, lock)
    else:
        lock.symlink_to(target)
    before = {p: digest(p) for p in (ws / "encoder.pth", other)}
    proc = run_fast(M, main_args("x") + ["--seed", "0"], ws)
    what = "is a hard link" if link == "hard" else "is a symbolic link"
    assert_one_error_line(proc, ["--log_dir out/x", ".receive.lock", what, "remove"])
    assert {p: digest(p) for p in before} == before
    assert not (ws / "elsewhere").exists()
    assert not (out / "mask-pattern-0.npz").exists()


# --- 2. a stage claims only the exact names it writes --------------------------------------------------------

LOOK_ALIKES = ("model_best.pth", "Harden_model_1_mybackup.pth", "mask-pattern-2-keep.npz", "preview-0-final.png",
               "Harden_Unlearn_model_1.pth.bak", "model_1a.pth", "unlearn-metrics.old", "downstream-metrics.txt")


def test_look_alike_files_are_neither_refused_nor_deleted(ws):
    """Files whose names resemble a stage's outputs are not "outputs of an earlier run": a first run beside
    them is not refused, and --overwrite leaves them byte for byte."""
    out = ws / "out" / "x"
    out.mkdir(parents=True)
    for name in LOOK_ALIKES:
        (out / name).write_bytes(name.encode() * 3)
    before = {name: digest(out / name) for name in LOOK_ALIKES}
    runs = [(M, main_args("x", epochs=2) + ["--seed", "0"]),
            ("pretraining_encoder.py", ["--pretraining_dataset", "cifar10", "--model", "tiny", "--batch_size", "8",
                                        "--epochs", "1", "--monitor_every", "0", "--device", "cpu",
                                        "--data_ratio", "0.25", "--results_dir", "out/x"])]
    for script, args in runs:
        for extra in ([], ["--overwrite"]):
            proc = run_fast(script, args + extra, ws)
            assert proc.returncode == 0, (script, extra, proc.stderr)
    assert {name: digest(out / name) for name in LOOK_ALIKES} == before
    assert (out / "Harden_model_2.pth").is_file() and (out / "model_1.pth").is_file()


# --- 8. JSON files are standard JSON: null, never NaN --------------------------------------------------------


def test_json_files_hold_null_where_a_number_was_not_measured(ws):
    """Unlearning's epoch-0 row has no loss (nothing trained yet); it is written as null, and the file parses
    with a standard parser (NaN is not JSON)."""
    from tests.scripts.test_bad_input import unlearn_args
    from tests.scripts.test_demo import strict_json

    proc = run_fast(U, unlearn_args("x", re_mask_pattern="trigger.npz"), ws)
    assert proc.returncode == 0, proc.stderr
    summary = strict_json(ws / "out" / "x" / "unlearn-metrics.json")
    assert summary["per_epoch"][0]["loss"] is None and isinstance(summary["per_epoch"][1]["loss"], float)


# --- 5. --resume and reuse compare the input files' contents, not their paths ---------------------------------


def _other_encoder(path: Path) -> None:
    import torch

    from MODELS.checkpoint import save_checkpoint
    from MODELS.simclr import build_model

    torch.manual_seed(123)
    save_checkpoint(path, build_model("tiny"), epoch=1)


def _other_data(path: Path) -> None:
    import numpy as np

    with np.load(path) as z:
        x, y = z["x"].copy(), z["y"]
    x[0] = 255 - x[0]  # one image changed, same size
    np.savez(path, x=x, y=y)


@pytest.mark.parametrize("changed", ["encoder", "data"])
def test_main_resume_refuses_inputs_that_changed_since_the_run_began(ws, changed):
    args = main_args("x", epochs=1, monitor_every=1) + ["--seed", "0"]
    assert run_fast(M, args, ws).returncode == 0
    if changed == "encoder":
        _other_encoder(ws / "encoder.pth")
        needles = ["--resume out/x/moth_state.pth", "--pretrained_encoder encoder.pth", "other contents"]
    else:
        _other_data(ws / "data" / "cifar10" / "train.npz")
        needles = ["--dataset cifar10/train.npz", "same size, other contents", "sha256"]
    state = digest(ws / "out" / "x" / "moth_state.pth")
    proc = run_fast(M, flags(args, epochs=2) + ["--resume"], ws)
    line = assert_one_error_line(proc, needles + ["not the file the run began from", "--overwrite"])
    assert "would mix two inputs" in line
    assert digest(ws / "out" / "x" / "moth_state.pth") == state
    # the same files under another --data_dir are the same inputs: contents decide, not paths
    if changed == "encoder":
        return
    shutil.copytree(ws / "data", ws / "data2")
    _other_data(ws / "data2" / "cifar10" / "train.npz")  # back to the original image
    proc = run_fast(M, flags(args, epochs=2, data_dir="data2") + ["--resume"], ws)
    assert proc.returncode == 0, proc.stderr


def test_unlearning_resume_refuses_another_encoder_at_the_same_path(ws):
    from tests.scripts.test_bad_input import unlearn_args

    args = unlearn_args("x", re_mask_pattern="trigger.npz", epochs=1)
    assert run_fast(U, args, ws).returncode == 0
    _other_encoder(ws / "encoder.pth")
    proc = run_fast(U, flags(args, epochs=2) + ["--resume"], ws)
    assert_one_error_line(proc, ["--resume out/x/Harden_Unlearn_model_1.pth", "--pretrained_encoder encoder.pth",
                                 "not the file the run began from"])
    assert not (ws / "out" / "x" / "Harden_Unlearn_model_2.pth").exists()


def test_classifier_resume_does_not_reuse_numbers_of_another_encoder(ws):
    from tests.scripts.test_bad_input import clf_args

    args = clf_args("x", nn_epochs=2)
    assert run_fast(D, args, ws).returncode == 0
    reused = run_fast(D, args + ["--resume"], ws)
    assert reused.returncode == 0 and "reusing it" in reused.stdout
    _other_encoder(ws / "encoder.pth")
    again = run_fast(D, args + ["--resume"], ws)
    assert again.returncode == 0, again.stderr
    assert "--encoder encoder.pth" in again.stdout and "training again from the start" in again.stdout
    fresh_run = run_fast(D, flags(args, results_dir="out/y"), ws)
    acc = [line for line in again.stdout.splitlines() if line.startswith("ACC ")]
    assert acc and acc[-1] == [line for line in fresh_run.stdout.splitlines() if line.startswith("ACC ")][-1]


# --- 6. mixed outputs: demo summaries, demo folders, one folder under two names --------------------------------

FAULT = "tests.scripts.faults:"
DEMO = ["--preset", "ci", "--device", "cpu", "--data_dir", "data"]


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_an_interrupted_demo_overwrite_leaves_no_old_summary_and_gives_the_right_advice(ws):
    run = ws / "run"
    (run / "report").mkdir(parents=True)
    (run / "summary.json").write_text('{"table": [{"encoder": "clean", "acc": 99.0, "asr": 1.0}]}\n')
    (run / "stage-times.csv").write_text("stage,seconds\nold,1.0\n")
    (run / "report" / "report.md").write_text("| clean | 99.00 | 1.00 |\n")
    proc = run_fast("demo.py", DEMO + ["--out", "run", "--overwrite"], ws, inject=FAULT + "ctrl_c_in_demo_stage_2")
    assert proc.returncode == 130, proc.stderr
    line = last_line(proc.stderr)
    assert line.startswith("interrupted: demo.py stopped in stage 'SimCLR pre-training")
    assert "plus --overwrite" in line and "--resume" not in line.replace("has no --resume", "")
    assert not (run / "summary.json").exists() and not (run / "report" / "report.md").exists()
    report = run_fast("report.py", ["--run", "run", "--out", "again"], ws)
    assert_one_error_line(report, ["summary.json"])


def test_demos_started_in_the_same_second_get_their_own_folders(ws):
    """The default folder demo_runs/<date-time> is claimed by mkdir: a taken one (another demo started in
    the same second) makes the next demo use <date-time>-2. A Ctrl-C outside any stage advises --overwrite."""
    import datetime

    now = datetime.datetime.now()
    taken = []
    for dt in range(0, 30):  # the next seconds' folders are taken, as by a demo started just before
        stamp = (now + datetime.timedelta(seconds=dt)).strftime("%Y%m%d-%H%M%S")
        (ws / "demo_runs" / stamp).mkdir(parents=True)
        (ws / "demo_runs" / stamp / "theirs.txt").write_text("another demo\n")
        taken.append(stamp)
    proc = run_fast("demo.py", DEMO, ws, inject=FAULT + "ctrl_c_in_demo_stage_1")
    assert proc.returncode == 130, proc.stderr
    folder = proc.stdout.split("demo run folder: ")[1].split()[0]
    assert folder.startswith("demo_runs/") and folder.rsplit("/", 1)[1].rsplit("-", 1)[0] in taken
    assert folder.endswith("-2") and (ws / folder).is_dir()
    assert all((ws / "demo_runs" / s / "theirs.txt").is_file() for s in taken)
    assert last_line(proc.stderr) == ("interrupted: aborted; every file written so far is complete (writes are "
                                      "atomic); demo.py has no --resume: run the same command plus --overwrite to "
                                      "start over")


def test_one_folder_under_two_names_is_locked_once(ws):
    """--log_dir and --results_dir naming one folder through a bind mount: the run holds it once instead of
    locking itself out (needs unshare for a private mount namespace)."""
    (ws / "a").mkdir()
    (ws / "b").mkdir()
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount --bind a b"], cwd=ws, capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespace here")
    args = " ".join(main_args("x", log_dir="a", results_dir="b", epochs=1)) + " --seed 0"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind a b && {sys.executable} {ROOT}/MAIN.py {args}"],
                          cwd=ws, capture_output=True, text=True, env=dict(os.environ, **ENV), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (ws / "a" / "Harden_model_1.pth").is_file() and not (ws / "a" / ".receive.lock").exists()


# --- 4. torchrun: the ranks agree on their flags; a dead rank is one line on the others --------------------------


def _unlearn_rank(rank: int, world: int, port: int, out: str, root: str, per_rank: dict, die: bool) -> None:
    """One torchrun-style rank of Unlearn-trigger.py (gloo, CPU); writes {code, err} to out/rank<r>.json."""
    import contextlib
    import io
    import json
    import runpy

    from UTILS.launch import local_rank_env

    os.environ.update({**local_rank_env(rank, world, port), **ENV, "RECEIVE_DIST_TIMEOUT": "60"})
    os.chdir(root)
    if die and rank == 1:  # this rank dies in its first epoch, as a killed or crashed worker does
        import Trainer.unlearn

        Trainer.unlearn.unlearn_epoch = lambda *a, **k: os._exit(3)
    args = ["--dataset", "stl10", "--model", "tiny", "--pretrained_encoder", "encoder.pth", "--batch_size", "10",
            "--epochs", "2", "--lr", "0.1", "--data_ratio", "0.5", "--re_mask_pattern", "trigger.npz",
            "--monitor_every", "0", "--portion", "0.3", "--device", "cpu", "--log_dir", f"out/r{rank}",
            "--results_dir", "out/ranks"] + per_rank.get(rank, [])
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(str(ROOT / "Unlearn-trigger.py"), run_name="rank_test")["main"](args)
        except SystemExit as exc:
            code = exc.code
    Path(out, f"rank{rank}.json").write_text(json.dumps({"code": code, "err": err.getvalue()}))


def _launch(root: Path, per_rank: dict, die: bool = False) -> dict:
    import json
    import multiprocessing

    from UTILS.launch import free_port

    ctx, port, out = multiprocessing.get_context("spawn"), free_port(), root / "ranks-out"
    out.mkdir(exist_ok=True)
    procs = [ctx.Process(target=_unlearn_rank, args=(r, 2, port, str(out), str(root), per_rank, die)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode is not None, "a rank hung"
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(2) if (out / f"rank{r}.json").is_file()}


@pytest.mark.parametrize("other", [["--lr", "0.2"], ["--data_ratio", "0.25"], ["--epochs", "3"]],
                         ids=["lr", "data_ratio", "epochs"])
def test_ranks_started_with_other_flags_all_stop_with_one_line(ws, other):
    flag = other[0]
    results = _launch(ws, {1: other})
    assert set(results) == {0, 1}
    for r in (0, 1):
        lines = [line for line in results[r]["err"].splitlines() if line.strip()]
        assert results[r]["code"] == 2 and len(lines) == 1, results[r]
        assert lines[0].startswith("error: torchrun: the processes were started with different settings")
        assert f"{flag} " in lines[0] and "on rank 0" in lines[0] and "on rank 1" in lines[0]
    assert not (ws / "out" / "ranks" / "Harden_Unlearn_model_1.pth").exists()


def test_when_one_rank_dies_the_other_prints_one_line(ws):
    results = _launch(ws, {}, die=True)
    assert 1 not in results  # it died without a word
    lines = [line for line in results[0]["err"].splitlines() if line.strip()]
    assert results[0]["code"] == 1 and len(lines) == 1, results[0]
    assert lines[0].startswith("error: torchrun: another process of this run stopped")


# --- 10. the smaller cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, needles", [
    ({"best_round": "abc"}, ["metrics.json", "'best_round' must be a round number or null, found 'abc'"]),
    ({"best_round": 99}, ["metrics.json", "'best_round' 99 is not a round of this run", "(it had rounds 0..{last})"]),
], ids=["best-round-abc", "best-round-99"])
def test_report_on_a_bad_best_round_is_one_line(ws, change, needles):
    import json

    args = main_args("x", epochs=2) + ["--seed", "0"]
    assert run_fast(M, args, ws).returncode == 0
    path = ws / "out" / "x" / "metrics.json"
    ran = json.loads(path.read_text())
    path.write_text(json.dumps({**ran, **change}))
    proc = run_fast("report.py", ["--moth_log", "out/x", "--out", "rep"], ws)
    assert_one_error_line(proc, [n.format(last=ran["rounds"] - 1) for n in needles])


def test_report_on_a_target_entry_without_keys_is_one_line(ws):
    (ws / "s.json").write_text('{"table": [], "targets": [{}], "stage_times": []}\n')
    proc = run_fast("report.py", ["--table", "s.json", "--out", "rep"], ws)
    assert_one_error_line(proc, ["s.json", "'targets' entry 0 lacks 'target', 'met', 'measured'"])
