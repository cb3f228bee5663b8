"""Write tiny datasets in the real on-disk formats (torchvision's and BadEncoder's npz) for tests."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def images(n: int, side: int, seed: int) -> np.ndarray:
    """(n, side, side, 3) uint8 random images."""
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, num_classes, n).astype(np.int64)


def write_cifar(root: Path, n: int = 4, bytes_keys: bool = False, protocol: int = 2) -> dict:
    """cifar-10-batches-py/ with 5 train batches, test_batch and batches.meta, like the real tarball.

    The real batches are Python 2 pickles whose keys load as str under latin1 (what torchvision
    indexes); ``bytes_keys`` writes the Python 3 spelling that some re-saved copies carry.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    out = {"train": ([], []), "test": ([], [])}
    names = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for seed, (name, split) in enumerate(names):
        x, y = images(n, 32, seed), labels(n, 10, seed)
        entry = {key("batch_label"): key(name), key("labels"): [int(v) for v in y],
                 key("data"): x.transpose(0, 3, 1, 2).reshape(n, 3072),
                 key("filenames"): [key(f"{i}.png") for i in range(n)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=protocol)
        out[split][0].append(x)
        out[split][1].append(y)
    meta = {key("label_names"): [key(c) for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                 "horse", "ship", "truck")], key("num_cases_per_batch"): n}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=protocol)
    return {s: (np.concatenate(v[0]), np.concatenate(v[1])) for s, v in out.items()}


def write_stl10(root: Path, n: int = 3) -> dict:
    """stl10_binary/{train,test}_{X,y}.bin: 96x96 images stored channel-major, column-major; labels 1..10."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for seed, split in enumerate(("train", "test")):
        x, y = images(n, 96, 10 + seed), labels(n, 10, 10 + seed)
        x.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # (N, C, W, H) as in the real files
        (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        out[split] = (x, y)
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return out


def write_svhn(root: Path, n: int = 5) -> dict:
    """{train,test}_32x32.mat with X (32,32,3,N) and y (N,1), digit 0 stored as 10."""
    Path(root).mkdir(parents=True, exist_ok=True)
    out = {}
    for seed, split in enumerate(("train", "test")):
        x = images(n, 32, 20 + seed)
        y = np.arange(n, dtype=np.int64) % 10
        stored = np.where(y == 0, 10, y).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(str(Path(root) / f"{split}_32x32.mat"), {"X": x.transpose(1, 2, 3, 0), "y": stored})
        out[split] = (x, y)
    return out


GTSRB_SIZES = [(30, 35), (40, 40), (32, 32), (29, 31)]


def write_gtsrb(root: Path, classes: tuple[int, ...] = (0, 1, 2)) -> dict:
    """gtsrb/GTSRB/Training/<class>/*.ppm (+ per-class csv), Final_Test/Images/*.ppm and GT-final_test.csv."""
    base = Path(root) / "gtsrb"
    xs, ys = [], []
    for c in classes:
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"GT-{c:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
        for k, (h, w) in enumerate(GTSRB_SIZES[:2]):
            img = np.random.default_rng(100 * c + k).integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"00000_{k:05d}.ppm")
            xs.append(img)
            ys.append(c)
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True, exist_ok=True)
    txs, tys = [], []
    with open(base / "GT-final_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for k, (h, w) in enumerate(GTSRB_SIZES):
            img = np.random.default_rng(999 + k).integers(0, 256, (h, w, 3), dtype=np.uint8)
            name = f"{k:05d}.ppm"
            Image.fromarray(img).save(test_dir / name)
            c = classes[k % len(classes)]
            writer.writerow([name, w, h, 1, 1, w - 1, h - 1, c])
            txs.append(img)
            tys.append(c)
    return {"train": (xs, np.asarray(ys)), "test": (txs, np.asarray(tys))}


def write_npz(data_dir: Path, name: str, n: int = 6, side: int = 32, column_y: bool = False,
              num_classes: int = 10) -> dict:
    """BadEncoder layout: <data_dir>/<name>/{train,test}.npz with x (N,H,W,3) uint8 and y (N,) or (N,1)."""
    folder = Path(data_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for seed, split in enumerate(("train", "test")):
        x, y = images(n, side, 30 + seed), labels(n, num_classes, 30 + seed)
        np.savez(folder / f"{split}.npz", x=x, y=y.reshape(-1, 1) if column_y else y)
        out[split] = (x, y)
    return out
