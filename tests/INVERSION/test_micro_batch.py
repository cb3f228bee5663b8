"""--micro_batch: the chunked forward/backward of an inversion step gives one batch's gradient."""
import numpy as np
import pytest
import torch
from torch import nn

from DATASETS.stats import UsageInfo, get_usage
from INVERSION.inversion import (InversionConfig, frozen, inversion_loss, invert_trigger, logits_from_values,
                                 micro_batched_backward, random_start)
from MODELS import build_model

PLAIN = UsageInfo("plain", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 8)


class ConvNet(nn.Module):
    """A small encoder with BatchNorm (eval mode in inversion) and a non-linearity."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def logits(size, seed):
    mask, pattern = random_start(size, np.random.RandomState(seed))
    a = logits_from_values(mask).float().requires_grad_(True)
    b = logits_from_values(pattern).float().requires_grad_(True)
    return a, b


def full_gradient(backbone, images, a, b, usage, cost, kind):
    """The reference: the whole chunk in one forward/backward (today's path)."""
    loss, psim, l1, _ = inversion_loss(backbone, images, a, b, usage, cost=cost, psim_kind=kind)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), psim.detach(), l1.detach(), ga, gb


@pytest.mark.parametrize("kind", ["original", "pairs"])
@pytest.mark.parametrize("micro", [1, 3, 5])
def test_micro_batched_gradient_equals_one_batch(kind, micro):
    torch.manual_seed(0)
    backbone = ConvNet()
    images = torch.rand(10, 3, 8, 8)  # 10 = 3 + 3 + 3 + 1: a short last piece too
    a, b = logits(8, 1)
    with frozen(backbone):
        loss, psim, l1, ga, gb = full_gradient(backbone, images, a, b, PLAIN, 0.05, kind)
        got = micro_batched_backward(backbone, images, a, b, PLAIN, cost=0.05, psim_kind=kind, micro_batch=micro)
    assert torch.allclose(got[0], loss, atol=1e-6) and torch.allclose(got[1], psim, atol=1e-6)
    assert torch.equal(got[2], l1)
    assert torch.allclose(a.grad, ga, rtol=1e-4, atol=1e-7) and torch.allclose(b.grad, gb, rtol=1e-4, atol=1e-7)
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0  # the check compares real gradients


def test_micro_batched_gradient_through_a_224_tower():
    torch.manual_seed(0)
    backbone = build_model("clip_tiny").f
    images = torch.rand(4, 3, 224, 224)
    a, b = logits(224, 2)
    usage = get_usage("CLIP")
    with frozen(backbone):
        _, _, _, ga, gb = full_gradient(backbone, images, a, b, usage, 1e-3, "original")
        micro_batched_backward(backbone, images, a, b, usage, cost=1e-3, psim_kind="original", micro_batch=2)
    scale_a, scale_b = ga.abs().max(), gb.abs().max()
    assert torch.allclose(a.grad, ga, atol=1e-4 * scale_a) and torch.allclose(b.grad, gb, atol=1e-4 * scale_b)


def test_a_round_with_micro_batches_follows_the_unchunked_round():
    torch.manual_seed(0)
    backbone = ConvNet()
    images = torch.rand(40, 3, 8, 8)  # one chunk of 32 per step
    init = random_start(8, np.random.RandomState(3))
    base = InversionConfig(steps=4, lr=0.1, init_cost=1e-3, threshold=0.5)
    plain = invert_trigger(backbone, images, PLAIN, base, init)
    zero = invert_trigger(backbone, images, PLAIN, InversionConfig(**{**base.__dict__, "micro_batch": 0}), init)
    chunked = invert_trigger(backbone, images, PLAIN, InversionConfig(**{**base.__dict__, "micro_batch": 8}), init)
    assert torch.equal(zero.mask, plain.mask) and torch.equal(zero.pattern, plain.pattern)  # 0 = today's path
    assert torch.allclose(chunked.mask, plain.mask, atol=1e-4)
    assert torch.allclose(chunked.pattern, plain.pattern, atol=1e-4)
    assert chunked.steps == plain.steps and chunked.next_seed == plain.next_seed
