"""Dataset splits as tensors on the device, the ``--data_ratio`` share, and label checks."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from DATASETS.loaders import ImageSet, load_split, to_tensor
from DATASETS.stats import UsageInfo
from UTILS.errors import fail


@dataclass
class TensorSet:
    """A dataset split on the device: x (N, 3, H, W) float in [0, 1], y (N,) long."""

    x: Tensor
    y: Tensor
    num_classes: int

    @classmethod
    def from_images(cls, ds: ImageSet, device: torch.device) -> "TensorSet":
        """The split ``ds`` as float images (N, 3, H, W) in [0, 1] and long labels (N,) on ``device``."""
        return cls(to_tensor(ds.x, device), torch.as_tensor(ds.y, dtype=torch.long, device=device), ds.num_classes)

    def __len__(self) -> int:
        return self.x.shape[0]


def load_train_share(name: str, ratio: float, data_dir: str, usage: UsageInfo, device: torch.device,
                     flag: str = "--dataset") -> TensorSet:
    """The ``--data_ratio`` share (first int(N*r) images, see take_ratio) of a training split, on the device."""
    ds = load_split(name, "train", data_dir, size=usage.size, flag=flag, ratio=ratio)  # cut before resizing
    return TensorSet.from_images(ds, device)


def require_images(ds: ImageSet, flag: str, need: str) -> ImageSet:
    """``ds``, or one line when the split is empty (``need`` says what needed its images)."""
    if len(ds) == 0:
        fail(f"{flag} {ds.name}: the {ds.split} split holds no image; {need}")
    return ds


def check_label(label: int, num_classes: int, flag: str = "--reference_label") -> int:
    """``label`` if it is a class index of a task with ``num_classes`` classes, else one line naming ``flag``."""
    if not 0 <= label < num_classes:
        fail(f"{flag} {label}: expected a class index 0..{num_classes - 1} of the downstream dataset")
    return label
