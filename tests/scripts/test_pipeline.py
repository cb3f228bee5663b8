"""The three stages in sequence through their command lines, on a tiny encoder and tiny data."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from MODELS.checkpoint import load_encoder
from tests.scripts.conftest import load_script, run_cli

MAIN_ARGS = ["--seed", "0", "--phase", "moth", "--dataset", "cifar10", "--model", "tiny", "--pretrained_encoder",
             "encoder.pth", "--batch_size", "16", "--epochs", "2", "--harden_lr", "1e-3", "--re_lr", "1e-2",
             "--data_ratio", "1.0", "--encoder_usage_info", "cifar10", "--log_dir", "logs", "--results_dir", "ckpts",
             "--similarity_threshold", "0.90", "--gpu", "0", "--attack_size", "8", "--re_steps", "4",
             "--downstreamTask", "stl10", "--reference_label", "9", "--init_cost", "5e-2", "--epsilon", "1e-3",
             "--patience", "3", "--knn-k", "5", "--monitor_every", "2", "--device", "cpu"]


def check_trigger_npz(path, best=False):
    with np.load(path, allow_pickle=False) as z:
        assert z["mask"].shape == (3, 32, 32) and z["pattern"].shape == (3, 32, 32)
        assert 0 <= z["mask"].min() and z["mask"].max() <= 1 and 0 <= z["pattern"].min() and z["pattern"].max() <= 1
        assert np.array_equal(z["mask"][0], z["mask"][1])  # one mask repeated over channels
        if best:
            return int(z["idx"])


@pytest.fixture(scope="module")
def stages(workspace):
    """Run MAIN (moth and nc), Unlearn-trigger and the downstream classifier once, through the CLI."""
    out = {"main": run_cli("MAIN.py", MAIN_ARGS, workspace)}
    out["nc"] = run_cli("MAIN.py", [a if a != "moth" else "nc" for a in MAIN_ARGS] + ["--log_dir", "logs-nc"], workspace)
    out["unlearn"] = run_cli("Unlearn-trigger.py", [
        "--seed", "0", "--results_dir", "unlearned", "--phase", "moth", "--dataset", "stl10", "--model", "tiny",
        "--pretrained_encoder", "encoder.pth", "--batch_size", "16", "--epochs", "2", "--lr", "7e-1",
        "--data_ratio", "1.0", "--encoder_usage_info", "cifar10", "--log_dir", "logs", "--reference_label", "9",
        "--gpu", "0", "--downstreamTask", "stl10", "--re_mask_pattern", "logs/mask-pattern-best.npz",
        "--portion", "0.3", "--beta", "3.5", "--knn-k", "5", "--device", "cpu"], workspace)
    out["downstream"] = run_cli("training_downstream_classifier.py", [
        "--dataset", "stl10", "--trigger_file", "trigger/trigger_pt_white_21_10_ap_replace.npz",
        "--encoder", "unlearned/Harden_Unlearn_model_2.pth", "--model", "tiny", "--reference_label", "9",
        "--gpu", "1", "--nn_epochs", "3", "--batch_size", "16", "--encoder_usage_info", "cifar10",
        "--results_dir", "clf", "--device", "cpu"], workspace)
    for name, proc in out.items():
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return workspace, out


def test_main_moth_writes_the_original_outputs(stages):
    ws, _ = stages
    logs = ws / "logs"
    rounds = sorted(logs.glob("mask-pattern-[0-9]*.npz"))
    assert 1 <= len(rounds) <= 8  # 64 images / batch 16 = 4 rounds per epoch, 2 epochs, maybe stopped early
    for p in rounds:
        check_trigger_npz(p)
    idx = check_trigger_npz(logs / "mask-pattern-best.npz", best=True)
    assert 0 <= idx < len(rounds)
    with open(logs / "re_loss.csv") as h:
        rows = list(csv.DictReader(h))
    assert list(rows[0]) == ["loss", "loss_sim", "loss_reg", "refer_sim"] and len(rows) == len(rounds)
    assert (logs / "setting.txt").read_text().count("pretrained_encoder: encoder.pth") == 1
    assert list(ws.glob("ckpts/Harden_model_*.pth"))
    summary = json.loads((logs / "metrics.json").read_text())
    assert summary["best_round"] == idx and summary["rounds"] == len(rounds)
    assert all(d >= 0 for d in summary["distance_per_round"])
    with open(logs / "metrics.csv") as h:
        metrics = list(csv.DictReader(h))
    accs = [float(r["knn_acc"]) for r in metrics if r["knn_acc"] != "nan"]
    assert accs and all(0 <= a <= 100 for a in accs)
    assert (logs / "preview-0.png").is_file()


def test_main_nc_writes_one_trigger(stages):
    ws, _ = stages
    check_trigger_npz(ws / "logs-nc" / "mask-pattern-NC.npz")
    summary = json.loads((ws / "logs-nc" / "metrics-NC.json").read_text())
    assert summary["l1"] >= 0 and summary["steps"] >= 4


def test_unlearn_writes_every_epoch_and_loss_log(stages):
    ws, _ = stages
    for e in (1, 2):
        state = torch.load(ws / "unlearned" / f"Harden_Unlearn_model_{e}.pth", weights_only=True)
        assert state["epoch"] == e and "optimizer" in state and "state_dict" in state
    losses = np.load(ws / "logs" / "loss-log.npy")
    assert losses.shape == (2,) and np.isfinite(losses).all()
    model = load_encoder(ws / "unlearned" / "Harden_Unlearn_model_2.pth", "tiny", torch.device("cpu"))
    assert model.feature_dim == 64


def test_downstream_prints_badencoder_json_and_saves_classifier(stages):
    ws, out = stages
    lines = [json.loads(l) for l in out["downstream"].stdout.splitlines() if l.startswith("{\"metric\"")]
    acc = [l for l in lines if l["metric"] == "Eval - Backdoored Accuracy (BA)"]
    asr = [l for l in lines if l["metric"] == "Eval - Attack Success Rate (ASR)"]
    assert [l["epoch"] for l in acc] == [1, 2, 3] and len(asr) == 3
    assert all(0 <= l["value"] <= 100 for l in acc + asr)
    assert (ws / "clf" / "clf_3.pth").is_file()
    summary = json.loads((ws / "clf" / "downstream-metrics.json").read_text())
    assert 0 <= summary["acc"] <= 100 and 0 <= summary["asr"] <= 100
    assert summary["acc"] == acc[-1]["value"]


def test_main_called_directly_refuses_to_overwrite_then_overwrites(stages, monkeypatch):
    ws, _ = stages
    monkeypatch.chdir(ws)
    main = load_script("MAIN.py").main
    args = [a if a != "moth" else "nc" for a in MAIN_ARGS] + ["--log_dir", "logs-nc", "--re_steps", "2"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    summary = main(args + ["--overwrite"])
    assert summary["steps"] >= 2 and math.isfinite(summary["l1"])
