"""--micro_batch: the chunked forward/backward of an inversion step gives one batch's gradient."""
import numpy as np
import pytest
import torch
from torch import nn

from DATASETS.stats import UsageInfo, get_usage
from INVERSION.inversion import (InversionConfig, frozen, inversion_loss, invert_trigger, logits_from_values,
                                 micro_batched_backward, pattern_from_logits, random_start)
from MODELS import build_model
from tests.precision import assert_close64, calibrated

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
    """The tanh logits of a seeded random start, float64 leaves (the equivalence tests run in float64)."""
    mask, pattern = random_start(size, np.random.RandomState(seed))
    a = logits_from_values(mask).double().requires_grad_(True)
    b = logits_from_values(pattern).double().requires_grad_(True)
    return a, b


def full_gradient(backbone, images, a, b, *, usage, cost, kind):
    """The reference: the whole chunk in one forward/backward (today's path)."""
    loss, psim, l1, _ = inversion_loss(backbone, images, a, b, usage, cost=cost, psim_kind=kind)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), psim.detach(), l1.detach(), ga, gb


# The micro-batched and the whole-chunk gradients sum the same terms in another order, so in float32 they
# differ by float32 rounding of the terms; run in float64 (normalize and InvertedTrigger follow the
# images' dtype) and compare at tests/precision.REL64 of each gradient's scale, which assert_close64
# first requires to be far above rounding (a saturated psim has a pattern gradient of rounding size).
@pytest.mark.parametrize("kind", ["original", "pairs"])
@pytest.mark.parametrize("micro", [1, 3, 5])
def test_micro_batched_gradient_equals_one_batch(kind, micro):
    torch.manual_seed(0)
    backbone = ConvNet().double()
    images = torch.rand(10, 3, 8, 8, dtype=torch.float64)  # 10 = 3 + 3 + 3 + 1: a short last piece too
    a, b = logits(8, 1)
    with frozen(backbone):
        loss, psim, l1, ga, gb = full_gradient(backbone, images, a, b, usage=PLAIN, cost=0.05, kind=kind)
        got = micro_batched_backward(backbone, images, a, b, PLAIN, cost=0.05, psim_kind=kind, micro_batch=micro)
    assert_close64(got[0], loss, what="loss")
    assert_close64(got[1], psim, what="psim")
    assert torch.equal(got[2], l1)
    assert_close64(a.grad, ga, what="mask gradient")
    assert_close64(b.grad, gb, what="pattern gradient")


def test_micro_batched_gradient_through_a_224_tower():
    torch.manual_seed(0)
    # calibrated BatchNorm: a random clip_tiny otherwise maps every image to nearly one feature, its psim
    # sits at the (B-1)/B ceiling and the pattern gradient is ~1e-10, rounding noise even in float64's terms
    backbone = calibrated(build_model("clip_tiny").f.double(), 224)
    images = torch.rand(4, 3, 224, 224, dtype=torch.float64)
    a, b = logits(224, 2)
    usage = get_usage("CLIP")
    with frozen(backbone):
        _, psim, _, ga, gb = full_gradient(backbone, images, a, b, usage=usage, cost=1e-3, kind="original")
        micro_batched_backward(backbone, images, a, b, usage, cost=1e-3, psim_kind="original", micro_batch=2)
    assert psim < 0.75 - 1e-3  # below the ceiling (B-1)/B: the features differ, the loss is not saturated
    assert_close64(a.grad, ga, what="mask gradient")
    assert_close64(b.grad, gb, what="pattern gradient")


def test_a_round_with_micro_batches_follows_the_unchunked_round():
    # invert_trigger keeps its trigger logits and Adam in float32; the encoder and images in float64 make the
    # two paths' gradients agree to ~1e-16 before their cast to float32, so the rounds agree to float32's
    # rounding of the same values (Adam would otherwise amplify float32 noise of near-zero gradients to lr-sized steps)
    torch.manual_seed(0)
    backbone = ConvNet().double()
    images = torch.rand(40, 3, 8, 8, dtype=torch.float64)  # one chunk of 32 per step
    init = random_start(8, np.random.RandomState(3))
    base = InversionConfig(steps=4, lr=0.1, init_cost=1e-3, threshold=0.5)
    plain = invert_trigger(backbone, images, PLAIN, base, init)
    zero = invert_trigger(backbone, images, PLAIN, InversionConfig(**{**base.__dict__, "micro_batch": 0}), init)
    chunked = invert_trigger(backbone, images, PLAIN, InversionConfig(**{**base.__dict__, "micro_batch": 8}), init)
    assert torch.equal(zero.mask, plain.mask) and torch.equal(zero.pattern, plain.pattern)  # 0 = today's path
    moved = (plain.pattern - pattern_from_logits(logits_from_values(init[1]).float())).abs().max()
    assert moved > 1e-2  # the round changed the trigger: the comparison below is of real updates
    assert torch.allclose(chunked.mask, plain.mask, rtol=0, atol=1e-5)  # 100 x float32's rounding of [0, 1] values
    assert torch.allclose(chunked.pattern, plain.pattern, rtol=0, atol=1e-5)
    assert chunked.steps == plain.steps and chunked.next_seed == plain.next_seed
