"""Batched augmentations against torchvision's functional ops, and their invariants."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from DATASETS import augment as A


def _x(b: int = 6, side: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, side, side, generator=g)


def test_grayscale_matches_torchvision():
    x = _x()
    # torchvision's tensor path weighs red 0.2989 instead of ITU-R 601's 0.299.
    torch.testing.assert_close(A.grayscale(x), TF.rgb_to_grayscale(x), atol=2e-4, rtol=0)


@pytest.mark.parametrize("ours,theirs", [(A.adjust_brightness, TF.adjust_brightness),
                                         (A.adjust_contrast, TF.adjust_contrast),
                                         (A.adjust_saturation, TF.adjust_saturation)])
def test_adjust_matches_torchvision_per_sample(ours, theirs):
    x = _x()
    f = torch.tensor([0.0, 0.6, 0.9, 1.0, 1.2, 1.4])
    ref = torch.stack([theirs(x[i], float(f[i])) for i in range(len(f))])
    torch.testing.assert_close(ours(x, f), ref, atol=3e-4, rtol=0)  # grayscale weights differ by 1e-4


def test_hue_matches_torchvision():
    x = torch.cat([_x(), torch.full((1, 3, 12, 12), 0.5), torch.zeros(1, 3, 12, 12)])  # greys have no hue
    x[0, :, 0, 0] = torch.tensor([0.7, 0.7, 0.2])  # ties between max channels
    f = torch.tensor([-0.5, -0.3, -0.1, 0.0, 0.05, 0.1, 0.3, 0.5])
    ref = torch.stack([TF.adjust_hue(x[i], float(f[i])) for i in range(len(f))])
    torch.testing.assert_close(A.adjust_hue(x, f), ref, atol=1e-4, rtol=0)


def test_random_crop_is_exact_shifted_window():
    torch.manual_seed(0)
    x = _x(16, 8)
    out = A.random_crop(x, padding=3)
    padded = F.pad(x, (3, 3, 3, 3))
    for b in range(16):
        hits = [(i, j) for i in range(7) for j in range(7) if torch.equal(out[b], padded[b, :, i:i + 8, j:j + 8])]
        assert hits, b


def test_random_resized_crop_full_scale_is_identity():
    x = _x()
    torch.testing.assert_close(A.random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0)), x, atol=1e-6, rtol=0)


def test_random_resized_crop_matches_box_resize():
    """A drawn box, resized bilinearly, equals torchvision's resized_crop of that box (no antialias: upscaling)."""
    torch.manual_seed(3)
    x = _x(8, 16)
    top, left, h, w = A._crop_boxes(x, (0.08, 1.0), (3 / 4, 4 / 3))
    torch.manual_seed(3)
    out = A.random_resized_crop(x)
    for b in range(8):
        ref = TF.resized_crop(x[b], int(top[b]), int(left[b]), int(h[b]), int(w[b]), [16, 16], antialias=False)
        torch.testing.assert_close(out[b], ref.clamp(0, 1), atol=1e-5, rtol=0)
    assert int(h.min()) < 16  # some real crops were drawn


def test_hflip_and_grayscale_probabilities():
    x = _x(64)
    torch.manual_seed(0)
    flipped = A.hflip(x, p=0.5)
    is_flip = torch.tensor([torch.equal(flipped[i], x[i].flip(-1)) for i in range(64)])
    is_same = torch.tensor([torch.equal(flipped[i], x[i]) for i in range(64)])
    assert bool((is_flip | is_same).all()) and 10 < int(is_flip.sum()) < 54
    assert torch.equal(A.hflip(x, p=0.0), x) and torch.equal(A.hflip(x, p=1.0), x.flip(-1))
    gray = A.random_grayscale(x, p=1.0)
    assert torch.equal(gray, A.grayscale(x).expand_as(x)) and torch.equal(A.random_grayscale(x, p=0.0), x)


def test_color_jitter_p_leaves_unselected_unchanged():
    x = _x(64)
    torch.manual_seed(1)
    out = A.color_jitter(x, p=0.5)
    same = torch.tensor([torch.equal(out[i], x[i]) for i in range(64)])
    assert 10 < int(same.sum()) < 54
    assert torch.equal(A.color_jitter(x, p=0.0), x)


def test_color_jitter_uses_the_fixed_order():
    x = _x(4)
    torch.manual_seed(5)
    out = A.color_jitter(x, 0.4, 0.4, 0.4, 0.1)
    torch.manual_seed(5)
    u = [torch.rand(4) for _ in range(4)]
    fb, fc, fs = (0.6 + 0.8 * u[k] for k in range(3))
    fh = -0.1 + 0.2 * u[3]
    ref = A.adjust_hue(A.adjust_saturation(A.adjust_contrast(A.adjust_brightness(x, fb), fc), fs), fh)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("fn", [A.simclr_view, A.unlearn_view, A.random_resized_crop, A.random_crop, A.hflip,
                                A.color_jitter, A.random_grayscale])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invariants_and_determinism(fn, dtype):
    x = _x(5, 32).to(dtype)
    torch.manual_seed(7)
    a = fn(x)
    torch.manual_seed(7)
    b = fn(x)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == dtype and a.device == x.device
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_views_differ():
    torch.manual_seed(0)
    v1, v2 = A.simclr_views(_x(4, 32))
    assert not torch.equal(v1, v2)
