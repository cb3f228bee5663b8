"""Weighted kNN monitor on backbone features (InstDisc / SimCLR-monitor style)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from DATASETS.stats import UsageInfo
from DATASETS.triggers import Trigger
from EVALUATION.features import extract_features
from EVALUATION.metrics import accuracy, attack_success_rate, backdoor_subset


@torch.no_grad()
def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, *, num_classes: int,
                k: int, t: float, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (Q,) for L2-normalised ``query`` (Q, D) against ``bank`` (N, D) with labels (N,).

    Each of the k most cosine-similar bank entries votes for its class with weight exp(sim / t).
    Queries go ``chunk`` at a time so memory stays at chunk x N similarities.
    """
    k = max(1, min(int(k), bank.shape[0]))
    bank_labels = bank_labels.to(bank.device).long()
    preds = []
    for start in range(0, query.shape[0], chunk):
        q = query[start:start + chunk].to(bank.device)
        sim = q @ bank.T  # (c, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (c, k)
        weights = (top_sim / t).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[top_idx], weights)  # (c, C)
        preds.append(votes.argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.long, device=bank.device)
    return torch.cat(preds)


def knn_monitor(backbone: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                test_y: torch.Tensor, *, num_classes: int, usage: UsageInfo, trigger: Optional[Trigger],
                target: int, k: int, t: float, include_target: bool = False,
                batch_size: int = 512) -> dict[str, float]:
    """{"acc", "asr"} in percent: bank = train features; ACC on clean test, ASR on stamped test images.

    train_x (N, 3, H, W), test_x (M, 3, H, W) in [0, 1] with labels (N,), (M,); ``k``/``t``: the vote's
    neighbours and temperature (:func:`knn_predict`).

    ASR counts the test images ``backdoor_subset`` keeps; it is NaN without a trigger.
    """
    bank = extract_features(backbone, train_x, usage, batch_size=batch_size, desc="kNN bank")
    train_y = train_y.to(bank.device)
    test_y = test_y.to(bank.device)
    clean = extract_features(backbone, test_x, usage, batch_size=batch_size, desc="kNN clean test")
    acc = accuracy(knn_predict(clean, bank, train_y, num_classes=num_classes, k=k, t=t), test_y)
    asr = float("nan")
    keep = backdoor_subset(test_y, target, include_target)
    if trigger is not None and bool(keep.any()):
        stamped_x = test_x[keep.to(test_x.device)]
        stamped = extract_features(backbone, stamped_x, usage, trigger=trigger, batch_size=batch_size,
                                   desc="kNN stamped test")
        preds = knn_predict(stamped, bank, train_y, num_classes=num_classes, k=k, t=t)
        asr = attack_success_rate(preds, test_y[keep], target, include_target=True)
    return {"acc": acc, "asr": asr}
