"""ACC and ASR in percent, and which images count for ASR (SPEC §6.5)."""
from __future__ import annotations

import torch


def backdoor_subset(labels: torch.Tensor, target: int, include_target: bool = False) -> torch.Tensor:
    """(N,) bool: the images whose ASR counts; target-class images only with ``include_target``.

    Leaving them out is the usual definition; BadEncoder/RECEIVE counted them (``--asr_include_target``).
    """
    labels = torch.as_tensor(labels)
    if include_target:
        return torch.ones_like(labels, dtype=torch.bool)
    return labels != int(target)


def _percent(hits: torch.Tensor) -> float:
    """Share of True in a bool tensor, in percent; NaN when there is nothing to count."""
    if hits.numel() == 0:
        return float("nan")
    return 100.0 * hits.float().mean().item()


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of ``preds`` (N,) equal to ``labels`` (N,)."""
    preds, labels = torch.as_tensor(preds), torch.as_tensor(labels).to(torch.as_tensor(preds).device)
    if preds.shape != labels.shape:
        raise ValueError(f"accuracy: preds {tuple(preds.shape)} and labels {tuple(labels.shape)} differ")
    return _percent(preds == labels)


def attack_success_rate(preds_on_stamped: torch.Tensor, true_labels: torch.Tensor, target: int,
                        include_target: bool = False) -> float:
    """Percent of stamped images (M,) predicted as ``target``, among those ``backdoor_subset`` keeps."""
    preds = torch.as_tensor(preds_on_stamped)
    labels = torch.as_tensor(true_labels).to(preds.device)
    if preds.shape != labels.shape:
        raise ValueError(f"attack_success_rate: preds {tuple(preds.shape)} "
                         f"and labels {tuple(labels.shape)} differ")
    keep = backdoor_subset(labels, target, include_target)
    return _percent(preds[keep] == int(target))
