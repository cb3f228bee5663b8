"""torchrun-style runs: 2 gloo CPU processes give the one-process results on the same global batch.

Each stage runs from its command line (``main([...])``) in 2 processes and in 1 process, from the same
inputs (a random tiny encoder, the white-square trigger, a small synthetic dataset), and the per-epoch
numbers are compared. What differs between the two is only the order of the sums (the global BatchNorm
statistics, the gradients averaged by DDP, the gathered rows). In float32 those rounding differences
are amplified by the optimisers (Adam gives a parameter whose gradient is rounding noise, such as a bias
in front of BatchNorm, a full step of either sign) and by BatchNorm over near-constant channels of this
tiny random encoder, to 1e-5 relative after a few steps, and the kNN accuracies are discrete decisions
that one such difference can flip. So the workers run every stage in float64 (torch's default dtype,
which the stages follow): the two runs then agree to ~1e-13 (measured) and are compared at
tests/precision.REL64 (1e-9). Per-rank BatchNorm statistics put the pre-training curve 1e-2 off, NT-Xent
without the gathered negatives 0.25: far outside that tolerance.

Unlearning is compared over one epoch (3 steps): with this tiny random encoder and batches of 16 its
later epochs are chaotic (in float32 a start nudged by a relative 1e-7 lands 14 % away by the fifth step).
"""
import csv
import runpy
from pathlib import Path

import pytest
import torch

from DATASETS import synthetic
from DATASETS.triggers import save_ground_truth_trigger
from MODELS.checkpoint import save_checkpoint
from MODELS.simclr import build_model
from tests.precision import REL64, assert_close64
from tests.ranks import run_ranks

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"synthetic": {"train": 48, "test": 20}, "synthetic_down": {"train": 40, "test": 20}}
LOSS_TOL = dict(rel=REL64, abs=0.0)  # float64 per-epoch numbers, from two summation orders (see above)


def _main(script: str):
    return runpy.run_path(str(ROOT / script), run_name="data_parallel_test")["main"]


def _stages(out_dir: Path, root: Path, tag: str) -> dict:
    """Every stage once, into root/tag; rank 0's metrics files are read back by the test."""
    torch.set_default_dtype(torch.float64)  # every stage in float64 (see the module's docstring)
    for name, sizes in SIZES.items():
        synthetic.SIZES[name] = sizes  # the worker is a fresh interpreter: same small splits as the parent
    common = ["--model", "tiny", "--encoder_usage_info", "synthetic", "--data_dir", str(root / "data"),
              "--device", "cpu"]
    knn = ["--knn-k", "5"]
    run = root / tag
    _main("pretraining_encoder.py")(common + knn + [
        "--pretraining_dataset", "synthetic", "--downstreamTask", "synthetic_down", "--epochs", "2",
        "--batch_size", "16", "--results_dir", str(run / "pre")])
    # resume: one epoch, then --resume to two, must end where the uninterrupted run ends
    _main("pretraining_encoder.py")(common + knn + [
        "--pretraining_dataset", "synthetic", "--downstreamTask", "synthetic_down", "--epochs", "1",
        "--batch_size", "16", "--results_dir", str(run / "pre-resumed")])
    _main("pretraining_encoder.py")(common + knn + [
        "--pretraining_dataset", "synthetic", "--downstreamTask", "synthetic_down", "--epochs", "2",
        "--batch_size", "16", "--results_dir", str(run / "pre-resumed"), "--resume"])
    _main("badencoder.py")(common + knn + [
        "--pretrained_encoder", str(root / "encoder.pth"), "--shadow_dataset", "synthetic",
        "--trigger_file", str(root / "trigger.npz"), "--reference_dataset", "synthetic_down",
        "--reference_label", "3", "--reference_count", "2", "--downstreamTask", "synthetic_down",
        "--epochs", "2", "--batch_size", "16", "--lr", "1e-2", "--results_dir", str(run / "bad")])
    _main("Unlearn-trigger.py")(common + knn + [
        "--seed", "1", "--phase", "moth", "--dataset", "synthetic", "--pretrained_encoder", str(root / "encoder.pth"),
        "--re_mask_pattern", str(root / "trigger.npz"), "--trigger_file", str(root / "trigger.npz"),
        "--reference_label", "3", "--downstreamTask", "synthetic_down", "--epochs", "1", "--batch_size", "16",
        "--lr", "0.05", "--data_ratio", "1", "--portion", "0.3", "--beta", "3.5",
        "--results_dir", str(run / "unl-ckpt"), "--log_dir", str(run / "unl-log")])
    _main("training_downstream_classifier.py")(common + [
        "--dataset", "synthetic_down", "--trigger_file", str(root / "trigger.npz"), "--encoder",
        str(root / "encoder.pth"), "--reference_label", "3", "--nn_epochs", "2", "--batch_size", "16",
        "--results_dir", str(run / "down")])
    return {}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as h:
        return [{k: float(v) if v else float("nan") for k, v in row.items()} for row in csv.DictReader(h)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    saved = {k: dict(v) for k, v in synthetic.SIZES.items()}
    try:
        synthetic.SIZES.update(SIZES)
        for name in SIZES:  # generated once here, so the two processes never write the same file
            synthetic.ensure_cached(name, root / "data")
    finally:
        synthetic.SIZES.clear()
        synthetic.SIZES.update(saved)
    torch.manual_seed(0)
    save_checkpoint(root / "encoder.pth", build_model("tiny"), 0)
    save_ground_truth_trigger(root / "trigger.npz")
    run_ranks(_stages, root, "one", world=1)
    run_ranks(_stages, root, "two", world=2)
    return root


def _assert_rows_close(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if ra[k] != ra[k]:  # nan: a column not measured that epoch
                assert rb[k] != rb[k], k
            else:
                assert rb[k] == pytest.approx(ra[k], **LOSS_TOL), (k, ra, rb)


@pytest.mark.parametrize("stage,metrics", [("pre", "pretrain-metrics.csv"), ("bad", "badencoder-metrics.csv"),
                                           ("unl-log", "unlearn-metrics.csv"), ("down", "downstream-metrics.csv")])
def test_two_processes_give_the_one_process_curve(runs, stage, metrics):
    _assert_rows_close(_rows(runs / "one" / stage / metrics), _rows(runs / "two" / stage / metrics))


def test_only_rank_0_writes_and_the_same_files(runs):
    for stage in ("pre", "bad", "unl-ckpt", "unl-log", "down"):
        one = sorted(p.name for p in (runs / "one" / stage).iterdir())
        two = sorted(p.name for p in (runs / "two" / stage).iterdir())
        assert one == two, stage
    assert not list((runs / "two").rglob("*.lock")) and not list((runs / "two").rglob("*.tmp*"))


def test_checkpoints_hold_plain_batchnorm_keys_and_close_weights(runs):
    """Plain state-dict keys (global BatchNorm is not saved as such) and the one-process weights (float64)."""
    for stage, name in (("pre", "model_2.pth"), ("bad", "model_2.pth"), ("unl-ckpt", "Harden_Unlearn_model_1.pth")):
        one = torch.load(runs / "one" / stage / name, weights_only=True)["state_dict"]
        two = torch.load(runs / "two" / stage / name, weights_only=True)["state_dict"]
        assert one.keys() == two.keys(), stage
        for k in one:
            if one[k].is_floating_point() and one[k].abs().max() > 0:
                assert_close64(two[k], one[k], what=f"{stage} {k}")
            else:  # step counters, and BatchNorm biases that BadEncoder keeps frozen at their initial 0
                assert torch.equal(two[k], one[k]), (stage, k)


def test_every_rank_resumes_from_rank_0s_checkpoint(runs):
    full = _rows(runs / "two" / "pre" / "pretrain-metrics.csv")
    resumed = _rows(runs / "two" / "pre-resumed" / "pretrain-metrics.csv")
    assert resumed == full  # the same processes, the same sums: equal, not just close
    a = torch.load(runs / "two" / "pre" / "model_2.pth", weights_only=True)["state_dict"]
    b = torch.load(runs / "two" / "pre-resumed" / "model_2.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
