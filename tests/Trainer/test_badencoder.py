"""BadEncoder injection: the three loss terms against a slow reference, frozen BatchNorm, the
reference images from both sources, and the CLI."""
import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from DATASETS import synthetic
from DATASETS.stats import get_usage, normalize
from DATASETS.tensors import TensorSet
from DATASETS.triggers import GroundTruthTrigger, save_ground_truth_trigger, white_square_trigger
from MODELS.checkpoint import load_checkpoint, save_checkpoint
from MODELS.simclr import build_model
from Trainer.badencoder import (badencoder_epoch, badencoder_loss, freeze_batchnorm, load_references,
                                reference_view)
from Trainer.configs import BadEncoderConfig
from UTILS.errors import UserError

USAGE = get_usage("cifar10")
ROOT = Path(__file__).resolve().parents[2]
TRIGGER = GroundTruthTrigger(**white_square_trigger())


def _cos(a, b):
    return F.cosine_similarity(a, b, dim=0).item()


def slow_badencoder_loss(bad, clean, images, references, augmented, *, lambda1, lambda2):
    """Each term written out image by image, each image through the encoders on its own."""
    f = lambda net, x: net(normalize(x[None], USAGE))[0]  # noqa: E731
    b, r = len(images), len(references)
    l0 = -np.mean([_cos(f(bad, TRIGGER(images[i:i + 1])[0]), f(bad, references[j])) for i in range(b) for j in range(r)])
    l1 = -np.mean([_cos(f(bad, augmented[i]), f(clean, references[i % r])) for i in range(b)])
    l2 = -np.mean([_cos(f(bad, images[i]), f(clean, images[i])) for i in range(b)])
    return l0, l1, l2, l0 + lambda1 * l1 + lambda2 * l2


@pytest.mark.parametrize("n_refs", [1, 3])
def test_badencoder_loss_matches_a_slow_reference(n_refs):
    torch.manual_seed(0)
    clean = build_model("tiny").f.eval()
    bad = copy.deepcopy(clean)
    with torch.no_grad():
        for p in bad.parameters():
            p.add_(0.05 * torch.randn_like(p))  # f_b != f_c, so every term is non-trivial
    bad.train()
    freeze_batchnorm(bad)
    images, references = torch.rand(5, 3, 32, 32), torch.rand(n_refs, 3, 32, 32)
    torch.manual_seed(11)
    loss, parts = badencoder_loss(bad, clean, images, trigger=TRIGGER, references=references, usage=USAGE,
                                  lambda1=0.7, lambda2=1.3)
    torch.manual_seed(11)  # replay the augmentation of the references
    augmented = reference_view(references[torch.arange(5) % n_refs])
    with torch.no_grad():
        l0, l1, l2, total = slow_badencoder_loss(bad, clean, images, references, augmented, lambda1=0.7, lambda2=1.3)
    assert parts["loss0"].item() == pytest.approx(l0, abs=1e-5)
    assert parts["loss1"].item() == pytest.approx(l1, abs=1e-5)
    assert parts["loss2"].item() == pytest.approx(l2, abs=1e-5)
    assert loss.item() == pytest.approx(total, abs=1e-5)
    assert parts["loss2"].item() > -1 and parts["loss0"].item() > -1


def test_identical_encoders_give_perfect_utility_term():
    torch.manual_seed(0)
    clean = build_model("tiny").f.eval()
    bad = copy.deepcopy(clean)
    freeze_batchnorm(bad)
    _, parts = badencoder_loss(bad, clean, torch.rand(4, 3, 32, 32), trigger=TRIGGER,
                               references=torch.rand(1, 3, 32, 32), usage=USAGE, lambda1=1, lambda2=1)
    assert parts["loss2"].item() == pytest.approx(-1.0, abs=1e-5)


def test_epoch_trains_the_backbone_but_not_batchnorm_nor_the_clean_copy():
    torch.manual_seed(0)
    model = build_model("tiny")
    clean = copy.deepcopy(model.f).eval().requires_grad_(False)
    clean_state = copy.deepcopy(clean.state_dict())
    freeze_batchnorm(model.f)
    before = copy.deepcopy(model.f.state_dict())
    opt = torch.optim.SGD([p for p in model.f.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    data = TensorSet(torch.rand(12, 3, 32, 32), torch.zeros(12, dtype=torch.long), 10)
    row = badencoder_epoch(model.f, clean, opt, data, batch_size=4, trigger=TRIGGER,
                           references=torch.rand(2, 3, 32, 32), usage=USAGE, lambda1=1.0, lambda2=1.0)
    assert set(row) == {"loss", "loss0", "loss1", "loss2"}
    assert row["loss"] == pytest.approx(row["loss0"] + row["loss1"] + row["loss2"], abs=1e-6)
    after = model.f.state_dict()
    bn = [f"{name}.{k}" for name, m in model.f.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
          for k in m.state_dict()]
    assert len(bn) > 10 and all(torch.equal(after[k], before[k]) for k in bn)  # weights and running stats
    assert not torch.equal(after["f.0.weight"], before["f.0.weight"])  # the convolutions move
    assert all(torch.equal(clean.state_dict()[k], v) for k, v in clean_state.items())


def test_references_from_a_dataset_class_or_an_npz(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.SIZES, "synthetic_down", {"train": 40, "test": 10})
    cfg = BadEncoderConfig(results_dir="r", pretrained_encoder="e.pth", reference_dataset="synthetic_down",
                           reference_label=3, reference_count=2, data_dir=str(tmp_path)).validate()
    refs = load_references(cfg, 32)
    x, y = synthetic.generate("synthetic_down", "train")
    assert refs.shape == (2, 32, 32, 3) and refs.dtype == np.uint8
    np.testing.assert_array_equal(refs, x[np.flatnonzero(y == 3)[:2]])
    np.savez(tmp_path / "ref.npz", x=refs[:1], y=np.array([3]))
    cfg = BadEncoderConfig(results_dir="r", pretrained_encoder="e.pth", reference_file=str(tmp_path / "ref.npz"))
    np.testing.assert_array_equal(load_references(cfg.validate(), 32), refs[:1])
    np.savez(tmp_path / "bad.npz", x=refs[:1].astype(np.float32))
    with pytest.raises(UserError, match="--reference_file.*uint8"):
        load_references(BadEncoderConfig(reference_file=str(tmp_path / "bad.npz")), 32)


@pytest.mark.parametrize("fields, flag", [({}, "--reference_file"),
                                          ({"reference_file": "a.npz", "reference_dataset": "synthetic"},
                                           "--reference_file and --reference_dataset"),
                                          ({"reference_dataset": "synthetic"}, "--reference_label"),
                                          ({"reference_file": "a.npz", "pretrained_encoder": ""},
                                           "--pretrained_encoder"),
                                          ({"reference_file": "a.npz", "lambda1": -1.0}, "--lambda1")])
def test_config_names_the_bad_flag(fields, flag):
    values = {"results_dir": "r", "pretrained_encoder": "e.pth", **fields}
    with pytest.raises(UserError, match=flag):
        BadEncoderConfig(**values).validate()


def test_cli_injects_and_writes_its_files(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.SIZES, "synthetic", {"train": 40, "test": 10})
    monkeypatch.setitem(synthetic.SIZES, "synthetic_down", {"train": 40, "test": 30})
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "clean.pth", build_model("tiny"), epoch=1)
    save_ground_truth_trigger(tmp_path / "trigger.npz")
    spec = importlib.util.spec_from_file_location("badencoder_script", ROOT / "badencoder.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    summary = script.main([
        "--pretrained_encoder", str(tmp_path / "clean.pth"), "--model", "tiny", "--shadow_dataset", "synthetic",
        "--trigger_file", str(tmp_path / "trigger.npz"), "--reference_dataset", "synthetic_down",
        "--reference_label", "2", "--reference_count", "2", "--epochs", "2", "--batch_size", "16", "--lr", "0.01",
        "--results_dir", str(tmp_path / "bad"), "--data_dir", str(tmp_path / "data"), "--knn-k", "5",
        "--encoder_usage_info", "synthetic", "--device", "cpu"])
    out = tmp_path / "bad"
    assert [r["epoch"] for r in summary["per_epoch"]] == [0, 1, 2]
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_2.pth"]
    for r in summary["per_epoch"]:
        assert 0 <= r["knn_acc"] <= 100 and 0 <= r["knn_asr"] <= 100
    rows = summary["per_epoch"][1:]
    assert all(-1 - 1e-6 <= r[k] <= 1 + 1e-6 for r in rows for k in ("loss0", "loss1", "loss2"))
    with np.load(out / "reference.npz") as z:
        assert z["x"].shape == (2, 32, 32, 3) and (z["y"] == 2).all()
    state = load_checkpoint(out / "model_2.pth", "x")["state_dict"]
    clean = load_checkpoint(tmp_path / "clean.pth", "x")["state_dict"]
    assert all(torch.equal(state[k], clean[k]) for k in clean if k.startswith("g."))  # the head is untouched
    assert not torch.equal(state["f.f.0.weight"], clean["f.f.0.weight"])
    assert json.loads((out / "badencoder-metrics.json").read_text())["reference_count"] == 2
