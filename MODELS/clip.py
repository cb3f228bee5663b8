"""The CLIP RN50 image tower (OpenAI CLIP's ``ModifiedResNet``), as BadEncoder's CLIP encoder holds it.

BadEncoder builds ``CLIP(1024, 224, vision_layers=(3, 4, 6, 3), vision_width=64)`` and uses only its
``visual`` tower. Key names (fixed: BadEncoder's and OpenAI's files load unchanged): a three-conv stem
``conv1/bn1``, ``conv2/bn2``, ``conv3/bn3`` (then a 2x2 average pool), ``layer1``..``layer4`` of
Bottleneck blocks (``conv1/bn1/conv2/bn2/conv3/bn3``; a stride is a 2x2 average pool after the 3x3
conv, and the projection is ``downsample.0`` (1x1 conv) / ``downsample.1`` (BatchNorm) after an
average pool named ``downsample.-1``), and ``attnpool`` (``positional_embedding``, ``q_proj``,
``k_proj``, ``v_proj``, ``c_proj``): one query, the mean token, attends over the 7x7 grid.
Written here in torch (docs/DESIGN.md says why).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from MODELS.visual import VisualEncoder, add_resnet_stages

EXPANSION = 4
# name -> (blocks per stage, width, output dim); heads = width * 32 // 64, as CLIP derives them.
_ARCH = {"clip_rn50": ((3, 4, 6, 3), 64, 1024), "clip_tiny": ((1, 1, 1, 1), 8, 64)}


class Bottleneck(nn.Module):
    """CLIP's anti-aliased block: every conv has stride 1; a stride is an average pool instead."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)), ("0", nn.Conv2d(inplanes, out, 1, bias=False)), ("1", nn.BatchNorm2d(out))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, 4 * planes, H / stride, W / stride); the stride is an average pool, as in CLIP."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(self.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the mean token (plus positional embeddings) over all grid tokens."""

    def __init__(self, grid: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, output_dim): the attention output of the first (mean) token only."""
        tokens = x.flatten(2).transpose(1, 2)  # (B, hw, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, hw+1, C)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        b, n, c = tokens.shape
        h, d = self.num_heads, c // self.num_heads
        # Only the mean token's output is used, so only its query is computed (same value as the
        # full attention's row 0; tests/MODELS/test_visual.py checks it against torch's MHA).
        q = self.q_proj(tokens[:, :1]).view(b, 1, h, d).transpose(1, 2)  # (B, h, 1, d)
        k = self.k_proj(tokens).view(b, n, h, d).transpose(1, 2)  # (B, h, n, d)
        v = self.v_proj(tokens).view(b, n, h, d).transpose(1, 2)
        attn = torch.softmax((q * d**-0.5) @ k.transpose(-2, -1), dim=-1)  # (B, h, 1, n)
        out = (attn @ v).transpose(1, 2).reshape(b, c)  # (B, C)
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """Three-conv stem + 2x2 average pool, four anti-aliased stages, attention pooling -> (B, output_dim)."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int,
                 input_resolution: int = 224, width: int = 64) -> None:
        super().__init__()
        self.output_dim, self.input_resolution = output_dim, input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        add_resnet_stages(self, Bottleneck, width, layers, EXPANSION)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalised -> embeddings (B, output_dim) from the attention pool."""
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.avgpool(x)  # (B, w, 56, 56) at 224 pixels
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32w, 7, 7)
        return self.attnpool(x)  # (B, output_dim)


def build_clip(name: str) -> VisualEncoder:
    """``clip_rn50`` (or the test-only ``clip_tiny``), randomly initialised, on the CPU."""
    layers, width, output_dim = _ARCH[name]
    tower = ModifiedResNet(layers, output_dim, heads=width * 32 // 64, input_resolution=224, width=width)
    return VisualEncoder(tower, output_dim, 224, "clip", name=name)
