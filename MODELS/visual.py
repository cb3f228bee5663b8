"""The wrapper every 224-pixel image tower lives in: BadEncoder's module name ``visual``, no projection head.

BadEncoder's ImageNet and CLIP encoders are plain image towers held as ``model.visual`` (backdoored
files: ``visual.*`` keys; clean files: the bare tower). The rest of this project talks to a SimCLR
interface (``model.f`` = the backbone, ``model(x)`` = (feature, projection), both L2-normalised), so
:class:`VisualEncoder` offers it: ``f`` is the tower itself (a property, so the state dict keeps the
single ``visual.*`` copy), and with no head the "projection" is the normalised feature itself - what
the original's unlearning loss would see had it run on these encoders (it would call ``model(x)``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def add_resnet_stages(tower: nn.Module, block: Callable[..., nn.Module], width: int, layers: Sequence[int],
                      expansion: int) -> int:
    """``tower.layer1`` .. ``layerN``, the residual stages both 224-pixel towers share: stage i holds ``layers[i]``
    ``block(in_channels, planes, stride)`` of ``width * 2**i`` planes, the first striding by 2 (but in stage 1).
    Returns the channels the last stage puts out."""
    inplanes = width
    for i, n in enumerate(layers):
        planes = width * 2**i
        stage = [block(inplanes, planes, stride=1 if i == 0 else 2)]
        stage += [block(planes * expansion, planes) for _ in range(n - 1)]
        setattr(tower, f"layer{i + 1}", nn.Sequential(*stage))
        inplanes = planes * expansion
    return inplanes


class VisualEncoder(nn.Module):
    """``visual``: an image tower (B, 3, S, S) -> (B, D); ``forward`` returns (z, z), z = the normalised feature."""

    def __init__(self, tower: nn.Module, feature_dim: int, input_size: int, family: str, *, name: str,
                 kind: str | None = None, optional_keys: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.visual = tower
        self.feature_dim = feature_dim
        self.input_size = input_size
        self.family = family  # 'imagenet' | 'clip' (MODELS.names.USAGE_MODELS): the normalisation, the usage flag
        self.name = name  # the --model name it was built as
        self.kind = kind or family  # the tower within the family ('clip' = the ResNet, 'clip_vit'): its key layout
        # tower keys a file may lack: unused by the forward pass (ImageNet's classifier ``fc``)
        self.optional_keys = optional_keys

    @property
    def f(self) -> nn.Module:
        """The backbone, as ``SimCLR.f``: the tower itself."""
        return self.visual

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, z): the tower's L2-normalised embedding (B, D) twice (no projection head), as SimCLR's pair."""
        feature = self.visual(x)  # (B, D)
        # Under --amp only the tower runs in bf16 (MODELS.precision); the normalisation stays float32 (the default dtype).
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = F.normalize(feature.to(torch.get_default_dtype()), dim=-1)
        return z, z
