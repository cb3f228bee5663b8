"""Unlearning (``Unlearn-trigger.py``): the loss, the stamped positions, the augmentation, the
initial-similarity pass and the epoch, each against a slow reference written from the original's
description; then the script on a tiny synthetic set."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from DATASETS import synthetic
from DATASETS.augment import unlearn_augmentation, unlearn_view
from DATASETS.stats import get_usage, normalize
from DATASETS.tensors import TensorSet
from DATASETS.triggers import InvertedTrigger
from MODELS import nt_xent
from MODELS.checkpoint import save_checkpoint
from MODELS.simclr import build_model
from Trainer import unlearn as U
from Trainer.configs import UnlearnConfig
from DEMO.demo import load_script
from UTILS.errors import UserError
from tests.MODELS.test_losses import slow_nt_xent

USAGE = get_usage("cifar10")
ROOT = Path(__file__).resolve().parents[2]


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _trigger() -> InvertedTrigger:
    g = torch.Generator().manual_seed(11)
    return InvertedTrigger(torch.rand(32, 32, generator=g) * 0.3, torch.rand(3, 32, 32, generator=g))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(a @ b / (a.norm() * b.norm()))


# ---------------------------------------------------------------- the loss

def original_contrastive(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """The original's contrastive_loss, as it is described: exp-similarity matrix of the 2B normalised
    rows without its diagonal, positives exp(cos(z1_i, z2_i) / t) counted for both views."""
    out = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = out.shape[0]
    sim = torch.exp(out @ out.T / t)
    off_diagonal = sim.masked_select(~torch.eye(n, dtype=torch.bool)).view(n, n - 1)
    pos = torch.exp((F.normalize(z1, dim=-1) * F.normalize(z2, dim=-1)).sum(-1) / t)
    pos = torch.cat([pos, pos])
    return (-torch.log(pos / off_diagonal.sum(-1))).mean()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_nt_xent_is_the_original_contrastive_loss(batch):
    g = torch.Generator().manual_seed(batch)
    z1, z2 = torch.randn(batch, 16, generator=g), torch.randn(batch, 16, generator=g)
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(original_contrastive(z1, z2, 0.5).item(), rel=1e-5, abs=1e-7)


def slow_unlearn_loss(model, images, trigger, injected: list[int], beta: float, t: float) -> tuple[float, float]:
    """Two train-mode passes built position by position: pass 1 holds the image at injected positions
    and the (identity) view A elsewhere, pass 2 the stamped image and view B. Returns (contrastive, unlearn)."""
    b = images.shape[0]
    clean = [i for i in range(b) if i not in injected]
    first = torch.stack([images[i] for i in range(b)])
    second = torch.stack([trigger(images[i:i + 1])[0] if i in injected else images[i] for i in range(b)])
    model.train()
    _, z1 = model(normalize(first, USAGE))
    _, z2 = model(normalize(second, USAGE))
    contrastive = slow_nt_xent(z1[clean], z2[clean], t) if clean else 0.0
    unlearn = -sum(_cos(z1[i], z2[i]) for i in injected) / len(injected) if injected else 0.0
    return contrastive, unlearn


@pytest.mark.parametrize("injected", [[5, 0, 3], [2], [], list(range(8))])
def test_unlearn_loss_is_two_train_mode_passes(injected, float64):  # float64: compared at 1e-9
    torch.manual_seed(0)
    model = build_model("tiny").train()
    twin = copy.deepcopy(model)
    images, trigger = _images(8), _trigger()
    inj = torch.tensor(injected, dtype=torch.long)
    clean = torch.tensor([i for i in range(8) if i not in injected], dtype=torch.long)
    loss, parts = U.unlearn_loss(model, images, trigger, USAGE, injected=inj, clean=clean, beta=3.5, temperature=0.5,
                                 augment=identity)
    contrastive, unlearn = slow_unlearn_loss(twin, images, trigger, injected, beta=3.5, t=0.5)
    assert parts["contrastive"].item() == pytest.approx(contrastive, rel=1e-9, abs=1e-12)
    assert parts["unlearn"].item() == pytest.approx(unlearn, rel=1e-9, abs=1e-12)
    assert loss.item() == pytest.approx(contrastive + 3.5 * unlearn, rel=1e-9, abs=1e-12)
    # two passes also mean two BatchNorm updates, the same as the reference's
    for (name, a), b in zip(model.named_buffers(), twin.buffers()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), name


def test_one_batch_of_both_passes_would_differ():
    """Why the two passes matter: in train mode BatchNorm normalises over what goes through together."""
    torch.manual_seed(0)
    model = build_model("tiny").train()
    images, trigger = _images(8), _trigger()
    inj, clean = torch.tensor([1, 4]), torch.tensor([0, 2, 3, 5, 6, 7])
    loss, _ = U.unlearn_loss(copy.deepcopy(model), images, trigger, USAGE, injected=inj, clean=clean, beta=3.5,
                             temperature=0.5, augment=identity)
    first, second = U.unlearn_inputs(images, trigger, inj, clean, identity)
    _, z = model(normalize(torch.cat([first, second]), USAGE))
    z1, z2 = z[:8], z[8:]
    joint = nt_xent(z1[clean], z2[clean], 0.5) - 3.5 * (z1[inj] * z2[inj]).sum(1).mean()
    assert abs(loss.item() - joint.item()) > 1e-3


def test_unlearn_inputs_place_views_and_stamps_by_position():
    images, trigger = _images(6), _trigger()
    inj, clean = torch.tensor([4, 1]), torch.tensor([0, 2, 3, 5])
    calls = []

    def tag(x):  # a recognisable "augmentation": each call adds its call number
        calls.append(x.shape[0])
        return x * 0 + len(calls) / 10

    first, second = U.unlearn_inputs(images, trigger, inj, clean, tag)
    assert calls == [4, 4, 1]  # view A, view B, then the draw of the original's unused third copy
    assert torch.equal(first[inj], images[inj]) and torch.equal(second[inj], trigger(images[inj]))
    assert torch.all(first[clean] == 0.1) and torch.all(second[clean] == 0.2)


# ---------------------------------------------------------------- the stamped positions

@pytest.mark.parametrize("batch,portion", [(128, 0.3), (10, 0.3), (7, 0.5), (5, 1.0), (3, 0.3)])
def test_injected_indices_are_numpys_seeded_choice(batch, portion):
    saved = np.random.get_state()
    np.random.seed(1234)
    before = np.random.get_state()
    for counter in range(25):
        got = U.injected_indices(batch, portion, counter)
        expected = np.random.RandomState(counter).choice(np.arange(batch), int(batch * portion), replace=False)
        assert np.array_equal(got, expected), counter
        injected, clean = U.split_batch(batch, portion, counter)
        assert injected.tolist() == expected.tolist()
        assert clean.tolist() == sorted(set(range(batch)) - set(expected.tolist()))  # ascending rest
    after = np.random.get_state()
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(before, after))
    # the original's global-RNG form gives the same draw
    np.random.seed(3)
    assert np.array_equal(np.random.choice(np.arange(batch), int(batch * portion), replace=False),
                          U.injected_indices(batch, portion, 3))
    np.random.set_state(saved)


def test_the_batch_counter_runs_on_across_epochs(monkeypatch):
    seen = []
    real = U.split_batch

    def spy(batch, portion, counter):
        seen.append((batch, counter))
        return real(batch, portion, counter)

    monkeypatch.setattr(U, "split_batch", spy)
    torch.manual_seed(0)
    model = build_model("tiny")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = TensorSet(_images(9), torch.zeros(9, dtype=torch.long), 10)
    per_epoch = len(U.epoch_batches(9, 4))  # 4, 4, and a lone last image left out
    assert per_epoch == 2
    for epoch in (1, 2):
        U.unlearn_epoch(model, opt, data, batch_size=4, trigger=_trigger(), usage=USAGE, portion=0.5, beta=1.0,
                        temperature=0.5, first_batch=(epoch - 1) * per_epoch, augment=identity)
    assert seen == [(4, 0), (4, 1), (4, 2), (4, 3)]


# ---------------------------------------------------------------- the augmentation

def test_unlearn_view_shares_one_torchvision_draw_across_the_batch():
    x = _images(6, seed=2)
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = unlearn_view(x)
        torch.manual_seed(seed)
        flipped = bool(torch.rand(1) < 0.5)  # the first draw: RandomCrop at full size draws nothing
        flips.add(flipped)
        rest = unlearn_augmentation(32, 32).transforms[2:]  # jitter, grayscale
        torch.manual_seed(seed)
        torch.rand(1)
        expected = x.flip(-1) if flipped else x
        for t in rest:
            expected = t(expected)
        assert torch.equal(out, expected), seed  # every image: the same flip, jitter order/factors, grayscale
        torch.manual_seed(seed)  # one image at a time from the same RNG state: the same parameters
        singles = []
        for i in range(6):
            torch.manual_seed(seed)
            singles.append(unlearn_view(x[i:i + 1])[0])
        torch.testing.assert_close(out, torch.stack(singles), atol=1e-6, rtol=0)
    assert flips == {True, False}


def test_unlearn_crop_is_the_identity_and_draws_nothing():
    x = _images(4, seed=3)
    crop = unlearn_augmentation(32, 32).transforms[0]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert torch.equal(crop(x), x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(unlearn_view(x[:0]), x[:0])


# ---------------------------------------------------------------- the initial-similarity pass

@pytest.mark.parametrize("update_bn", [True, False])
def test_initial_similarity_matches_the_original_pass(update_bn, float64):  # float64: compared at 1e-9
    torch.manual_seed(0)
    model = build_model("tiny")
    model.eval()
    twin = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.f.named_buffers()}
    images, trigger = _images(10, seed=4), _trigger()
    torch.manual_seed(9)
    got = U.initial_similarity(model.f, images, trigger, USAGE, update_bn=update_bn)
    # reference: train mode, four passes over the whole set, the first on un-normalised pixels
    torch.manual_seed(9)
    f = twin.f.train()
    with torch.no_grad():
        raw = f(images)
        stamped = f(normalize(trigger(images), USAGE))
        v1, v2 = unlearn_view(images), unlearn_view(images)
        a, b = f(normalize(v1, USAGE)), f(normalize(v2, USAGE))
    init_sim = sum(_cos(stamped[i], raw[i]) for i in range(10)) / 10
    test_sim = sum(_cos(a[i], b[i]) for i in range(10)) / 10
    assert got["init_sim"] == pytest.approx(init_sim, rel=1e-9)
    assert got["test_sim"] == pytest.approx(test_sim, rel=1e-9)
    assert not model.f.training  # its mode is given back
    after = dict(model.f.named_buffers())
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    if update_bn:
        assert moved and all(torch.allclose(after[k], v, rtol=1e-9, atol=1e-12)
                             for k, v in twin.f.named_buffers())  # moved exactly as by the four passes
    else:
        assert moved == []


# ---------------------------------------------------------------- batches and settings

def test_a_lone_last_image_is_left_out():
    assert U.epoch_batches(129, 128) == [(0, 128)]
    assert U.epoch_batches(130, 128) == [(0, 128), (128, 130)]
    assert U.epoch_batches(128, 128) == [(0, 128)]
    assert U.epoch_batches(5, 8) == [(0, 5)]


def test_129_images_with_batch_128_train(capsys):
    torch.manual_seed(0)
    model = build_model("tiny")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    data = TensorSet(_images(129), torch.zeros(129, dtype=torch.long), 10)
    U.check_unlearning_set(129, 128, 1.0)
    assert capsys.readouterr().out.count("last batch of 1 image") == 1
    row = U.unlearn_epoch(model, opt, data, batch_size=128, trigger=_trigger(), usage=USAGE, portion=0.3, beta=3.5,
                          temperature=0.5)
    assert all(math.isfinite(v) for v in row.values())


def test_a_batch_without_stamped_images_has_no_unlearning_term():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    inj, clean = U.split_batch(3, 0.3, 0)  # int(3 * 0.3) = 0
    assert inj.numel() == 0
    loss, parts = U.unlearn_loss(model, _images(3), _trigger(), USAGE, injected=inj, clean=clean, beta=3.5,
                                 temperature=0.5)
    assert parts["unlearn"].item() == 0.0 and math.isfinite(loss.item())


def test_the_epoch_loss_is_the_mean_of_batch_losses(monkeypatch):
    values = iter([1.0, 2.0, 6.0])

    def fake_loss(model, images, *args, **kwargs):
        v = torch.tensor(next(values), requires_grad=True)
        return v * 1, {"contrastive": v.detach(), "unlearn": v.detach() * 0}

    monkeypatch.setattr(U, "unlearn_loss", fake_loss)
    model = build_model("tiny")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    data = TensorSet(_images(10), torch.zeros(10, dtype=torch.long), 10)
    row = U.unlearn_epoch(model, opt, data, batch_size=4, trigger=_trigger(), usage=USAGE, portion=0.3, beta=1.0,
                          temperature=0.5)  # batches of 4, 4, 2
    assert row["loss"] == pytest.approx(3.0)  # each batch weighs the same, whatever its size


@pytest.mark.parametrize("changes,flag", [({"batch_size": 1}, "--batch_size 1: expected at least 2"),
                                          ({"phase": "test"}, "--phase test: not supported"),
                                          ({"phase": "nc"}, "--phase nc: not supported"),
                                          ({"input_type": "clean_encoder"},
                                           "--input_type clean_encoder: not supported"),
                                          ({"init_sim_bn_update": "maybe"}, "--init_sim_bn_update maybe")])
def test_unsupported_settings_are_refused(changes, flag):
    cfg = UnlearnConfig(re_mask_pattern="t.npz", **changes)
    with pytest.raises(UserError, match=flag.replace("(", r"\(")):
        cfg.validate()


def test_a_set_of_one_image_is_refused():
    with pytest.raises(UserError, match="--data_ratio 0.01: expected a share holding at least 2 images"):
        U.check_unlearning_set(1, 128, 0.01)


def test_defaults_are_the_originals():
    d = UnlearnConfig()
    assert (d.gpu, d.log_dir, d.results_dir, d.pretrained_encoder) == ("2", "MSE-test-loss", "", "clean_enc.pth")
    assert (d.batch_size, d.beta, d.epochs, d.lr, d.portion, d.downstreamTask, d.reference_label) == \
        (128, 1.0, 2, 1e-4, 1.0, "svhn", 0)
    assert (d.phase, d.input_type, d.init_sim_bn_update) == ("moth", "poisoned_encoder", "on")


# ---------------------------------------------------------------- the script


@pytest.fixture
def tiny_run(monkeypatch, tmp_path):
    """17 synthetic training images (batches of 16 and a lone 1), a tiny encoder and an inverted trigger."""
    monkeypatch.setitem(synthetic.SIZES, "synthetic", {"train": 17, "test": 20})
    monkeypatch.setitem(synthetic.SIZES, "synthetic_down", {"train": 40, "test": 20})
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "enc.pth", build_model("tiny"), 0)
    trig = _trigger()
    np.savez(tmp_path / "trigger.npz", mask=trig.mask.numpy(), pattern=trig.pattern.numpy())
    return tmp_path


def cli_args(root: Path, out: str, *extra: str) -> list[str]:
    return ["--dataset", "synthetic", "--model", "tiny", "--pretrained_encoder", str(root / "enc.pth"),
            "--re_mask_pattern", str(root / "trigger.npz"), "--encoder_usage_info", "synthetic",
            "--batch_size", "16", "--epochs", "1", "--lr", "0.05", "--portion", "0.3", "--beta", "3.5",
            "--monitor_every", "0", "--data_dir", str(root / "data"), "--device", "cpu",
            "--log_dir", str(root / out), "--results_dir", str(root / out), *extra]


def test_script_leaves_a_lone_image_out_and_reports_the_initial_similarity(tiny_run, capsys):
    main = load_script("Unlearn-trigger.py").main
    on = main(cli_args(tiny_run, "on"))
    out = capsys.readouterr().out
    assert out.count("last batch of 1 image") == 1 and "init sim: " in out and "test sim: " in out
    saved = json.loads((tiny_run / "on" / "unlearn-metrics.json").read_text())
    assert saved["init_sim"] == pytest.approx(on["init_sim"]) and -1 <= saved["test_sim"] <= 1
    assert [r["epoch"] for r in saved["per_epoch"]] == [0, 1]
    assert np.load(tiny_run / "on" / "loss-log.npy").shape == (1,)
    off = main(cli_args(tiny_run, "off", "--init_sim_bn_update", "off"))
    assert (off["init_sim"], off["test_sim"]) == (on["init_sim"], on["test_sim"])  # the same pass, stats restored
    # train mode normalises on batch statistics, so the weights train alike; only the running statistics
    # (what eval mode, the kNN check and the downstream features use) keep a trace of the pass
    a = torch.load(tiny_run / "on" / "Harden_Unlearn_model_1.pth", weights_only=True)["state_dict"]
    b = torch.load(tiny_run / "off" / "Harden_Unlearn_model_1.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)
    assert not torch.equal(a["f.f.1.running_mean"], b["f.f.1.running_mean"])


def test_script_refuses_unsupported_flags_in_one_line(tiny_run, capsys):
    main = load_script("Unlearn-trigger.py").main
    for extra, text in ((["--phase", "test"], "error: --phase test: not supported"),
                        (["--input_type", "clean_encoder"], "error: --input_type clean_encoder: not supported"),
                        (["--batch_size", "1"], "error: --batch_size 1: expected at least 2")):
        with pytest.raises(SystemExit) as exc:
            main(cli_args(tiny_run, "bad", *extra))
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and err.startswith(text) and "\n" not in err


def test_seed_after_loading_a_share_is_the_originals(tiny_run, monkeypatch):
    """The original's loader reseeds torch with 100 when it takes a --data_ratio < 1 share, so its later draws
    ignore --seed: --seed 0 reseeds alike at that point, --seed 1 gets its own stream, --data_ratio 1 none."""
    states = []
    check = U.check_unlearning_set

    def record(*args):  # called right after the training share is loaded
        states.append(torch.random.get_rng_state())
        return check(*args)

    monkeypatch.setattr(U, "check_unlearning_set", record)
    main = load_script("Unlearn-trigger.py").main
    for seed, ratio in ((0, "0.5"), (1, "0.5"), (0, "1")):
        main(cli_args(tiny_run, f"s{seed}-{ratio}", "--seed", str(seed), "--data_ratio", ratio))

    def seeded(seed):
        return torch.Generator().manual_seed(seed).get_state()

    assert torch.equal(states[0], seeded(100))
    assert torch.equal(states[1], seeded(100 + 1_000_000))
    assert not torch.equal(states[2], seeded(100))
