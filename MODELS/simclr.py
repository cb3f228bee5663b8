"""SimCLR encoder for 32x32 inputs, with BadEncoder's module and key names.

Key layout (must not change; released BadEncoder/RECEIVE checkpoints load into it unchanged):
``f.f.0`` conv1, ``f.f.1`` bn1, ``f.f.2`` relu, ``f.f.3``..``f.f.6`` layer1..layer4, ``f.f.7`` avgpool;
head ``g.0`` Linear(no bias), ``g.1`` BatchNorm1d, ``g.2`` ReLU, ``g.3`` Linear.

Small variants (``resnet18_small``, ``tiny``) keep the same key structure with narrower layers so the
pipeline runs on a laptop CPU. Their projection head's hidden width is ``min(512, D)`` (128 and 64)
instead of 512: a 512-wide hidden layer over a 64-d feature would be most of the model's parameters.
The full-size models keep BadEncoder's 512 hidden units (``min(512, D)`` = 512 for D = 512 and 2048).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from MODELS.names import MODEL_NAMES, VIT_NAMES, family_of
from UTILS.errors import fail

PROJECTION_DIM = 128

# name -> (blocks per stage, widths per stage); widths[0] is also conv1's width.
_SMALL = {
    "resnet18_small": ((2, 2, 2, 2), (16, 32, 64, 128)),
    "tiny": ((1, 1, 1, 1), (8, 16, 32, 64)),
}


class Backbone(nn.Module):
    """``model.f``: holds ``self.f`` (the Sequential BadEncoder names ``f.f``) and flattens its output."""

    def __init__(self, layers: nn.Sequential, feature_dim: int) -> None:
        super().__init__()
        self.f = layers
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalised -> features (B, D)."""
        return torch.flatten(self.f(x), start_dim=1)  # (B, C, 1, 1) -> (B, D)


class SimCLR(nn.Module):
    """Backbone ``f`` plus projection head ``g``; ``forward`` returns both, L2-normalised."""

    def __init__(self, backbone: Backbone, head_hidden: int = 512) -> None:
        super().__init__()
        self.f = backbone
        self.feature_dim = backbone.feature_dim
        self.g = nn.Sequential(
            nn.Linear(self.feature_dim, head_hidden, bias=False),
            nn.BatchNorm1d(head_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(head_hidden, PROJECTION_DIM, bias=True),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised features (B, D), L2-normalised projections (B, 128)); the head runs in float32."""
        feature = self.f(x)  # (B, D)
        # Under --amp (MODELS.precision) only the backbone runs in bf16: the head and the
        # normalisation stay float32 (torch's default dtype) on every device (a no-op without autocast).
        with torch.autocast(device_type=x.device.type, enabled=False):
            feature = feature.to(torch.get_default_dtype())
            out = self.g(feature)  # (B, 128)
            return F.normalize(feature, dim=-1), F.normalize(out, dim=-1)


def _torchvision_backbone(name: str) -> Backbone:
    """A torchvision ResNet with a CIFAR stem: 3x3 stride-1 conv1, no max-pool, no fc."""
    resnet = getattr(torchvision.models, name)(weights=None)
    resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # Order of named_children fixes the Sequential indices, hence the checkpoint keys.
    kept = [module for child, module in resnet.named_children() if child not in ("maxpool", "fc")]
    return Backbone(nn.Sequential(*kept), resnet.fc.in_features)


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage of torchvision BasicBlocks (so keys read conv1/bn1/conv2/bn2/downsample.0/.1)."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes),
        )
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _small_backbone(name: str) -> Backbone:
    blocks, widths = _SMALL[name]
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    inplanes = widths[0]
    for i, (n, planes) in enumerate(zip(blocks, widths)):
        layers.append(_stage(inplanes, planes, n, stride=1 if i == 0 else 2))
        inplanes = planes
    layers.append(nn.AdaptiveAvgPool2d((1, 1)))
    seq = nn.Sequential(*layers)
    _init_like_torchvision(seq)
    return Backbone(seq, widths[-1])


def _init_like_torchvision(module: nn.Module) -> None:
    """Same initialisation torchvision's ResNet applies, so small and full models train alike."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(name: str, flag: str = "--model") -> nn.Module:
    """A freshly initialised encoder (weights drawn from torch's global RNG), on the CPU: a SimCLR
    for the 32-pixel names, a :class:`MODELS.visual.VisualEncoder` for the 224-pixel towers."""
    if name not in MODEL_NAMES:
        fail(f"{flag} {name}: unknown model; expected one of {', '.join(MODEL_NAMES)}")
    family = family_of(name)
    if family == "imagenet":
        from MODELS.imagenet import build_imagenet

        return build_imagenet(name)
    if name in VIT_NAMES:
        from MODELS.clip_vit import build_clip_vit

        return build_clip_vit(name)
    if family == "clip":
        from MODELS.clip import build_clip

        return build_clip(name)
    backbone = _small_backbone(name) if name in _SMALL else _torchvision_backbone(name)
    return SimCLR(backbone, head_hidden=min(512, backbone.feature_dim))
