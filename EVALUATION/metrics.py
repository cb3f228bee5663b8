"""ACC and ASR in percent, and which images count for ASR."""
from __future__ import annotations

from typing import Sequence

import torch


def backdoor_subset(labels: torch.Tensor, target: int, include_target: bool = False) -> torch.Tensor:
    """(N,) bool: the images whose ASR counts; target-class images only with ``include_target``.

    Leaving them out is the usual definition; BadEncoder/RECEIVE counted them (``--asr_include_target``).
    """
    labels = torch.as_tensor(labels)
    if include_target:
        return torch.ones_like(labels, dtype=torch.bool)
    return labels != int(target)


def asr_selection(labels: torch.Tensor, target: int, mode: str = "non-targeted",
                  include_target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """For stamped images with true ``labels`` (N,): which count (N,) bool, and the label (N,) each must get.

    ``non-targeted`` (the attack): a hit is a prediction of ``target``; target-class images count only
    with ``include_target`` (see :func:`backdoor_subset`). ``targeted`` (the original's
    ``--mode targeted``, its BadSTL_targeted set): every image counts and keeps its own label, so the
    number is the accuracy on stamped images; ``target`` plays no part.
    """
    labels = torch.as_tensor(labels).long()
    if mode == "targeted":
        return torch.ones_like(labels, dtype=torch.bool), labels.clone()
    if mode != "non-targeted":
        raise ValueError(f"asr_selection: mode must be 'non-targeted' or 'targeted', got {mode!r}")
    return backdoor_subset(labels, target, include_target), torch.full_like(labels, int(target))


def percent(hits: torch.Tensor) -> float:
    """Share of True in a bool tensor, in percent; NaN when there is nothing to count."""
    if hits.numel() == 0:
        return float("nan")
    return 100.0 * hits.float().mean().item()


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of ``preds`` (N,) equal to ``labels`` (N,)."""
    preds, labels = torch.as_tensor(preds), torch.as_tensor(labels).to(torch.as_tensor(preds).device)
    if preds.shape != labels.shape:
        raise ValueError(f"accuracy: preds {tuple(preds.shape)} and labels {tuple(labels.shape)} differ")
    return percent(preds == labels)


def attack_success_rate(preds_on_stamped: torch.Tensor, true_labels: torch.Tensor, target: int,
                        include_target: bool = False) -> float:
    """Percent of stamped images (M,) predicted as ``target``, among those ``backdoor_subset`` keeps."""
    preds = torch.as_tensor(preds_on_stamped)
    labels = torch.as_tensor(true_labels).to(preds.device)
    if preds.shape != labels.shape:
        raise ValueError(f"attack_success_rate: preds {tuple(preds.shape)} "
                         f"and labels {tuple(labels.shape)} differ")
    keep = backdoor_subset(labels, target, include_target)
    return percent(preds[keep] == int(target))


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of a score that should be higher for ``positive`` than ``negative`` cases.

    Mann-Whitney form: the share of (positive, negative) pairs ranked correctly, ties counting a half;
    nan when either side is empty. O((P + N) log(P + N)) through ranks.
    """
    pos = torch.as_tensor(list(positive), dtype=torch.float64)
    neg = torch.as_tensor(list(negative), dtype=torch.float64)
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    scores = torch.cat([pos, neg])
    order = torch.argsort(scores, stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    for value in torch.unique(scores):  # tied scores share their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[: pos.numel()].sum() - pos.numel() * (pos.numel() + 1) / 2
    return (u / (pos.numel() * neg.numel())).item()
