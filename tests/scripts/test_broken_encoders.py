"""A broken encoder gets no verdict, no trigger and no classifier: one line saying why (issue 21, item 3)."""
import pytest
import torch

from MODELS.checkpoint import save_checkpoint
from MODELS.simclr import build_model
from tests.scripts.conftest import run_cli


def broken(path, kind):
    """A tiny encoder whose backbone gives the same feature for every image, zeros, or overflowing values."""
    model = build_model("tiny")
    with torch.no_grad():
        for name, p in model.f.named_parameters():
            if kind == "constant":
                p.fill_(0.0 if name.endswith("weight") else 0.5)  # every layer outputs its bias: one vector
            elif kind == "zero":
                p.zero_()
            elif kind == "overflow" and p.dim() == 4:
                p.mul_(1e6)  # eight conv layers: features around 1e40 in float32 (inf) or huge
    save_checkpoint(path, model, epoch=1)
    return path


MAIN = ["--dataset", "cifar10", "--model", "tiny", "--encoder_usage_info", "cifar10", "--data_ratio", "1.0",
        "--re_steps", "3", "--monitor_every", "0", "--device", "cpu"]


@pytest.mark.parametrize("kind, says", [("constant", "nearly the same feature direction"), ("zero", "are zero"),
                                        ("overflow", "not finite|beyond what")])
@pytest.mark.parametrize("phase", ["detect", "nc"])
def test_main_refuses_to_judge_a_broken_encoder(workspace, kind, says, phase):
    enc = broken(workspace / f"broken-{kind}.pth", kind)
    out = f"broken-{kind}-{phase}"
    proc = run_cli("MAIN.py", ["--phase", phase, "--pretrained_encoder", str(enc), "--log_dir", out,
                               "--results_dir", out, *MAIN], workspace)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --pretrained_encoder") and any(s in line for s in says.split("|")), line
    assert not (workspace / out / "detect.json").exists() and not (workspace / out / "metrics-NC.json").exists()


def test_the_classifier_refuses_a_broken_encoder(workspace):
    enc = broken(workspace / "broken-constant-clf.pth", "constant")
    proc = run_cli("training_downstream_classifier.py", [
        "--dataset", "stl10", "--encoder", str(enc), "--model", "tiny", "--encoder_usage_info", "cifar10",
        "--results_dir", "broken-clf", "--nn_epochs", "1", "--device", "cpu"], workspace)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--encoder" in proc.stderr and "nearly the same feature direction" in proc.stderr
