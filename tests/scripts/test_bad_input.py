"""Every bad input of docs/ROBUSTNESS.md, through the command line of the three entry scripts.

Each case must end with exit code 2 and exactly one ``error: ...`` line on stderr (other stderr
lines, if any, are ``warning: ...`` lines) naming the flag or file, and no traceback.
The cases run in processes forked from a warm interpreter (tests/scripts/fastcli.py), which prints
exactly what ``python <script> ...`` prints (checked by test_fast_runner_matches_a_real_interpreter).

``python -m tests.scripts.test_bad_input`` prints the table of docs/ROBUSTNESS.md from these cases.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from DATASETS.triggers import save_ground_truth_trigger
from MODELS.checkpoint import save_checkpoint
from MODELS.simclr import build_model
from tests.scripts.conftest import run_cli
from tests.scripts.fastcli import run_fast

GT = "trigger/trigger_pt_white_21_10_ap_replace.npz"


def flags(base: list[str], **changes) -> list[str]:
    """``base`` with ``--flag value`` pairs replaced (value None drops the flag, True adds a switch)."""
    out = list(base)
    for name, value in changes.items():
        flag = "--" + name.replace("knn_", "knn-")
        if flag in out:
            i = out.index(flag)
            del out[i:i + 2]
        if value is True:
            out.append(flag)
        elif value is not None:
            out += [flag, str(value)]
    return out


def main_args(case: str, **changes) -> list[str]:
    base = ["--phase", "moth", "--dataset", "cifar10", "--model", "tiny", "--pretrained_encoder", "encoder.pth",
            "--batch_size", "8", "--epochs", "1", "--data_ratio", "0.25", "--attack_size", "4", "--re_steps", "1",
            "--re_lr", "1e-2", "--downstreamTask", "stl10", "--reference_label", "9", "--knn-k", "5",
            "--monitor_every", "0", "--device", "cpu", "--log_dir", f"out/{case}", "--results_dir", f"out/{case}"]
    return flags(base, **changes)


def unlearn_args(case: str, **changes) -> list[str]:
    base = ["--dataset", "stl10", "--model", "tiny", "--pretrained_encoder", "encoder.pth", "--batch_size", "10",
            "--epochs", "1", "--lr", "0.1", "--data_ratio", "0.5", "--re_mask_pattern", "files/trigger.npz",
            "--downstreamTask", "stl10", "--reference_label", "9", "--knn-k", "5", "--monitor_every", "0",
            "--portion", "0.3", "--device", "cpu", "--log_dir", f"out/{case}", "--results_dir", f"out/{case}"]
    return flags(base, **changes)


def clf_args(case: str, **changes) -> list[str]:
    base = ["--dataset", "stl10", "--encoder", "encoder.pth", "--model", "tiny", "--trigger_file", GT,
            "--reference_label", "9", "--nn_epochs", "1", "--batch_size", "16", "--device", "cpu",
            "--results_dir", f"out/{case}"]
    return flags(base, **changes)


def pretrain_args(case: str, **changes) -> list[str]:
    base = ["--pretraining_dataset", "cifar10", "--model", "tiny", "--batch_size", "8", "--epochs", "1",
            "--monitor_every", "0", "--device", "cpu", "--results_dir", f"out/{case}"]
    return flags(base, **changes)


def badencoder_args(case: str, **changes) -> list[str]:
    base = ["--pretrained_encoder", "encoder.pth", "--model", "tiny", "--shadow_dataset", "cifar10",
            "--reference_dataset", "stl10", "--reference_label", "9", "--batch_size", "8", "--epochs", "1",
            "--monitor_every", "0", "--device", "cpu", "--results_dir", f"out/{case}"]
    return flags(base, **changes)


M, U, D = "MAIN.py", "Unlearn-trigger.py", "training_downstream_classifier.py"
P, B, R = "pretraining_encoder.py", "badencoder.py", "report.py"
INSIDE = "files/inside"  # a folder holding inputs under the names the stages write (see _write_bad_files)

# (id, what the user did wrong, script, argv, substrings the one error line must contain)
CASES = [
    # --- files that are not there ---
    ("main-missing-encoder", "encoder file missing", M,
     main_args("x", pretrained_encoder="nope.pth"), ["--pretrained_encoder nope.pth", "file not found"]),
    ("main-no-encoder-flag", "no --pretrained_encoder at all", M,
     main_args("x", pretrained_encoder=""), ["--pretrained_encoder", "required"]),
    ("unlearn-missing-encoder", "encoder file missing", U,
     unlearn_args("x", pretrained_encoder="nope.pth"), ["--pretrained_encoder nope.pth", "file not found"]),
    ("clf-missing-encoder", "encoder file missing", D,
     clf_args("x", encoder="nope.pth"), ["--encoder nope.pth", "file not found"]),
    ("main-missing-trigger", "ground-truth trigger file named but missing", M,
     main_args("x", trigger_file="nope.npz"), ["--trigger_file nope.npz", "file not found"]),
    ("clf-missing-trigger", "trigger file missing", D,
     clf_args("x", trigger_file="nope.npz"), ["--trigger_file nope.npz", "file not found"]),
    ("unlearn-missing-mask-pattern", "inverted trigger file missing", U,
     unlearn_args("x", re_mask_pattern="nope.npz"), ["--re_mask_pattern nope.npz", "file not found"]),
    ("unlearn-no-mask-pattern-flag", "no --re_mask_pattern at all", U,
     unlearn_args("x", re_mask_pattern=""), ["--re_mask_pattern", "required"]),
    ("main-missing-reference-file", "--reference_file named but missing", M,
     main_args("x", reference_file="nope.npz"), ["--reference_file nope.npz", "file not found"]),
    ("main-dataset-absent", "no dataset files under --data_dir", M,
     main_args("x", data_dir="empty"), ["--data_dir empty", "cifar10 train split not found", "npz layout at",
                                        "empty/cifar10/train.npz", "torchvision's layout", "data_batch_1"]),
    ("unlearn-dataset-absent", "no dataset files under --data_dir", U,
     unlearn_args("x", data_dir="empty"), ["--data_dir empty", "stl10 train split not found", "stl10_binary"]),
    ("clf-dataset-absent", "no dataset files under --data_dir", D,
     clf_args("x", data_dir="empty"), ["--data_dir empty", "stl10 train split not found"]),
    # --- files that are not what they should be ---
    ("main-pickled-checkpoint", "checkpoint holding pickled code (os.system)", M,
     main_args("x", pretrained_encoder="files/pickled.pth"), ["--pretrained_encoder files/pickled.pth", "refused",
                                                              "pickled Python objects"]),
    ("main-garbage-checkpoint", "checkpoint that is not a checkpoint", M,
     main_args("x", pretrained_encoder="files/garbage.pth"), ["files/garbage.pth", "not a PyTorch checkpoint"]),
    ("main-truncated-checkpoint", "truncated checkpoint", M,
     main_args("x", pretrained_encoder="files/truncated.pth"), ["files/truncated.pth", "not a PyTorch checkpoint"]),
    ("main-npz-as-checkpoint", "an npz given as the encoder", M,
     main_args("x", pretrained_encoder=GT), [f"--pretrained_encoder {GT}", "not a PyTorch checkpoint"]),
    ("main-wrong-architecture", "checkpoint of another architecture", M,
     main_args("x", pretrained_encoder="files/resnet18_small.pth"),
     ["files/resnet18_small.pth", "--model tiny", "unexpected"]),
    ("unlearn-wrong-architecture", "checkpoint of another architecture", U,
     unlearn_args("x", model="resnet18"), ["--pretrained_encoder encoder.pth", "--model resnet18"]),
    ("clf-wrong-architecture", "checkpoint of another architecture", D,
     clf_args("x", model="resnet18_small"), ["--encoder encoder.pth", "--model resnet18_small"]),
    ("main-nan-encoder", "encoder weights hold NaN", M,
     main_args("x", pretrained_encoder="files/nan_encoder.pth"), ["files/nan_encoder.pth", "NaN or inf"]),
    ("unlearn-pickled-npz", "mask-pattern npz holding pickled objects", U,
     unlearn_args("x", re_mask_pattern="files/pickled.npz"), ["--re_mask_pattern files/pickled.npz",
                                                              "pickled objects, refused"]),
    ("unlearn-npz-without-keys", "mask-pattern npz without mask/pattern", U,
     unlearn_args("x", re_mask_pattern="files/nokeys.npz"), ["files/nokeys.npz", "mask/pattern", "found ['foo']"]),
    ("main-trigger-without-keys", "ground-truth npz without t/tm", M,
     main_args("x", trigger_file="files/nokeys.npz"), ["--trigger_file files/nokeys.npz", "t/tm"]),
    ("unlearn-mask-wrong-shape", "mask of the wrong shape", U,
     unlearn_args("x", re_mask_pattern="files/mask_shape.npz"), ["files/mask_shape.npz", "'pattern' must have shape"]),
    ("unlearn-mask-outside-01", "mask values outside [0,1]", U,
     unlearn_args("x", re_mask_pattern="files/mask_range.npz"),
     ["files/mask_range.npz", "'mask' values must lie in [0, 1]"]),
    ("unlearn-pattern-nan", "pattern holding NaN", U,
     unlearn_args("x", re_mask_pattern="files/pattern_nan.npz"), ["files/pattern_nan.npz", "'pattern' contains NaN"]),
    ("unlearn-trigger-size", "64x64 mask-pattern for a 32x32 encoder", U,
     unlearn_args("x", re_mask_pattern="files/trigger64.npz"), ["files/trigger64.npz", "64x64", "expects 32x32"]),
    ("main-trigger-size", "64x64 ground-truth trigger for a 32x32 encoder", M,
     main_args("x", trigger_file="files/gt64.npz"), ["--trigger_file files/gt64.npz", "64x64", "expects 32x32"]),
    ("clf-trigger-size", "64x64 trigger for a 32x32 encoder", D,
     clf_args("x", trigger_file="files/gt64.npz"), ["--trigger_file files/gt64.npz", "64x64"]),
    ("main-dataset-npz-without-keys", "dataset npz without x/y", M,
     main_args("x", data_dir="data_nokeys"), ["data_nokeys/cifar10/train.npz", "lacks key(s) ['y']"]),
    ("main-dataset-pickled-cifar", "torchvision CIFAR batch holding os.system", M,
     main_args("x", data_dir="data_evil"), ["data_evil/cifar-10-batches-py/data_batch_1", "not allowed"]),
    # --- values that make no sense ---
    ("main-unknown-dataset", "unknown --dataset", M, main_args("x", dataset="imagenet"),
     ["--dataset imagenet", "expected one of", "cifar10"]),
    ("main-unknown-downstream", "unknown --downstreamTask", M, main_args("x", downstreamTask="mnist", monitor_every=1),
     ["--downstreamTask mnist", "expected one of"]),
    ("main-unknown-model", "unknown --model", M, main_args("x", model="vgg16"), ["--model vgg16", "resnet18"]),
    ("unlearn-unknown-model", "unknown --model", U, unlearn_args("x", model="vgg16"), ["--model vgg16"]),
    ("main-unknown-usage", "unknown --encoder_usage_info", M, main_args("x", encoder_usage_info="mnist"),
     ["--encoder_usage_info mnist", "expected one of"]),
    ("clf-unknown-usage", "unknown --encoder_usage_info", D, clf_args("x", encoder_usage_info="mnist"),
     ["--encoder_usage_info mnist"]),
    ("main-unknown-phase", "unknown --phase", M, main_args("x", phase="nope"), ["--phase nope", "moth, nc"]),
    ("main-data-ratio-0", "--data_ratio 0", M, main_args("x", data_ratio=0), ["--data_ratio 0.0", "(0, 1]"]),
    ("main-data-ratio-1.5", "--data_ratio 1.5", M, main_args("x", data_ratio=1.5), ["--data_ratio 1.5", "(0, 1]"]),
    ("main-data-ratio-nan", "--data_ratio nan", M, main_args("x", data_ratio="nan"), ["--data_ratio nan", "(0, 1]"]),
    ("unlearn-data-ratio-negative", "--data_ratio -0.1", U, unlearn_args("x", data_ratio=-0.1),
     ["--data_ratio -0.1", "(0, 1]"]),
    ("unlearn-portion-0", "--portion 0", U, unlearn_args("x", portion=0), ["--portion 0.0", "(0, 1]"]),
    ("unlearn-portion-2", "--portion 2", U, unlearn_args("x", portion=2), ["--portion 2.0", "(0, 1]"]),
    ("main-reference-label", "--reference_label 10 for a 10-class task", M,
     main_args("x", reference_label=10, monitor_every=1), ["--reference_label 10", "0..9"]),
    ("unlearn-reference-label", "--reference_label -3", U,
     unlearn_args("x", reference_label=-3, monitor_every=1), ["--reference_label -3", "0..9"]),
    ("clf-reference-label", "--reference_label 10 with a trigger", D, clf_args("x", reference_label=10),
     ["--reference_label 10", "0..9"]),
    ("clf-no-reference-label", "trigger given, --reference_label left at -1", D, clf_args("x", reference_label=None),
     ["--reference_label -1"]),
    ("main-set-smaller-than-batch", "inversion set smaller than one --batch_size", M,
     main_args("x", data_ratio=0.1), ["--data_ratio 0.1", "6 images", "--batch_size 8"]),
    ("main-ratio-keeps-nothing", "--data_ratio keeps no image", M, main_args("x", data_ratio=0.001),
     ["--data_ratio 0.001", "keeps no sample"]),
    ("main-seed-index", "--seed outside the seed list", M, main_args("x", seed=7), ["--seed 7", "0..4"]),
    ("main-bad-int", "--batch_size abc", M, main_args("x", batch_size="abc"),
     ["argument --batch_size", "invalid int value: 'abc'", "--help"]),
    ("unlearn-unknown-flag", "a flag that does not exist", U, unlearn_args("x") + ["--lrr", "1"],
     ["unrecognized arguments: --lrr 1"]),
    ("main-negative-epochs", "--epochs 0", M, main_args("x", epochs=0), ["--epochs 0", "positive"]),
    ("main-attack-size-1", "--attack_size 1", M, main_args("x", attack_size=1), ["--attack_size 1", "at least 2"]),
    ("main-threshold", "--similarity_threshold 1.5", M, main_args("x", similarity_threshold=1.5),
     ["--similarity_threshold 1.5", "(0, 1]"]),
    ("main-cap-below-steps", "--re_steps_cap below --re_steps", M, main_args("x", re_steps=5, re_steps_cap=2),
     ["--re_steps_cap 2", "below --re_steps 5"]),
    ("unlearn-negative-monitor", "--monitor_every -1", U, unlearn_args("x", monitor_every=-1),
     ["--monitor_every -1", "non-negative"]),
    ("main-resume-and-overwrite", "--resume together with --overwrite", M, main_args("x", resume=True, overwrite=True),
     ["--overwrite and --resume"]),
    ("main-trigger-scale-0-1", "ground-truth trigger saved with t in 0..1 instead of 0..255", M,
     main_args("x", trigger_file="files/gt01.npz"), ["--trigger_file files/gt01.npz", "'t' holds values in [0, 1]",
                                                     "0..255"]),
    ("clf-trigger-scale-0-1", "ground-truth trigger saved with t in 0..1 instead of 0..255", D,
     clf_args("x", trigger_file="files/gt01.npz"), ["--trigger_file files/gt01.npz", "multiply it by 255"]),
    ("main-complex-encoder", "encoder weights of a complex dtype", M,
     main_args("x", pretrained_encoder="files/complex.pth"), ["files/complex.pth", "complex values", "real"]),
    ("unlearn-complex-mask", "mask of a complex dtype", U,
     unlearn_args("x", re_mask_pattern="files/complex_mask.npz"), ["'mask' must hold real numbers"]),
    ("main-uint64-label", "dataset label 2**64-1 stored as uint64", M, main_args("x", data_dir="data_uint64"),
     ["labels must lie in [0, 10)", "18446744073709551615"]),
    ("badencoder-reference-2d", "a (2,32,32) --reference_file", B,
     badencoder_args("x", reference_dataset=None, reference_file="files/ref2d.npz"),
     ["--reference_file files/ref2d.npz", "found (2, 32, 32) uint8"]),
    ("main-imagenet-trigger-size", "32x32 trigger for an ImageNet (224x224) encoder: named before any resize", M,
     main_args("x", encoder_usage_info="imagenet", model="imagenet_tiny", trigger_file=GT), [f"--trigger_file {GT}", "expects 224x224"]),
    # --- data with nothing to measure ---
    ("main-monitor-empty-test-split", "kNN monitor on a dataset whose test split is empty", M,
     main_args("x", data_dir="data_empty_test", monitor_every=1), ["--downstreamTask stl10",
                                                                    "test split holds no image"]),
    ("clf-empty-test-split", "downstream dataset whose test split is empty", D,
     clf_args("x", data_dir="data_empty_test"), ["--dataset stl10", "test split holds no image"]),
    ("clf-no-image-for-asr", "every test label equals --reference_label: no image left for ASR", D,
     clf_args("x", data_dir="data_one_class"), ["--reference_label 9", "no stamped image is left",
                                                "--asr_include_target"]),
    ("clf-source-label-absent", "--source_label of a class the test split lacks", D,
     clf_args("x", data_dir="data_one_class", source_label=3), ["--source_label 3", "no test image"]),
    # --- devices, seeds and sizes ---
    ("main-gpu-not-a-number", "--gpu abc", M, main_args("x", gpu="abc"), ["--gpu abc", "device index"]),
    ("main-gpu-negative", "--gpu -1", M, main_args("x", gpu="-1"), ["--gpu -1", "--device cpu"]),
    ("unlearn-device-negative-index", "--device cuda:-1", U, unlearn_args("x", device="cuda:-1"),
     ["--device cuda:-1", "cuda:N"]),
    ("clf-device-not-a-number", "--device cuda:abc", D, clf_args("x", device="cuda:abc"), ["--device cuda:abc"]),
    ("pretrain-seed-beyond-64-bits", "--seed 2**70", P, pretrain_args("x", seed=2**70),
     [f"--seed {2**70}", "2**64-1"]),
    ("clf-seed-negative-beyond-64-bits", "--seed -2**70", D, clf_args("x", seed=-2**70), [f"--seed {-2**70}"]),
    ("main-attack-size-huge", "--attack_size 10**9", M, main_args("x", attack_size=10**9),
     ["--attack_size 1000000000", "at most 1,000,000"]),
    ("clf-hidden-size-huge", "--hidden_size_1 10**9", D, clf_args("x", hidden_size_1=10**9),
     ["--hidden_size_1 1000000000", "at most"]),
    ("pretrain-batch-size-1", "--batch_size 1 (BatchNorm cannot train on one image)", P,
     pretrain_args("x", batch_size=1), ["--batch_size 1", "at least 2"]),
    # --- inputs lying where the stage writes: refused whatever the switches, never deleted ---
    ("main-overwrite-input-in-results-dir", "--overwrite with --pretrained_encoder inside --results_dir", M,
     main_args("x", pretrained_encoder=f"{INSIDE}/Harden_model_1.pth", results_dir=INSIDE, overwrite=True),
     [f"--pretrained_encoder {INSIDE}/Harden_model_1.pth", "is an input", "never overwritten or deleted"]),
    ("main-trigger-input-in-log-dir", "--trigger_file inside --log_dir under an output's name (no --overwrite)", M,
     main_args("x", trigger_file=f"{INSIDE}/mask-pattern-best.npz", log_dir=INSIDE),
     [f"--trigger_file {INSIDE}/mask-pattern-best.npz", "is an input", f"--log_dir {INSIDE}"]),
    ("unlearn-overwrite-input-in-results-dir", "--overwrite with --pretrained_encoder inside --results_dir", U,
     unlearn_args("x", pretrained_encoder=f"{INSIDE}/Harden_Unlearn_model_1.pth", results_dir=INSIDE,
                  overwrite=True), ["is an input", "Harden_Unlearn_model_<n>.pth"]),
    ("badencoder-overwrite-input-in-results-dir", "--overwrite with --pretrained_encoder inside --results_dir", B,
     badencoder_args("x", pretrained_encoder=f"{INSIDE}/model_1.pth", results_dir=INSIDE, overwrite=True),
     [f"--pretrained_encoder {INSIDE}/model_1.pth", "is an input", "(model_<n>.pth)"]),
    ("clf-overwrite-encoder-in-results-dir", "--overwrite with --encoder inside --results_dir", D,
     clf_args("x", encoder=f"{INSIDE}/clf_1.pth", results_dir=INSIDE, overwrite=True),
     [f"--encoder {INSIDE}/clf_1.pth", "is an input"]),
    # --- report.py ---
    ("report-truncated-metrics", "a truncated metrics.json", R, ["--moth_log", "files/report_moth", "--out", "out/x"],
     ["--moth_log files/report_moth: metrics.json", "not readable JSON"]),
    ("report-table-not-an-object", "--table holding a JSON list", R, ["--table", "files/table_list.json",
                                                                     "--out", "out/x"],
     ["--table files/table_list.json", "expected a JSON object"]),
    ("report-run-without-summary", "--run of a folder that is not a demo run", R, ["--run", "files/not_a_run"],
     ["--run files/not_a_run (its summary.json)", "file not found"]),
    # --- where outputs would go ---
    ("main-log-dir-is-a-file", "--log_dir is an existing file", M, main_args("x", log_dir="files/garbage.pth"),
     ["--log_dir files/garbage.pth", "exists and is not a directory"]),
    ("unlearn-results-dir-under-a-file", "--results_dir below a file", U,
     unlearn_args("x", results_dir="files/garbage.pth/sub"), ["--results_dir files/garbage.pth/sub",
                                                               "cannot create directory"]),
]
if not torch.cuda.is_available():
    CASES.append(("main-no-cuda", "--device cuda on a machine without CUDA", M, main_args("x", device="cuda"),
                  ["--device cuda", "CUDA is not available"]))


class Evil:
    """Unpickling this runs ``touch PWNED``: the safe loaders must refuse it before it runs."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _write_bad_files(ws: Path) -> None:
    files = ws / "files"
    files.mkdir()
    torch.manual_seed(0)
    tiny = build_model("tiny")
    torch.save({"state_dict": tiny.state_dict(), "extra": Evil()}, files / "pickled.pth")
    (files / "garbage.pth").write_bytes(b"this is not a checkpoint\n" * 10)
    good = (ws / "encoder.pth").read_bytes()
    (files / "truncated.pth").write_bytes(good[: len(good) // 2])
    save_checkpoint(files / "resnet18_small.pth", build_model("resnet18_small"), 1)
    with torch.no_grad():
        tiny.f.f[0].weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(files / "nan_encoder.pth", tiny, 1)
    m = np.zeros((3, 32, 32), np.float32)
    m[:, 20:30, 20:30] = 1
    np.savez(files / "trigger.npz", mask=m, pattern=np.ones((3, 32, 32), np.float32))
    np.savez(files / "pickled.npz", mask=np.array([Evil()], dtype=object), pattern=m)
    np.savez(files / "nokeys.npz", foo=np.zeros(3))
    np.savez(files / "mask_shape.npz", mask=m, pattern=np.ones((3, 16, 16), np.float32))
    np.savez(files / "mask_range.npz", mask=m * 1.5, pattern=m)
    np.savez(files / "pattern_nan.npz", mask=m, pattern=np.where(m > 0, np.nan, 0).astype(np.float32))
    m64 = np.zeros((3, 64, 64), np.float32)
    np.savez(files / "trigger64.npz", mask=m64, pattern=m64)
    save_ground_truth_trigger(files / "gt64.npz", size=64)
    _write_second_round_files(ws)
    (ws / "empty").mkdir()
    (ws / "data_nokeys" / "cifar10").mkdir(parents=True)
    np.savez(ws / "data_nokeys" / "cifar10" / "train.npz", x=np.zeros((4, 32, 32, 3), np.uint8))
    evil = ws / "data_evil" / "cifar-10-batches-py"
    evil.mkdir(parents=True)
    import pickle
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (evil / name).write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))


def _write_second_round_files(ws: Path) -> None:
    """The inputs of the issue-11 cases: odd scales, dtypes and shapes, empty splits, inputs in output dirs."""
    files = ws / "files"
    gt = np.load(ws / GT)
    np.savez(files / "gt01.npz", t=gt["t"] / 255.0, tm=gt["tm"])
    state = torch.load(ws / "encoder.pth", weights_only=True)
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = state["state_dict"][first].to(torch.complex64)
    torch.save(state, files / "complex.pth")
    np.savez(files / "complex_mask.npz", mask=np.zeros((3, 32, 32), np.complex64),
             pattern=np.zeros((3, 32, 32), np.float32))
    np.savez(files / "ref2d.npz", x=np.zeros((2, 32, 32), np.uint8))
    data = ws / "data"
    for name, test_y in (("data_empty_test", np.zeros(0, np.int64)), ("data_one_class", np.full(5, 9, np.int64))):
        shutil.copytree(data / "cifar10", ws / name / "cifar10")
        (ws / name / "stl10").mkdir(parents=True)
        shutil.copy(data / "stl10" / "train.npz", ws / name / "stl10" / "train.npz")
        np.savez(ws / name / "stl10" / "test.npz", x=np.zeros((len(test_y), 32, 32, 3), np.uint8), y=test_y)
    (ws / "data_uint64" / "cifar10").mkdir(parents=True)
    np.savez(ws / "data_uint64" / "cifar10" / "train.npz", x=np.zeros((64, 32, 32, 3), np.uint8),
             y=np.array([0] * 63 + [2**64 - 1], np.uint64))
    inside = ws / INSIDE
    inside.mkdir()
    for name in ("Harden_model_1.pth", "Harden_Unlearn_model_1.pth", "model_1.pth", "clf_1.pth"):
        shutil.copy(ws / "encoder.pth", inside / name)
    shutil.copy(files / "trigger.npz", inside / "mask-pattern-best.npz")
    (files / "report_moth").mkdir()
    (files / "report_moth" / "metrics.json").write_text('{"best_round": 3, "stopped_ea')
    (files / "table_list.json").write_text("[1, 2]\n")
    (files / "not_a_run").mkdir()


@pytest.fixture(scope="module")
def bad_ws(workspace, tmp_path_factory):
    ws = tmp_path_factory.mktemp("bad") / "ws"
    for name in ("data", "trigger"):  # not the outputs other tests may have left in the shared workspace
        shutil.copytree(workspace / name, ws / name)
    shutil.copy(workspace / "encoder.pth", ws / "encoder.pth")
    _write_bad_files(ws)
    return ws


def assert_one_error_line(proc: subprocess.CompletedProcess, needles) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1500:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert all(line.startswith("warning: ") for line in lines[:-1]), proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(bad_ws, case):
    name, _, script, argv, needles = case
    argv = [a.replace("out/x", f"out/{name}") for a in argv]
    inside = {p.name: p.read_bytes() for p in (bad_ws / INSIDE).iterdir()}
    proc = run_fast(script, argv, bad_ws)
    assert_one_error_line(proc, needles)
    assert not (bad_ws / "PWNED").exists(), "a pickled payload was executed"
    assert {p.name: p.read_bytes() for p in (bad_ws / INSIDE).iterdir()} == inside, "an input was touched"


def test_fast_runner_matches_a_real_interpreter(bad_ws):
    """The forked runner shows exactly what `python <script> ...` shows (a success and two failures)."""
    cases = [(M, main_args("real-1", pretrained_encoder="files/pickled.pth")), (U, ["--help"])]
    for script, argv in cases:
        fast, real = run_fast(script, argv, bad_ws), run_cli(script, argv, bad_ws)
        assert (fast.returncode, fast.stdout, fast.stderr) == (real.returncode, real.stdout, real.stderr)
    assert not (bad_ws / "PWNED").exists()


@pytest.fixture
def unwritable_dir(bad_ws):
    """A directory nobody can write into: chmod 555, or for root (who ignores modes) chattr +i."""
    path = bad_ws / "readonly"
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    immutable = False
    if os.access(path, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0 \
            if shutil.which("chattr") else False
    probe = path / "probe"
    try:
        probe.touch()
        probe.unlink()
        writable = True
    except OSError:
        writable = False
    yield path, writable
    if immutable:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_output_directory_not_writable(bad_ws, unwritable_dir):
    path, writable = unwritable_dir
    if writable:
        pytest.skip("cannot make a directory unwritable here (root without chattr)")
    for script, argv, flag in ((M, main_args("ro", log_dir="readonly"), "--log_dir readonly"),
                               (U, unlearn_args("ro", results_dir="readonly"), "--results_dir readonly"),
                               (D, clf_args("ro", results_dir="readonly/sub"), "--results_dir readonly/sub")):
        line = assert_one_error_line(run_fast(script, argv, bad_ws), [flag])
        assert "not writable" in line or "cannot create directory" in line


def test_checkpoint_layouts_module_prefixed_and_backbone_only_load(bad_ws):
    """DataParallel's module. prefix and backbone-only files load; nc with one step proves it end to end."""
    files = bad_ws / "files"
    state = torch.load(bad_ws / "encoder.pth", weights_only=True)["state_dict"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, files / "module.pth")
    torch.save({"state_dict": {k[2:]: v for k, v in state.items() if k.startswith("f.")}}, files / "backbone.pth")
    torch.save({k: v for k, v in state.items()}, files / "raw.pth")
    for name in ("module", "backbone", "raw"):
        proc = run_fast(M, main_args(f"layout-{name}", phase="nc", pretrained_encoder=f"files/{name}.pth",
                                     data_ratio=0.1), bad_ws)
        assert proc.returncode == 0, proc.stderr
        assert (bad_ws / "out" / f"layout-{name}" / "mask-pattern-NC.npz").is_file()


def test_existing_outputs_are_refused_then_replaced_with_overwrite(bad_ws):
    argv = main_args("again", phase="nc", data_ratio=0.1)
    assert run_fast(M, argv, bad_ws).returncode == 0
    trigger = bad_ws / "out" / "again" / "mask-pattern-NC.npz"
    before = trigger.stat().st_mtime_ns
    line = assert_one_error_line(run_fast(M, argv, bad_ws), ["--log_dir out/again", "mask-pattern-NC.npz",
                                                            "--resume", "--overwrite"])
    assert "earlier run" in line and trigger.stat().st_mtime_ns == before
    # --overwrite with a bad input keeps the earlier outputs (inputs are checked before anything is removed)
    assert_one_error_line(run_fast(M, argv + ["--overwrite", "--pretrained_encoder", "nope.pth"], bad_ws), ["nope.pth"])
    assert trigger.stat().st_mtime_ns == before
    assert run_fast(M, argv + ["--overwrite"], bad_ws).returncode == 0


def test_nan_in_the_hardening_stops_and_keeps_the_last_good_state(bad_ws):
    """A huge --harden_lr blows the encoder up after round 0: round 1 fails, the state after round 0 stays."""
    argv = main_args("nan-moth", harden_lr="1e15", epochs=1)
    line = assert_one_error_line(run_fast(M, argv, bad_ws), ["round 1 (epoch 0, batch 1)", "nan", "stopped",
                                                            "moth_state.pth (after round 0)"])
    assert "--re_lr" in line or "--harden_lr" in line
    out = bad_ws / "out" / "nan-moth"
    state = torch.load(out / "moth_state.pth", weights_only=True)
    assert state["run_state"]["round"] == 1 and len(state["rows"]) == 1
    assert all(np.isfinite(list(r.values())).all() for r in [{k: v for k, v in state["rows"][0].items()
                                                              if not k.startswith("knn") and not isinstance(v, str)}])
    assert not list(out.glob("Harden_model_*.pth"))  # no hardened encoder from a NaN run


def test_nan_in_the_unlearning_loss_stops_and_keeps_the_last_checkpoint(bad_ws):
    argv = unlearn_args("nan-unlearn", epochs=3)
    proc = run_fast(U, argv, bad_ws, inject="tests.scripts.faults:nan_unlearn_loss_in_epoch_2")
    assert_one_error_line(proc, ["unlearn epoch 2/3, batch 0", "nan", "stopped",
                                 "Harden_Unlearn_model_1.pth", "--lr"])
    out = bad_ws / "out" / "nan-unlearn"
    assert sorted(p.name for p in out.glob("Harden_Unlearn_model_*.pth")) == ["Harden_Unlearn_model_1.pth"]
    assert np.isfinite(np.load(out / "loss-log.npy")).all()
    # a diverging learning rate is caught the same way without any injection
    assert_one_error_line(run_fast(U, unlearn_args("nan-lr", lr="1e30"), bad_ws),
                          ["unlearn epoch 1/1", "nan", "No epoch had finished"])


def test_no_trigger_reaching_the_threshold_warns_and_records(bad_ws):
    """Similarity 1.0 is never reached: each round stops at the cap, warns once, the run completes."""
    argv = main_args("cap", similarity_threshold=1.0, re_steps=2, re_steps_cap=3, epochs=1)
    proc = run_fast(M, argv, bad_ws)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert any("round 0: no trigger reached --similarity_threshold 1.0 in 3 steps (the cap of 3 steps" in w
               for w in warnings)
    assert "never reached --similarity_threshold" in warnings[-1]
    import csv
    import json
    out = bad_ws / "out" / "cap"
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(r["reached"] == "0" and r["steps"] == "3" for r in rows)
    for row in rows:  # only the monitor columns that were not computed may say nan
        assert all(v != "nan" for k, v in row.items() if k not in ("knn_acc", "knn_asr", "refer_sim")), row
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["best_reached_threshold"] is False and summary["rounds_below_threshold"] == len(rows)
    # the one-round baseline records the same way
    nc = run_fast(M, flags(argv, phase="nc", log_dir="out/cap-nc"), bad_ws)
    assert nc.returncode == 0 and "warning: NC inversion: no trigger reached" in nc.stderr
    assert json.loads((bad_ws / "out" / "cap-nc" / "metrics-NC.json").read_text())["reached_threshold"] is False


def _markdown_table() -> str:  # pragma: no cover - documentation helper
    import tempfile

    from tests.scripts.conftest import _write_split
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        _write_split(ws / "data" / "cifar10", 64, 20, 10, 0)
        _write_split(ws / "data" / "stl10", 40, 30, 10, 1)
        save_ground_truth_trigger(ws / GT)
        torch.manual_seed(0)
        save_checkpoint(ws / "encoder.pth", build_model("tiny"), epoch=1)
        _write_bad_files(ws)
        lines = ["| bad input | script | what the user sees (stderr, exit code 2) |", "| --- | --- | --- |"]
        for name, what, script, argv, _ in CASES:
            argv = [a.replace("out/x", f"out/{name}") for a in argv]
            err = [line for line in run_fast(script, argv, ws).stderr.splitlines() if line.startswith("error:")]
            shown = err[-1].replace(tmp, "<ws>").replace("|", "\\|") if err else "(no error!)"
            lines.append(f"| {what} | `{script}` | `{shown}` |")
        return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(_markdown_table() + "\n")
