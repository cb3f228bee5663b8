import copy

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from DATASETS.stats import get_usage, normalize
from DATASETS.triggers import InvertedTrigger
from INVERSION.hardening import draw_attack_set, harden_step, sorted_features, wasserstein_rows, wasserstein_shift
from MODELS.simclr import build_model

USAGE = get_usage("cifar10")


def test_attack_set_is_the_papers_seeded_draw_and_shuffle():
    np.random.seed(7)
    drawn = np.random.choice(50, 20)
    np.random.seed(8)
    order = np.arange(20)
    np.random.shuffle(order)
    after_shuffle = np.random.random(3)  # the first round's random start continues this stream
    indices, rng = draw_attack_set(50, 20, 7)
    assert np.array_equal(indices.numpy(), drawn[order])
    assert np.array_equal(rng.random_sample(3), after_shuffle)


def test_wasserstein_rows_match_scipy():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(6, 50))
    v = rng.standard_t(3, size=(6, 50)) + 0.3
    ours = wasserstein_rows(torch.from_numpy(np.sort(u, 1)), torch.from_numpy(np.sort(v, 1)))
    ref = [scipy.stats.wasserstein_distance(u[i], v[i]) for i in range(6)]
    assert ours.numpy() == pytest.approx(ref, rel=1e-9)


def test_wasserstein_shift_is_mean_of_per_image_distances_on_the_given_backbone(float64):  # compared at 1e-9
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
    assert got == pytest.approx(ref, rel=1e-9)
    no_trigger = InvertedTrigger(torch.zeros(32, 32), torch.ones(3, 32, 32))
    assert wasserstein_shift(model.f, images, USAGE, no_trigger, clean_sorted) == pytest.approx(0.0, abs=1e-6)


def test_harden_step_is_one_sgd_step_on_two_separate_train_mode_passes(float64):  # compared at 1e-9
    torch.manual_seed(0)
    model = build_model("tiny")
    twin = copy.deepcopy(model)
    images = torch.rand(4, 3, 32, 32)
    trigger = InvertedTrigger(torch.rand(32, 32) * 0.3, torch.rand(3, 32, 32))
    opt = torch.optim.SGD(model.f.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    head_before = copy.deepcopy(model.g.state_dict())
    loss = harden_step(model.f, opt, images, trigger, USAGE)
    # reference by hand: stamped batch alone, then clean batch alone, both in train mode
    twin.train()
    stamped = twin.f(normalize(trigger(images), USAGE))
    clean = twin.f(normalize(images, USAGE))
    ref_loss = F.mse_loss(stamped, clean)
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-9)
    for (name, p), q in zip(model.f.named_parameters(), twin.f.parameters()):
        expected = q.detach() - 0.01 * (q.grad + 0.9 * q.grad)  # nesterov: g + momentum * buf, buf = g
        assert torch.allclose(p.detach(), expected, rtol=1e-9, atol=1e-12), name
    for (name, b), c in zip(model.f.named_buffers(), twin.f.buffers()):
        assert torch.allclose(b, c), name  # running statistics updated twice, as by the two passes
    for k, v in model.g.state_dict().items():
        assert torch.equal(v, head_before[k]), k  # the head is not hardened


def test_two_passes_differ_from_one_joint_batch():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    images = torch.rand(4, 3, 32, 32)
    trigger = InvertedTrigger(torch.rand(32, 32) * 0.5, torch.rand(3, 32, 32))
    with torch.no_grad():
        joint = model.f(normalize(torch.cat([images, trigger(images)]), USAGE))
        one_pass = F.mse_loss(joint[4:], joint[:4]).item()
    opt = torch.optim.SGD(model.f.parameters(), lr=0.0)
    assert harden_step(model.f, opt, images, trigger, USAGE) != pytest.approx(one_pass, rel=1e-4)
