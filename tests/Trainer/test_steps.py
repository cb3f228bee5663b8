import copy

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from DATASETS.augment import unlearn_view
from DATASETS.stats import get_usage, normalize
from DATASETS.triggers import InvertedTrigger
from MODELS.simclr import build_model
from Trainer.common import guard_outputs
from Trainer.moth import harden_step, sorted_features, wasserstein_rows, wasserstein_shift
from Trainer.unlearn import unlearn_loss
from UTILS.errors import UserError
from tests.MODELS.test_losses import slow_nt_xent

USAGE = get_usage("cifar10")


def test_wasserstein_rows_match_scipy():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(6, 50))
    v = rng.standard_t(3, size=(6, 50)) + 0.3
    ours = wasserstein_rows(torch.from_numpy(np.sort(u, 1)), torch.from_numpy(np.sort(v, 1)))
    ref = [scipy.stats.wasserstein_distance(u[i], v[i]) for i in range(6)]
    assert ours.numpy() == pytest.approx(ref, rel=1e-9)


def test_wasserstein_shift_is_mean_of_per_image_distances_on_the_given_backbone():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    images = torch.rand(5, 3, 32, 32)
    trigger = InvertedTrigger(torch.zeros(32, 32).index_fill_(0, torch.arange(20, 30), 1.0), torch.ones(3, 32, 32))
    clean_sorted = sorted_features(model.f, images, USAGE, batch_size=2)
    got = wasserstein_shift(model.f, images, USAGE, trigger, clean_sorted, batch_size=3)
    with torch.no_grad():
        clean = model.f(normalize(images, USAGE)).numpy()
        stamped = model.f(normalize(trigger(images), USAGE)).numpy()
    ref = np.mean([scipy.stats.wasserstein_distance(clean[i], stamped[i]) for i in range(5)])
    assert got == pytest.approx(ref, rel=1e-5)
    no_trigger = InvertedTrigger(torch.zeros(32, 32), torch.ones(3, 32, 32))
    assert wasserstein_shift(model.f, images, USAGE, no_trigger, clean_sorted) == pytest.approx(0.0, abs=1e-6)


def test_harden_step_is_one_sgd_step_on_the_backbone_mse():
    torch.manual_seed(0)
    model = build_model("tiny")
    twin = copy.deepcopy(model)
    images = torch.rand(4, 3, 32, 32)
    trigger = InvertedTrigger(torch.rand(32, 32) * 0.3, torch.rand(3, 32, 32))
    opt = torch.optim.SGD(model.f.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    head_before = copy.deepcopy(model.g.state_dict())
    loss = harden_step(model.f, opt, images, trigger, USAGE)
    # reference written out by hand: same batch layout, plain SGD first step (momentum buffer = grad)
    twin.train()
    feats = twin.f(normalize(torch.cat([images, trigger(images)]), USAGE))
    ref_loss = F.mse_loss(feats[4:], feats[:4])
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    for (name, p), q in zip(model.f.named_parameters(), twin.f.parameters()):
        expected = q.detach() - 0.01 * (q.grad + 0.9 * q.grad)  # nesterov: g + momentum * buf, buf = g
        assert torch.allclose(p.detach(), expected, atol=1e-6), name
    for k, v in model.g.state_dict().items():
        assert torch.equal(v, head_before[k]), k  # the head is not hardened


@pytest.mark.parametrize("portion", [0.0, 0.25, 0.5, 1.0])
def test_unlearn_loss_matches_a_slow_reference(portion):
    model = build_model("tiny").train()
    images = torch.rand(8, 3, 32, 32)
    trigger = InvertedTrigger(torch.rand(32, 32) * 0.2, torch.rand(3, 32, 32))
    torch.manual_seed(5)
    loss, parts = unlearn_loss(model, images, trigger, USAGE, portion, beta=3.5, temperature=0.5)
    # replay the same random draws in the same order
    torch.manual_seed(5)
    n = int(portion * 8)
    perm = torch.randperm(8)
    src, clean = images[perm[:n]], images[perm[n:]]
    views = [unlearn_view(clean), unlearn_view(clean)] if len(clean) >= 2 else []
    _, z = model(normalize(torch.cat(views + [src, trigger(src)]), USAGE))
    c = len(clean) if views else 0
    contrastive = slow_nt_xent(z[:c], z[c:2 * c], 0.5) if views else 0.0
    cos = [F.cosine_similarity(z[2 * c + i], z[2 * c + n + i], dim=0).item() for i in range(n)]
    unlearn = -sum(cos) / n if n else 0.0
    assert parts["contrastive"].item() == pytest.approx(contrastive, rel=1e-4, abs=1e-6)
    assert parts["unlearn"].item() == pytest.approx(unlearn, rel=1e-4, abs=1e-6)
    assert loss.item() == pytest.approx(contrastive + 3.5 * unlearn, rel=1e-4, abs=1e-6)


def test_guard_outputs_refuses_then_overwrites(tmp_path):
    (tmp_path / "mask-pattern-3.npz").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        guard_outputs(tmp_path, ("mask-pattern-*.npz",), "--log_dir", overwrite=False, resume=False)
    assert guard_outputs(tmp_path, ("mask-pattern-*.npz",), "--log_dir", overwrite=False, resume=True)
    guard_outputs(tmp_path, ("mask-pattern-*.npz",), "--log_dir", overwrite=True, resume=False)
    assert not (tmp_path / "mask-pattern-3.npz").exists() and (tmp_path / "notes.txt").exists()
