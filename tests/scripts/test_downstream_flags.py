"""training_downstream_classifier.py's original flags: which images ASR counts (--asr_images, --mode,
--source_label), the metric names, and the defaults. Each ASR is recomputed image by image from the
saved classifier and the encoder, as the slow reference."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from DATASETS.stats import USAGE, normalize
from DATASETS.triggers import load_trigger
from EVALUATION.downstream import DownstreamMLP
from MODELS.checkpoint import load_encoder
from tests.scripts.conftest import load_script
from tests.scripts.test_resume import fresh

TRIGGER = "trigger/trigger_pt_white_21_10_ap_replace.npz"
BASE = ["--dataset", "stl10", "--encoder", "encoder.pth", "--model", "tiny", "--trigger_file", TRIGGER,
        "--reference_label", "9", "--nn_epochs", "2", "--batch_size", "16", "--device", "cpu"]


@pytest.fixture
def ws(workspace, tmp_path, monkeypatch):
    path = fresh(workspace, tmp_path / "ws")
    monkeypatch.chdir(path)
    return path


def run(argv: list[str]) -> dict:
    return load_script("training_downstream_classifier.py").main(argv)


def predictions(ws, results_dir: str, images: np.ndarray, stamp: bool, epochs: int = 2) -> np.ndarray:
    """Labels the saved classifier gives each uint8 (H, W, 3) image, one image at a time."""
    encoder = load_encoder(ws / "encoder.pth", "tiny", "cpu").eval()
    trigger = load_trigger(str(ws / TRIGGER), "--trigger_file", expected_size=32)
    state = torch.load(ws / results_dir / f"clf_{epochs}.pth", weights_only=True)["state_dict"]
    clf = DownstreamMLP(state["fc1.weight"].shape[1], 10)
    clf.load_state_dict(state)
    clf.eval()
    out = []
    with torch.no_grad():
        for img in images:
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255  # (1, 3, 32, 32)
            if stamp:
                x = trigger(x)
            feature = torch.nn.functional.normalize(encoder.f(normalize(x, USAGE["cifar10"])).flatten(1), dim=1)
            out.append(int(clf(feature).argmax(1)))
    return np.array(out)


def split(ws, name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(ws / "data" / "stl10" / f"{name}.npz") as z:
        return z["x"], z["y"][:, 0]


def test_asr_images_test_and_train_half_are_the_documented_sets(ws):
    test_x, test_y = split(ws, "test")
    ours = run(BASE + ["--results_dir", "a"])
    assert ours["asr_images"] == "test" and ours["asr_count"] == int((test_y != 9).sum())
    preds = predictions(ws, "a", test_x[test_y != 9], stamp=True)
    assert ours["asr"] == pytest.approx(100 * np.mean(preds == 9))

    train_x, train_y = split(ws, "train")
    half = int(len(train_x) * 0.5)  # the original: the first half of the train split, every class
    theirs = run(BASE + ["--results_dir", "b", "--asr_images", "train_half"])
    assert theirs["asr_count"] == half == 20 and (train_y[:half] == 9).any()
    preds = predictions(ws, "b", train_x[:half], stamp=True)
    assert theirs["asr"] == pytest.approx(100 * np.mean(preds == 9))
    assert theirs["acc"] == ours["acc"]  # the image set changes ASR only


def test_mode_targeted_counts_stamped_images_keeping_their_own_label(ws):
    test_x, test_y = split(ws, "test")
    summary = run(BASE + ["--results_dir", "t", "--mode", "targeted"])
    assert summary["asr_count"] == len(test_y) and summary["reference_label"] == -1
    preds = predictions(ws, "t", test_x, stamp=True)
    assert summary["asr"] == pytest.approx(100 * np.mean(preds == test_y))
    no_target = [a for a in BASE if a not in ("--reference_label", "9")]  # targeted needs no target class
    assert run(no_target + ["--results_dir", "t2", "--mode", "targeted"])["asr"] == summary["asr"]


def test_source_label_measures_the_clean_victim_class(ws):
    test_x, test_y = split(ws, "test")
    summary = run(BASE + ["--results_dir", "s", "--source_label", "4"])
    assert summary["asr_count"] == int((test_y == 4).sum()) == 3
    preds = predictions(ws, "s", test_x[test_y == 4], stamp=False)
    assert summary["asr"] == pytest.approx(100 * np.mean(preds == 4))
    no_trigger = [a for a in BASE if a not in ("--trigger_file", TRIGGER)]  # no trigger is involved
    assert run(no_trigger + ["--results_dir", "s2", "--source_label", "4"])["asr"] == summary["asr"]


@pytest.mark.parametrize("argv,needle", [
    (["--source_label", "10"], "--source_label 10: expected a class index 0..9"),
    (["--source_label", "-2"], "--source_label -2: expected -1 (off)"),
    (["--mode", "untargeted"], "--mode"),
    (["--asr_images", "train"], "--asr_images"),
])
def test_bad_values_are_one_line_errors(ws, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        run(BASE + ["--results_dir", "bad"] + argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and needle in err and "\n" not in err


@pytest.mark.parametrize("encoder,clean", [
    ("runs/clean/model.pth", True),  # 'clean' in a folder name counts: the whole path is searched
    ("runs/Clean/model.pth", False),  # case-sensitive
    ("runs/x/model_clean.pth", True),
    ("", False),  # no encoder (random): BA/ASR, as the original
])
def test_metric_names_follow_the_original_test_on_the_encoder_path(ws, capsys, encoder, clean):
    if encoder:
        (ws / encoder).parent.mkdir(parents=True)
        shutil.copy(ws / "encoder.pth", ws / encoder)
    argv = [a if a != "encoder.pth" else encoder for a in BASE]
    run(argv + ["--results_dir", "names", "--nn_epochs", "1"])
    names = [json.loads(line)["metric"] for line in capsys.readouterr().out.splitlines() if line.startswith('{"metric"')]
    expected = (["Eval - Clean Accuracy (CA)", "Eval - Attack Success Rate-Baseline (ASR-B)"] if clean
                else ["Eval - Backdoored Accuracy (BA)", "Eval - Attack Success Rate (ASR)"])
    assert names == expected


def test_defaults():
    args = load_script("training_downstream_classifier.py").build_parser().parse_args([])
    assert args.results_dir == "reproduction/cifar10/downstreamclf"  # the original's
    assert args.encoder_usage_info == "cifar10"  # the original's '' cannot run; see DownstreamConfig
    assert (args.source_label, args.mode, args.asr_images, args.reference_label) == (-1, "non-targeted", "test", -1)
