"""Load a dataset split from ``--data_dir`` in either supported layout.

Layouts, detected per split: BadEncoder's npz (``<data_dir>/<name>/{train,test}.npz``, preferred; at
224 pixels its ``{train,test}_224.npz`` first) and torchvision's own files, looked for directly under ``data_dir`` and under ``data_dir/<name>``.
Every split comes back as uint8 (N, size, size, 3) images and int64 labels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from DATASETS import tv_layout
from DATASETS.names import DATASET_NAMES, NUM_CLASSES
from UTILS.errors import fail
from UTILS.io import load_npz
from UTILS.runtime import progress

SPLITS = ("train", "test")
BADENCODER_224 = 224  # BadEncoder ships <split>_224.npz copies of its datasets for 224-pixel encoders


@dataclass
class ImageSet:
    """One split of a dataset as loaded: images (N, H, W, 3) uint8 and labels (N,), before any tensor conversion."""

    x: np.ndarray  # (N, H, W, 3) uint8
    y: np.ndarray  # (N,) int64
    num_classes: int
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _resize_one(img: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3) uint8, exactly what torchvision's ``Resize((size, size))`` does to
    a PIL image (the original's transform): PIL's bilinear filter, whose support widens when shrinking
    (antialiasing), computed in PIL's fixed point. A torch interpolate differs by 1/255 on some pixels."""
    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BILINEAR))


def resize_images(images: np.ndarray | list[np.ndarray], size: int) -> np.ndarray:
    """Resize an (N,H,W,3) array or a list of (H,W,3) arrays of mixed sizes to (N,size,size,3), image by image."""
    if isinstance(images, np.ndarray) and images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i in progress(range(len(images)), desc=f"resize to {size}", total=len(images)):
        out[i] = _resize_one(images[i], size)
    return out


def _npz_path(name: str, split: str, data_dir: Path, size: int = 32) -> Path:
    """BadEncoder's file for a split: ``<split>.npz``, or ``<split>_224.npz`` (its 224-pixel copies,
    which it reads for ImageNet and CLIP encoders) when the images are wanted at 224 and it exists."""
    plain = data_dir / name / f"{split}.npz"
    big = data_dir / name / f"{split}_{BADENCODER_224}.npz"
    return big if int(size) == BADENCODER_224 and big.is_file() else plain


def _read_npz(path: Path, flag: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_npz(path, keys=("x", "y"), flag=flag)
    x, y = data["x"], data["y"]
    if x.ndim != 4 or x.shape[3] != 3 or x.dtype != np.uint8:
        fail(f"{flag} {path}: 'x' must be (N,H,W,3) uint8, found {x.shape} {x.dtype}")
    if x.shape[1] < 2 or x.shape[2] < 2:
        fail(f"{flag} {path}: 'x' holds images of {x.shape[1]}x{x.shape[2]} pixels; expected images of at least "
             f"2x2 pixels (they are resized to the encoder's input size)")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (x.shape[0],):
        fail(f"{flag} {path}: 'y' must be (N,) or (N,1) with N={x.shape[0]}, found {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            fail(f"{flag} {path}: 'y' must hold integer labels, found dtype {y.dtype}")
    return x, y  # cast to int64 once the labels are known to lie in range (a large uint64 would wrap)


def _tv_roots(name: str, data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / name]


def _locate(name: str, split: str, data_dir: Path, size: int = 32) -> tuple[str, Path]:
    """('npz', file) or ('torchvision', root) for the first layout present; fails listing all paths."""
    npz = _npz_path(name, split, data_dir, size)
    if npz.is_file():
        return "npz", npz
    looked = []
    for root in _tv_roots(name, data_dir):
        needed = tv_layout.files(name, root, split)
        if all(p.exists() for p in needed):
            return "torchvision", root
        looked.append(" + ".join(str(p) for p in needed))
    if int(size) == BADENCODER_224:
        npz = f"{npz.with_name(f'{split}_{BADENCODER_224}.npz')} or {npz}"
    fail(f"--data_dir {data_dir}: {name} {split} split not found; looked for BadEncoder's npz layout at "
         f"{npz} and torchvision's layout at {' or at '.join(looked)}")


def split_files(name: str, split: str, data_dir: str | Path, size: int = 32) -> dict[str, Path]:
    """{name relative to --data_dir: path} of the files :func:`load_split` reads for ``split`` (a folder of
    images counts as one entry); for the record of a run's inputs that ``--resume`` compares."""
    data_dir, key = Path(data_dir), str(name).strip().lower()
    if key.startswith("synthetic"):
        from DATASETS import synthetic

        synthetic.ensure_cached(key, data_dir)
    layout, path = _locate(key, split, data_dir, int(size))
    paths = [path] if layout == "npz" else tv_layout.files(key, path, split)
    return {os.path.relpath(p, data_dir): p for p in paths}


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        fail(f"{where}: labels must lie in [0, {num_classes}), found [{int(y.min())}, {int(y.max())}]")


def load_split(name: str, split: str, data_dir: str | Path, *, size: int = 32, flag: str = "--dataset",
               ratio: float | None = None, ratio_flag: str = "--data_ratio",
               keep: Callable[[np.ndarray], np.ndarray] | None = None) -> ImageSet:
    """Load ``split`` ('train' | 'test') of dataset ``name`` as uint8 (N, size, size, 3) images.

    ``ratio`` keeps the first int(N * ratio) images (:func:`take_ratio`) and ``keep`` (labels (N,) ->
    indices) the images it picks; both choose before resizing, so only the images used are resized
    (224x224 for an ImageNet encoder costs time and memory).
    """
    key = str(name).strip().lower()
    if key not in DATASET_NAMES:
        fail(f"{flag} {name}: unknown dataset; expected one of {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        fail(f"{flag} {name}: split must be 'train' or 'test', got {split!r}")
    if int(size) < 1:
        fail(f"{flag} {name}: image size must be positive, got {size}")
    data_dir = Path(data_dir)
    if key.startswith("synthetic"):
        from DATASETS import synthetic

        synthetic.ensure_cached(key, data_dir)
    layout, path = _locate(key, split, data_dir, int(size))
    if layout == "npz":
        images, y = _read_npz(path, flag)
    else:
        images, y = tv_layout.READERS[key](path, split)
    _check_labels(y, NUM_CLASSES[key], f"{flag} {key}: {path}")
    y = y.astype(np.int64)
    if ratio is not None:
        if len(y) == 0:
            fail(f"{flag} {key}: the {split} split at {path} holds no image")
        n = ratio_count(len(y), ratio, f"{key} {split}", ratio_flag)
        images, y = images[:n], y[:n]
    if keep is not None:
        idx = np.asarray(keep(y), dtype=np.int64)
        images, y = _subset(images, idx), y[idx]
    x = resize_images(images, int(size))
    return ImageSet(x=x, y=y, num_classes=NUM_CLASSES[key], name=key, split=split)


def _subset(images: np.ndarray | list[np.ndarray], idx: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """``images[idx]`` for an (N,H,W,3) array or a list of (H,W,3) arrays of mixed sizes."""
    if isinstance(images, np.ndarray):
        return images[idx]
    return [images[i] for i in idx]


def ratio_count(n: int, ratio: float, what: str, flag: str = "--data_ratio") -> int:
    """``int(n * ratio)``, as the original's ``Subset(arange(int(len * ratio)))``; fails when it keeps nothing.

    The float product is truncated as is, like the original: 100 * 0.29 = 28.999... keeps 28.
    """
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        fail(f"{flag} {ratio}: expected a number in (0, 1]")
    if not 0.0 < ratio <= 1.0:
        fail(f"{flag} {ratio}: expected a share in (0, 1]")
    kept = int(n * ratio)
    if kept == 0:
        fail(f"{flag} {ratio}: keeps no sample of the {n} in {what}; use a larger share")
    return kept


def take_ratio(ds: ImageSet, ratio: float, flag: str = "--data_ratio") -> ImageSet:
    """Keep the first ``int(N * ratio)`` samples (:func:`ratio_count`), as the original's Subset."""
    n = ratio_count(len(ds), ratio, f"{ds.name} {ds.split}", flag)
    return replace(ds, x=ds.x[:n], y=ds.y[:n])


def to_tensor(x: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) in [0, 1] on ``device``, in torch's default dtype (float32; the
    tests set float64 to compare two computation orders beyond float32's rounding)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"to_tensor expects an (N,H,W,3) uint8 array, got {getattr(x, 'shape', type(x))}")
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)  # move uint8: 4x less traffic
    return t.permute(0, 3, 1, 2).to(torch.get_default_dtype()).div_(255.0).contiguous()
