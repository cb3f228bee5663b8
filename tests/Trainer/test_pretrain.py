"""SimCLR pre-training: the loss against a slow reference, the step, the epoch, the CLI with resume."""
import copy
import json
from pathlib import Path

import pytest
import torch

from DATASETS import synthetic
from DATASETS.augment import simclr_views
from DATASETS.stats import get_usage, normalize
from DATASETS.tensors import TensorSet
from MODELS.checkpoint import load_checkpoint, load_encoder
from MODELS.simclr import build_model
from Trainer import pretrain
from DEMO.demo import load_script
from Trainer.pretrain import pretrain_epoch, simclr_loss, simclr_step
from tests.MODELS.test_losses import slow_nt_xent

USAGE = get_usage("synthetic")
ROOT = Path(__file__).resolve().parents[2]


def test_simclr_loss_matches_a_slow_reference():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    images = torch.rand(6, 3, 32, 32)
    torch.manual_seed(3)
    loss = simclr_loss(model, images, USAGE, temperature=0.5)
    torch.manual_seed(3)  # replay the same two views
    v1, v2 = simclr_views(images)
    _, z1 = model(normalize(v1, USAGE))  # views pass separately, as in BadEncoder's pre-training
    _, z2 = model(normalize(v2, USAGE))
    assert loss.item() == pytest.approx(slow_nt_xent(z1, z2, 0.5), rel=1e-5)


def test_simclr_step_is_one_adam_step_on_the_whole_model():
    torch.manual_seed(0)
    model = build_model("tiny")
    twin = copy.deepcopy(model)
    images = torch.rand(4, 3, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-6)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2, weight_decay=1e-6)
    torch.manual_seed(7)
    loss = simclr_step(model, opt, images, USAGE, 0.5)
    torch.manual_seed(7)
    twin.train()
    ref = simclr_loss(twin, images, USAGE, 0.5)
    ref.backward()
    twin_opt.step()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(model.g[0].weight, build_model("tiny").g[0].weight)  # the head trains too


def test_epoch_uses_full_batches_only(monkeypatch):
    seen = []

    def fake_step(model, optimizer, images, usage, temperature):
        seen.append(images.shape[0])
        return torch.tensor(1.5)

    monkeypatch.setattr(pretrain, "simclr_step", fake_step)
    data = TensorSet(torch.rand(10, 3, 32, 32), torch.zeros(10, dtype=torch.long), 10)
    row = pretrain_epoch(None, None, data, batch_size=4, usage=USAGE, temperature=0.5)
    assert seen == [4, 4] and row["loss"] == pytest.approx(1.5)  # BadEncoder drops the last partial batch



@pytest.fixture
def small_synthetic(monkeypatch, tmp_path):
    monkeypatch.setitem(synthetic.SIZES, "synthetic", {"train": 48, "test": 20})
    monkeypatch.setitem(synthetic.SIZES, "synthetic_down", {"train": 40, "test": 20})
    return tmp_path


def args(root, epochs, *extra):
    return ["--pretraining_dataset", "synthetic", "--model", "tiny", "--epochs", str(epochs), "--batch_size", "16",
            "--results_dir", str(root / "run"), "--data_dir", str(root / "data"), "--encoder_usage_info", "synthetic",
            "--downstreamTask", "synthetic_down", "--knn-k", "5", "--device", "cpu", "--save_every", "2", *extra]


def test_cli_writes_checkpoints_and_resume_matches_an_uninterrupted_run(small_synthetic):
    root = small_synthetic
    main = load_script("pretraining_encoder.py").main
    full = main(args(root / "a", 3))
    assert [r["epoch"] for r in full["per_epoch"]] == [1, 2, 3]
    assert all(0 <= r["knn_acc"] <= 100 for r in full["per_epoch"])
    kept = sorted(p.name for p in (root / "a" / "run").glob("model_*.pth"))
    assert kept == ["model_2.pth", "model_3.pth"]  # epoch 1 dropped: not a milestone of --save_every 2
    ckpt = load_checkpoint(root / "a" / "run" / "model_3.pth", "--encoder")
    assert ckpt["epoch"] == 3 and "optimizer" in ckpt and "rng" in ckpt
    assert next(iter(ckpt["state_dict"])).startswith("f.f.")  # whole-model state dict, BadEncoder's key names
    load_encoder(root / "a" / "run" / "model_3.pth", "tiny", "cpu")

    main(args(root / "b", 2))
    with pytest.raises(SystemExit) as exc:  # an earlier run's outputs are never overwritten silently
        main(args(root / "b", 3))
    assert exc.value.code == 2
    resumed = main(args(root / "b", 3, "--resume"))
    assert [r["epoch"] for r in resumed["per_epoch"]] == [1, 2, 3]
    a = load_checkpoint(root / "a" / "run" / "model_3.pth", "a")["state_dict"]
    b = load_checkpoint(root / "b" / "run" / "model_3.pth", "b")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((root / "b" / "run" / "pretrain-metrics.json").read_text())
    assert summary["final_loss"] == pytest.approx(full["final_loss"])


def test_cli_bad_flags_fail_with_one_line(small_synthetic, capsys):
    main = load_script("pretraining_encoder.py").main
    for bad, flag in ((["--model", "vgg"], "--model"), (["--batch_size", "1000"], "--batch_size"),
                      (["--pretraining_dataset", "mnist"], "--pretraining_dataset")):
        with pytest.raises(SystemExit) as exc:
            main(args(small_synthetic, 1) + bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and flag in err and "\n" not in err
