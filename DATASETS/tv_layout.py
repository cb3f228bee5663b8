"""Readers for torchvision's on-disk layouts of CIFAR10, STL10, SVHN and GTSRB (no torchvision needed).

Each reader takes the *root* torchvision would be given and a split, and returns raw images
(an (N,H,W,3) uint8 array, or a list of (H,W,3) arrays when sizes differ) and (N,) int64 labels.
``files(name, root, split)`` says which files must exist for a split to count as present.
"""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np

from UTILS.errors import fail
from UTILS.runtime import progress

CIFAR_DIR = "cifar-10-batches-py"
STL_DIR = "stl10_binary"
STL_SIDE = 96

# The globals a numpy array pickle needs (old and new numpy module paths, protocol 2-5) and
# nothing else: a crafted batch file cannot reach os.system & co. through find_class.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, dicts, lists, strings and numbers."""

    def find_class(self, module: str, name: str):
        """Resolve only the numpy globals a CIFAR batch needs; anything else is refused (dataset files are
        untrusted)."""
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a dataset file")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]  # avoid numpy 2's deprecation shim
        return super().find_class(module, name)


def files(name: str, root: Path, split: str) -> list[Path]:
    """The files a split needs in torchvision's layout below ``root``."""
    if name == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return [root / CIFAR_DIR / n for n in names]
    if name == "stl10":
        return [root / STL_DIR / f"{split}_X.bin", root / STL_DIR / f"{split}_y.bin"]
    if name == "svhn":
        return [root / f"{split}_32x32.mat"]
    if name == "gtsrb":
        if split == "train":
            return [root / "gtsrb" / "GTSRB" / "Training"]
        return [root / "gtsrb" / "GTSRB" / "Final_Test" / "Images", root / "gtsrb" / "GT-final_test.csv"]
    raise KeyError(name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            entry = SafeUnpickler(handle, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        fail(f"{path}: refused or unreadable CIFAR batch ({exc})")
    except Exception as exc:  # any parser error means a damaged file; name it
        fail(f"{path}: unreadable CIFAR batch ({exc.__class__.__name__}: {exc})")
    if not isinstance(entry, dict):
        fail(f"{path}: CIFAR batch must hold a dict, found {type(entry).__name__}")
    # Python 2 pickles decode to str keys under latin1; Python 3 ones may carry bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_cifar(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` from torchvision's python batches: images (N, 32, 32, 3) uint8, labels (N,) int64."""
    xs, ys = [], []
    for path in files("cifar10", root, split):
        entry = _unpickle(path)
        data, labels = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels is None:
            fail(f"{path}: CIFAR batch must hold 'data' (N,3072) uint8 and 'labels'")
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],):
            fail(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
        xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def read_stl10(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """STL10 ``split`` from torchvision's binaries: images (N, 96, 96, 3) uint8, labels (N,) int64 in 0..9."""
    x_path, y_path = files("stl10", root, split)
    try:
        raw = np.fromfile(x_path, dtype=np.uint8)
        labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
    except (OSError, ValueError) as exc:
        fail(f"{x_path.parent}: unreadable STL10 binary ({exc})")
    per_image = 3 * STL_SIDE * STL_SIDE
    if raw.size % per_image or raw.size // per_image != labels.size:
        fail(f"{x_path}: expected {labels.size} images of {per_image} bytes (labels in {y_path.name}), "
             f"found {raw.size} bytes")
    # STL10 stores each channel column-major: (N, C, W, H) -> (N, H, W, C).
    images = raw.reshape(-1, 3, STL_SIDE, STL_SIDE).transpose(0, 3, 2, 1)
    return np.ascontiguousarray(images), labels


def read_svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``split`` from torchvision's .mat file: images (N, 32, 32, 3) uint8, labels (N,) int64 (digit 0 is label
    0)."""
    import scipy.io

    (path,) = files("svhn", root, split)
    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except Exception as exc:  # scipy raises many types (even IndexError) on damaged files
        fail(f"{path}: unreadable SVHN .mat file ({exc.__class__.__name__}: {exc})")
    if x.ndim != 4 or x.shape[2] != 3 or y.size != x.shape[3]:
        fail(f"{path}: expected X (H,W,3,N) and y (N,1), found X {x.shape} and y {y.shape}")
    labels = y.astype(np.int64).reshape(-1)
    labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8)), labels


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        fail(f"{path}: unreadable image ({exc})")


def _gtsrb_samples(root: Path, split: str) -> list[tuple[Path, int]]:
    if split == "train":
        (folder,) = files("gtsrb", root, split)
        classes = sorted(d for d in folder.iterdir() if d.is_dir())
        # Folder names are the class ids (00000..00042); torchvision's sorted index agrees on the
        # full dataset, and the id stays right when some class folders are absent.
        numeric = all(d.name.isdigit() for d in classes)
        return [(p, int(d.name) if numeric else i) for i, d in enumerate(classes)
                for p in sorted(d.rglob("*.ppm"))]
    folder, csv_path = files("gtsrb", root, split)
    try:
        with open(csv_path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter=";", skipinitialspace=True))
        return [(folder / row["Filename"], int(row["ClassId"])) for row in rows]
    except (OSError, KeyError, ValueError, TypeError, csv.Error) as exc:
        fail(f"{csv_path}: unreadable GTSRB ground-truth csv (expected ';'-separated Filename and ClassId; {exc})")


def read_gtsrb(root: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """GTSRB ``split`` from torchvision's .ppm folders: a list of (H_i, W_i, 3) uint8 images (sizes vary) and labels
    (N,)."""
    samples = _gtsrb_samples(root, split)
    if not samples:
        fail(f"{files('gtsrb', root, split)[0]}: no GTSRB .ppm images found")
    images = [_read_image(p) for p, _ in progress(samples, desc=f"gtsrb {split}")]
    return images, np.asarray([c for _, c in samples], dtype=np.int64)


READERS = {"cifar10": read_cifar, "stl10": read_stl10, "svhn": read_svhn, "gtsrb": read_gtsrb}

__all__ = ["SafeUnpickler", "READERS", "files"]
