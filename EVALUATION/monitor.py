"""The kNN monitor bound to a downstream task, a trigger and a target label (used by every training flow)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from DATASETS.loaders import load_split
from DATASETS.stats import UsageInfo
from DATASETS.tensors import TensorSet, check_label, require_images
from DATASETS.triggers import Trigger
from EVALUATION.knn import knn_monitor


@dataclass
class Monitor:
    """The kNN monitor bound to a downstream task, a trigger and a target label."""

    train: TensorSet
    test: TensorSet
    usage: UsageInfo
    trigger: Optional[Trigger]
    target: int
    k: int
    t: float
    include_target: bool = False

    def __call__(self, backbone) -> dict:
        """{"acc", "asr"} of ``backbone`` (:func:`EVALUATION.knn.knn_monitor`)."""
        return knn_monitor(backbone, self.train.x, self.train.y, self.test.x, self.test.y,
                           num_classes=self.train.num_classes, usage=self.usage, trigger=self.trigger,
                           target=self.target, k=self.k, t=self.t, include_target=self.include_target)


def build_monitor(task: str, data_dir: str, usage: UsageInfo, device: torch.device, *, trigger: Optional[Trigger],
                  target: int, k: int, t: float, include_target: bool) -> Monitor:
    """The kNN monitor on ``task``'s train (bank) and test splits, loaded onto ``device``; ASR with ``trigger``
    (None: ACC only) towards ``target``. Refuses an empty split or a target outside the task's labels."""
    need = "the kNN monitor needs at least one (--monitor_every 0 turns it off)"
    train, test = (TensorSet.from_images(require_images(load_split(task, split, data_dir, size=usage.size,
                                                                   flag="--downstreamTask"), "--downstreamTask", need),
                                         device) for split in ("train", "test"))
    if trigger is not None:
        check_label(target, train.num_classes)
    return Monitor(train=train, test=test, usage=usage, trigger=trigger, target=target, k=k, t=t,
                   include_target=include_target)


def monitor_row(monitor: Monitor | None, backbone, count: int, every: int) -> dict[str, float]:
    """{"knn_acc", "knn_asr"} of ``monitor`` on ``backbone`` when ``count`` (an epoch, a round's batch) is a
    multiple of ``every``; NaN when the monitor is off (None, ``every`` <= 0) or not due."""
    if monitor is None or every <= 0 or count % every:
        return {"knn_acc": math.nan, "knn_asr": math.nan}
    result = monitor(backbone)
    return {"knn_acc": result["acc"], "knn_asr": result["asr"]}
