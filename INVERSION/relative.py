"""Thresholds relative to the encoder under test (beyond the paper; docs/ALGORITHMS.md §1b).

The paper compares psim, the stamped images' mean pairwise cosine, with one fixed number (0.90). What that
number demands depends on the encoder: where clean images' features already agree (an anisotropic encoder,
clean psim 0.89), 0.90 is reached by a trigger that nudges psim by a hair; where they spread (clean psim 0.6),
it takes a collapse. Two pieces make the demand the same on every encoder:

* ``--similarity_threshold auto``: the threshold is placed a fixed share of the way from the clean images'
  own psim to the largest psim a chunk can have: ``clean + AUTO_SHARE * (ceiling - clean)``, measured on the
  round's attack set with the encoder as it is in that round. The injected trigger is never an input.
* ``--psim centred``: the cosine is taken between features minus the clean attack set's mean feature
  (:class:`CentredFeatures`), so that the direction every image shares -- the anisotropy -- counts for
  nothing, and clean images score about 0 on every encoder.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from DATASETS.stats import UsageInfo, normalize
from INVERSION.inversion import CHUNK, InversionConfig, chunk_similarity, chunks, frozen, psim_ceiling

# Share of the way from the clean psim to the ceiling. Chosen on the two tuned families of
# bench/generalise.py (synthetic, lowcontrast; seed 0): there the paper's 0.90 sits 0.80 of the way from the
# clean psim (0.61-0.63) to 31/32, so auto asks what the paper asks where its threshold was tuned, and the
# same share of the remaining way on an encoder whose clean images are already alike.
AUTO_SHARE = 0.8
# --detect_psim auto: DECREE's 0.99 sits 0.973 of the way from the clean images' pair-mean cosine (0.636, the
# backdoored synthetic encoder of bench/generalise.py, seed 0) to 1; the detection's --detect_pl1 was
# calibrated on encoders of that family, so the collapse it asks for is kept at that share elsewhere.
DETECT_SHARE = 0.973
NEAR_SHARE = 0.25      # a fixed threshold nearer than this share to the clean psim draws a warning


def near_clean(threshold: float, clean_psim: float, ceiling: float) -> bool:
    """True when a fixed ``threshold`` lies less than NEAR_SHARE of the way from the clean images' psim to the
    ceiling (or at or below the clean psim): a tiny trigger can reach it, not only a backdoor's."""
    return threshold - clean_psim < NEAR_SHARE * (ceiling - clean_psim)


def relative_threshold(clean_psim: float, ceiling: float, share: float = AUTO_SHARE) -> float:
    """``clean + share * (ceiling - clean)``: the threshold a given share of the way from the clean images'
    psim to the largest psim possible (ceiling); the clean psim itself when it is at the ceiling already."""
    return clean_psim + share * max(ceiling - clean_psim, 0.0)


class CentredFeatures(nn.Module):
    """``backbone`` whose (B, D) features are L2-normalised and moved by ``-centre`` (D,): the pairwise cosine
    of its outputs is the centred psim."""

    def __init__(self, backbone: nn.Module, centre: Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("centre", centre.detach())

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.backbone(x), dim=1) - self.centre


@torch.no_grad()
def feature_centre(backbone: nn.Module, images: Tensor, usage: UsageInfo, chunk_size: int = CHUNK) -> Tensor:
    """The mean L2-normalised feature (D,) of the clean ``images`` (N, 3, H, W), over the chunks a step walks
    (every image when N < chunk_size); in float32 at least (bf16 features under --amp are widened)."""
    with frozen(backbone):
        feats = [backbone(normalize(c, usage)) for c in chunks(images, chunk_size)]
        parts = [F.normalize(f.to(torch.promote_types(f.dtype, torch.float32)), dim=1) for f in feats]
    return torch.cat(parts).mean(dim=0)


def prepare_round(backbone: nn.Module, attack: Tensor, usage: UsageInfo,
                  config: InversionConfig) -> tuple[nn.Module, InversionConfig]:
    """The backbone and settings one round inverts with on ``attack`` (N, 3, H, W).

    ``--psim centred`` wraps the backbone in :class:`CentredFeatures` (centre: this attack set's clean mean
    feature) and compares the pair mean; ``config.auto_share`` > 0 replaces the threshold by
    :func:`relative_threshold` of the clean psim at that share. Both are measured with the encoder as it is
    now (moth hardens it between rounds); a fixed threshold costs no extra pass.
    """
    if config.psim == "centred":
        backbone = CentredFeatures(backbone, feature_centre(backbone, attack, usage, config.chunk_size))
        config = replace(config, psim="pairs")
    if config.auto_share > 0:
        clean = chunk_similarity(backbone, attack, usage, None, config.psim, config.chunk_size)
        ceiling = psim_ceiling(config.psim, min(config.chunk_size, attack.shape[0]))
        config = replace(config, threshold=relative_threshold(clean, ceiling, config.auto_share), auto_share=0.0)
    return backbone, config
