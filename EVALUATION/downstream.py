"""BadEncoder's downstream classifier on frozen features: an MLP trained with Adam."""
from __future__ import annotations

import json
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from EVALUATION.metrics import percent
from UTILS.runtime import log, progress

_EVAL_CHUNK = 4096  # rows per forward pass when scoring, to bound memory on large test sets


class DownstreamMLP(nn.Module):
    """Linear(d, h1) -> ReLU -> Dropout(0.5) -> Linear(h1, h2) -> ReLU -> Linear(h2, C).

    Attribute names (fc1, fc2, fc3, dropout2) follow BadEncoder's NeuralNet so saved classifiers match.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_1: int = 512, hidden_2: int = 256) -> None:
        super().__init__()
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(in_dim, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc3 = nn.Linear(hidden_2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) of features (B, D)."""
        out = self.dropout2(F.relu(self.fc1(x)))  # (B, h1)
        return self.fc3(F.relu(self.fc2(out)))  # (B, C)


@torch.no_grad()
def _predict(net: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Arg-max labels (N,) in eval mode (dropout off)."""
    net.eval()
    chunks = [net(feats[i:i + _EVAL_CHUNK]).argmax(dim=1) for i in range(0, feats.shape[0], _EVAL_CHUNK)]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long, device=feats.device)


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """BadEncoder's Adam. On CPU and CUDA the fused kernel (one update for all tensors, about 17 % off an
    MLP epoch here, see bench/) computes the same update; elsewhere the plain loop."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


def batch_order(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The one row order (n,) every epoch walks through, drawn once from torch's CPU generator.

    The original extracts the training features through a shuffled loader (one random order) and then
    trains the MLP on them with ``shuffle=False``: every epoch sees the same batches in the same order.
    Drawing on the CPU makes the order the same whatever device the features live on.
    """
    return torch.randperm(n).to(device)


def _train_epoch(net: nn.Module, opt: torch.optim.Optimizer, feats: torch.Tensor, labels: torch.Tensor,
                 order: torch.Tensor, batch_size: int) -> float:
    """One pass over minibatches ``order[i:i + batch_size]`` of on-device tensors; returns the mean batch loss.

    The loss sum stays on the device in float64 (one sync per epoch, not one per batch); adding the
    float32 losses in float64 in batch order gives the same number as summing ``loss.item()`` in Python.
    """
    net.train()
    total = torch.zeros((), dtype=torch.float64, device=feats.device)
    batches = 0
    for start in range(0, feats.shape[0], batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(net(feats[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
        batches += 1
    return total.item() / max(batches, 1)


def _print_metrics(row: dict, clean: bool) -> None:
    """Two JSON lines per epoch, with BadEncoder's metric names (null stands for a NaN value)."""
    names = (("Clean Accuracy (CA)", "Attack Success Rate-Baseline (ASR-B)") if clean
             else ("Backdoored Accuracy (BA)", "Attack Success Rate (ASR)"))
    for name, key in zip(names, ("acc", "asr")):
        value = None if math.isnan(row[key]) else row[key]
        log(json.dumps({"metric": f"Eval - {name}", "value": value, "epoch": row["epoch"]}))


def train_downstream(train_feat: torch.Tensor, train_y: torch.Tensor, test_feat: torch.Tensor,
                     test_y: torch.Tensor, bd_feat: torch.Tensor, *, bd_target: int | torch.Tensor,
                     num_classes: int, epochs: int, lr: float, batch_size: int, hidden_1: int = 512,
                     hidden_2: int = 256, clean: bool = False, on_epoch: Optional[Callable[[dict], None]] = None,
                     ) -> tuple[DownstreamMLP, list[dict]]:
    """Train the MLP on features (N, D) already on one device; history rows {"epoch", "acc", "asr", "loss"}.

    ``bd_feat`` (M, D) holds the images that count for ASR (already chosen by the caller) and
    ``bd_target`` the label each must receive to count as a success: one class for all (the attack
    target) or one per image (M,). Epochs are numbered from 1; each prints BA/ASR (or CA/ASR-B with
    ``clean``) as JSON lines. The batch order is drawn once, before the MLP is built, and kept for every
    epoch (see :func:`batch_order`).
    """
    device = train_feat.device
    order = batch_order(train_feat.shape[0], device)
    net = DownstreamMLP(train_feat.shape[1], num_classes, hidden_1, hidden_2).to(device)
    opt = adam(net.parameters(), lr, device)
    train_y, test_y = train_y.to(device).long(), test_y.to(device).long()
    test_feat, bd_feat = test_feat.to(device), bd_feat.to(device)
    bd_target = torch.as_tensor(bd_target, dtype=torch.long, device=device).expand(bd_feat.shape[0])
    history: list[dict] = []
    for epoch in progress(range(1, epochs + 1), desc="downstream", total=epochs):
        loss = _train_epoch(net, opt, train_feat, train_y, order, batch_size)
        acc = percent(_predict(net, test_feat) == test_y)
        asr = percent(_predict(net, bd_feat) == bd_target)
        row = {"epoch": epoch, "acc": acc, "asr": asr, "loss": loss}
        history.append(row)
        _print_metrics(row, clean)
        if on_epoch is not None:
            on_epoch(row)
    return net, history
