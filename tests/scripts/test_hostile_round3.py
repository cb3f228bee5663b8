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
