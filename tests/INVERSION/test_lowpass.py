"""--lowpass on: the search sees the stamped images through a 3x3 binomial blur (INVERSION.inversion.lowpass)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from DATASETS.triggers import InvertedTrigger
from INVERSION.inversion import (InversionConfig, equation2, inversion_loss, invert_trigger, lowpass,
                                 mask_from_logits, micro_batched_backward, pattern_from_logits, random_start)
from tests.INVERSION.test_micro_batch import PLAIN, ConvNet, logits
from tests.precision import assert_close64


def slow_lowpass(images):
    """Written from the definition: each output pixel is sum_{dy,dx in -1..1} w(dy) w(dx) x[reflect(y+dy),
    reflect(x+dx)] with w = (1, 2, 1) / 4, a mirror at the edges that does not repeat the edge pixel."""
    n, c, h, w = images.shape
    weight = {-1: 0.25, 0: 0.5, 1: 0.25}

    def reflect(i, size):
        return -i if i < 0 else (2 * (size - 1) - i if i >= size else i)

    out = torch.zeros_like(images)
    for y in range(h):
        for x in range(w):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    out[:, :, y, x] += weight[dy] * weight[dx] * images[:, :, reflect(y + dy, h), reflect(x + dx, w)]
    return out


def test_lowpass_equals_the_slow_loop():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    assert torch.allclose(lowpass(images), slow_lowpass(images), rtol=0, atol=1e-12)


def test_a_patch_keeps_its_inside_and_a_single_pixel_a_quarter():
    images = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    images[:, :, 2:7, 2:7] = 1.0  # a solid 5x5 patch
    images[:, :, 9, 9] = 1.0  # one pixel
    out = lowpass(images)
    assert torch.equal(out[:, :, 3:6, 3:6], torch.ones(1, 3, 3, 3, dtype=torch.float64))
    assert out[0, 0, 9, 9].item() == 0.25 and out[0, 0, 2, 2].item() == pytest.approx(0.5625, abs=1e-15)
    assert torch.equal(lowpass(torch.full((1, 3, 5, 5), 0.3, dtype=torch.float64)),
                       torch.full((1, 3, 5, 5), 0.3, dtype=torch.float64))  # a flat image is left as it is


def test_the_objective_sees_the_blurred_stamped_images():
    torch.manual_seed(1)
    backbone, images = ConvNet().double().eval(), torch.rand(6, 3, 8, 8, dtype=torch.float64)
    a, b = logits(8, 2)
    on = inversion_loss(backbone, images, a, b, PLAIN, cost=0.01, psim_kind="pairs", lowpass_on=True)
    off = inversion_loss(backbone, images, a, b, PLAIN, cost=0.01, psim_kind="pairs")
    trigger = InvertedTrigger(mask_from_logits(a), pattern_from_logits(b))
    by_hand, _, _ = equation2(backbone(slow_lowpass(trigger(images))), trigger.mask, cost=0.01, psim_kind="pairs")
    assert on[0].item() == pytest.approx(by_hand.item(), rel=1e-12)  # PLAIN's normalisation is the identity
    assert abs(on[1].item() - off[1].item()) > 1e-3  # the blur changes what is measured: the check can fail


@pytest.mark.parametrize("micro", [1, 4])
def test_micro_batched_gradient_with_lowpass_equals_one_batch(micro):
    torch.manual_seed(3)
    backbone, images = ConvNet().double().eval(), torch.rand(8, 3, 8, 8, dtype=torch.float64)
    a, b = logits(8, 4)
    loss, _, _, _ = inversion_loss(backbone, images, a, b, PLAIN, cost=0.01, psim_kind="pairs", lowpass_on=True)
    ga, gb = torch.autograd.grad(loss, (a, b))
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    micro_batched_backward(backbone, images, a2, b2, PLAIN, cost=0.01, psim_kind="pairs", micro_batch=micro,
                           lowpass_on=True)
    assert_close64(a2.grad, ga)
    assert_close64(b2.grad, gb)


def test_a_round_with_lowpass_finds_another_trigger():
    torch.manual_seed(5)
    backbone, images = ConvNet().double().eval(), torch.rand(40, 3, 8, 8, dtype=torch.float64)
    init = random_start(8, np.random.RandomState(1))
    config = InversionConfig(steps=6, lr=0.1, init_cost=1e-3, threshold=0.0, psim="pairs")
    off = invert_trigger(backbone, images, PLAIN, config, init, seed=7)
    on = invert_trigger(backbone, images, PLAIN, replace(config, lowpass=True), init, seed=7)
    assert off.reached and on.reached and not torch.equal(off.mask, on.mask)


def test_main_flag_reaches_the_search():
    from Trainer.configs import MainConfig, config_from_args
    from Trainer.main_flow import inversion_config
    from UTILS.errors import UserError
    from tests.scripts.conftest import load_script

    parser = load_script("MAIN.py").build_parser()
    common = ["--pretrained_encoder", "e.pth"]

    def searched(argv):  # the path MAIN.py takes: parsed flags -> MainConfig -> the inversion's settings
        return inversion_config(config_from_args(MainConfig, parser.parse_args(argv)).validate())

    assert searched(common + ["--lowpass", "on"]).lowpass and not searched(common).lowpass
    with pytest.raises(UserError, match="--lowpass"):
        parser.parse_args(common + ["--lowpass", "3"])
