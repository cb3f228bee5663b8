"""Batched image augmentations on tensors (any device), torchvision semantics, no per-image loop.

All inputs are (B, 3, H, W) floats in [0, 1]. Two kinds of randomness live here:

* per-sample (pre-training, BadEncoder): every image draws its own parameters from torch's global
  RNG on ``x.device``. The ``adjust_*`` functions take explicit per-sample factors (B,) and are the
  deterministic cores (tested against torchvision's functional ops).
* per-batch (unlearning, :func:`unlearn_view`): torchvision's own transforms applied to the whole
  batch tensor, so ONE parameter draw (from torch's global CPU RNG) is shared by every image, as the
  original ``Unlearn-trigger.py`` does.

Either way ``torch.manual_seed`` makes every call repeatable.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms

# ITU-R 601-2 luma, as PIL's convert("L") that BadEncoder's PIL pipeline ran (torchvision's tensor
# rgb_to_grayscale rounds the red weight to 0.2989: a difference below 1e-4).
_GRAY = (0.299, 0.587, 0.114)


def _per_sample(f: Tensor, x: Tensor) -> Tensor:
    """(B,) factors -> (B, 1, 1, 1) on x's device and dtype."""
    return f.to(x.device, x.dtype).view(-1, 1, 1, 1)


def _uniform(b: int, lo: float, hi: float, x: Tensor) -> Tensor:
    return torch.rand(b, device=x.device, dtype=x.dtype) * (hi - lo) + lo


def _chosen(x: Tensor, p: float) -> Tensor:
    """(B, 1, 1, 1) bool: which samples an op with probability p applies to."""
    return (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = x.unbind(dim=-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    f = _per_sample(f, x)
    return (f * x + (1 - f) * other).clamp(0.0, 1.0)


def adjust_brightness(x: Tensor, factors: Tensor) -> Tensor:
    """Multiply each image by its factor (B,), clamped to [0, 1]."""
    return _blend(x, torch.zeros_like(x), factors)


def adjust_contrast(x: Tensor, factors: Tensor) -> Tensor:
    """Blend each image with the mean of its grayscale image."""
    return _blend(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factors)


def adjust_saturation(x: Tensor, factors: Tensor) -> Tensor:
    """Blend each image with its grayscale image."""
    return _blend(x, grayscale(x), factors)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B,3,H,W) -> h, s, v each (B,H,W) in [0,1] (hexcone model)."""
    r, g, b = x.unbind(dim=-3)
    v, vmin = x.max(dim=-3).values, x.min(dim=-3).values
    chroma = v - vmin
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))  # grey pixels: hue is irrelevant
    s = torch.where(v > 0, chroma / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    h = torch.where(v == r, (g - b) / safe,
                    torch.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(chroma > 0, h, torch.zeros_like(h))
    return torch.remainder(h / 6.0, 1.0), s, v


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Inverse of _rgb_to_hsv: channel n takes v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(-3), 6.0)
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v.unsqueeze(-3) * (1.0 - s.unsqueeze(-3) * ramp)


def adjust_hue(x: Tensor, factors: Tensor) -> Tensor:
    """Rotate the hue of each image by its factor (B,) in [-0.5, 0.5] (a fraction of the colour circle)."""
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + factors.to(x.device, x.dtype).view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(h, s, v).clamp(0.0, 1.0)


def color_jitter(x: Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 1.0) -> Tensor:
    """ColorJitter with per-sample factors, in the fixed order brightness, contrast, saturation, hue.

    Factors: b, c, s uniform in [max(0, 1-v), 1+v], hue uniform in [-hue, hue]; applied with
    probability p per sample (the others are returned unchanged).
    """
    bsz = x.shape[0]
    fb, fc, fs = (_uniform(bsz, max(0.0, 1 - v), 1 + v, x) for v in (brightness, contrast, saturation))
    fh = _uniform(bsz, -hue, hue, x)
    chosen = _chosen(x, p)
    out = adjust_hue(adjust_saturation(adjust_contrast(adjust_brightness(x, fb), fc), fs), fh)
    return torch.where(chosen, out, x)


def random_grayscale(x: Tensor, p: float = 0.2) -> Tensor:
    """With probability p per sample, replace the image by its luma repeated over 3 channels."""
    return torch.where(_chosen(x, p), grayscale(x).expand_as(x), x)


def hflip(x: Tensor, p: float = 0.5) -> Tensor:
    """Mirror left-right with probability p per sample."""
    return torch.where(_chosen(x, p), x.flip(-1), x)


def random_crop(x: Tensor, padding: int = 4) -> Tensor:
    """Zero-pad by ``padding`` and take an H x W window at a random integer offset per sample (exact)."""
    bsz, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, 3, H+2p, W+2p)
    oy = torch.randint(0, 2 * padding + 1, (bsz,), device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (bsz,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    bidx = torch.arange(bsz, device=x.device)[:, None, None, None]
    cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def _fallback_box(H: int, W: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """When no try fits (extreme ratios), torchvision takes the largest centred box within ``ratio``."""
    if W / H < min(ratio):
        return int(round(W / min(ratio))), W
    if W / H > max(ratio):
        return H, int(round(H * max(ratio)))
    return H, W


def _crop_boxes(x: Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                tries: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample integer crop boxes (top, left, height, width) as RandomResizedCrop.get_params draws them."""
    bsz, _, H, W = x.shape
    dev = x.device
    area = H * W * (torch.rand(bsz, tries, device=dev) * (scale[1] - scale[0]) + scale[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(bsz, tries, device=dev) * (hi - lo) + lo)
    cw = torch.round(torch.sqrt(area * aspect))
    ch = torch.round(torch.sqrt(area / aspect))
    ok = (cw > 0) & (cw <= W) & (ch > 0) & (ch <= H)
    first = torch.argmax(ok.int(), dim=1)  # first successful try per sample
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    found = ok.any(dim=1)
    fb_h, fb_w = _fallback_box(H, W, ratio)
    cw = torch.where(found, pick(cw), torch.full_like(cw[:, 0], fb_w))
    ch = torch.where(found, pick(ch), torch.full_like(ch[:, 0], fb_h))
    top = torch.floor(torch.rand(bsz, device=dev) * (H - ch + 1))
    left = torch.floor(torch.rand(bsz, device=dev) * (W - cw + 1))
    top = torch.where(found, top, (H - ch) // 2)
    left = torch.where(found, left, (W - cw) // 2)
    return top, left, ch, cw


def _axis_coords(start: Tensor, length: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """(B,) crop start/length -> (B, n) normalised sample positions for grid_sample.

    Same sampling as cropping then ``interpolate(bilinear, align_corners=False)``: output pixel k
    reads source pixel start + (k + 0.5) * length / n - 0.5, clamped to the crop (torchvision's edges).
    """
    k = torch.arange(n, device=start.device, dtype=dtype) + 0.5
    src = start[:, None] + k[None, :] * (length[:, None] / n) - 0.5
    src = torch.minimum(torch.maximum(src, start[:, None]), (start + length - 1)[:, None])
    return (2 * src + 1) / n - 1


def random_resized_crop(x: Tensor, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """Crop a random box per sample and resize it back to H x W (bilinear), as RandomResizedCrop.

    The box never exceeds the image, so resizing only upsamples and antialiasing is moot.
    """
    bsz, _, H, W = x.shape
    top, left, ch, cw = (t.to(x.dtype) for t in _crop_boxes(x, scale, ratio))
    gx = _axis_coords(left, cw, W, x.dtype)  # (B, W)
    gy = _axis_coords(top, ch, H, x.dtype)  # (B, H)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp(0.0, 1.0)


def simclr_view(x: Tensor) -> Tensor:
    """One SimCLR view: resized crop, flip, colour jitter (p=0.8), grayscale (p=0.2), per sample."""
    x = hflip(random_resized_crop(x))
    return random_grayscale(color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.8), p=0.2)


def simclr_views(x: Tensor) -> tuple[Tensor, Tensor]:
    """Two independent SimCLR views of the same batch."""
    return simclr_view(x), simclr_view(x)


@functools.lru_cache(maxsize=None)
def unlearn_augmentation(height: int, width: int) -> transforms.Compose:
    """The unlearning augmentation of the original ``Unlearn-trigger.py``, as torchvision objects.

    RandomCrop to the image's own size (no padding) is the identity and draws nothing; it stays in
    the pipeline because the original has it. ColorJitter applies its four ops in an order drawn
    per call (``torch.randperm(4)``), then grayscale with probability 0.2.
    """
    return transforms.Compose([
        transforms.RandomCrop((height, width)),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.ColorJitter(0.4, 0.4, 0.4, 0.1),
        transforms.RandomGrayscale(p=0.2),
    ])


def unlearn_view(x: Tensor) -> Tensor:
    """One unlearning view of a whole batch: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].

    The original hands the batch tensor to torchvision's Compose, so ONE random draw is shared by
    every image: all flipped or none, the same jitter factors in the same random op order, all
    grayscale or none. Torchvision draws from torch's global CPU RNG whatever ``x.device`` is.
    An empty batch is returned as is, without drawing.
    """
    if x.shape[0] == 0:
        return x
    return unlearn_augmentation(int(x.shape[-2]), int(x.shape[-1]))(x)
