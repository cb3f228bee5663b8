"""Contrastive loss used by SimCLR pre-training and by the unlearning step."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over 2B samples: each sample's positive is its other view.

    z1, z2: (B, D) projections of two views (normalised here). Returns the mean over all 2B anchors of
    ``-log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t))`` with cosine similarities s.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent: expected two (B, D) tensors of one shape, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    # A sample is never its own negative: -inf drops the diagonal from the softmax denominator.
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(batch, device=z.device)
    positives = torch.cat([idx + batch, idx])  # (2B,) index of the other view
    return F.cross_entropy(logits, positives)
