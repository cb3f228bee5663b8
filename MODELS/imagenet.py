"""BadEncoder's ImageNet encoder: a SimCLR ResNet-50 (1x) at 224 pixels, 2048-d features.

Key names (fixed: BadEncoder's files load unchanged): ``conv1``, ``bn1``, ``layer1``..``layer4``
(Bottleneck blocks ``conv1/bn1/conv2/bn2/conv3/bn3`` and ``downsample.0`` (1x1 conv) / ``downsample.1``
(BatchNorm)), and ``fc`` (a 1000-way classifier its files carry but its forward pass skips). The
stride sits on each block's 3x3 convolution. Written here in torch (docs/DESIGN.md says why).
"""
from __future__ import annotations

import torch
from torch import nn

from MODELS.visual import VisualEncoder, add_resnet_stages

# name -> (blocks per stage, base width); stage widths are base * (1, 2, 4, 8), outputs 4x that.
_ARCH = {"imagenet_resnet50": ((3, 4, 6, 3), 64), "imagenet_tiny": ((1, 1, 1, 1), 8)}
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), plus the identity or a 1x1 strided projection."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * EXPANSION
        # created first, as BadEncoder's block does, so a saved state dict lists its keys in the same order
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, 4 * planes, H / stride, W / stride) with the residual added."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    """The tower: 7x7/2 stem, 3x3/2 max-pool, four Bottleneck stages, global average pool -> (B, 2048)."""

    def __init__(self, blocks: tuple[int, int, int, int] = (3, 4, 6, 3), width: int = 64,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = add_resnet_stages(self, Bottleneck, width, blocks, EXPANSION)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)  # kept for the key layout; never applied
        self.feature_dim = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 224, 224), normalised -> pooled features (B, 32 * width)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 3, 224, 224) -> (B, w, 56, 56)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32w, 7, 7)
        return torch.flatten(self.avgpool(x), 1)  # (B, 32w)


def build_imagenet(name: str) -> VisualEncoder:
    """``imagenet_resnet50`` (or the test-only ``imagenet_tiny``), randomly initialised, on the CPU."""
    blocks, width = _ARCH[name]
    tower = ImageNetResNet(blocks, width)
    return VisualEncoder(tower, tower.feature_dim, 224, "imagenet", name=name, optional_keys=("fc.weight", "fc.bias"))
