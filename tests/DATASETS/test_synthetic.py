"""The embedded synthetic dataset: deterministic, balanced, trigger-free, cached in the npz layout."""
from __future__ import annotations

import numpy as np
import pytest

from DATASETS import USAGE, load_split, synthetic
from DATASETS.triggers import white_square_trigger


@pytest.mark.parametrize("name", ["synthetic", "synthetic_down"])
def test_deterministic_and_balanced(name):
    x1, y1 = synthetic.generate(name, "train", n=60)
    x2, y2 = synthetic.generate(name, "train", n=60)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (60, 32, 32, 3) and x1.dtype == np.uint8 and y1.dtype == np.int64
    assert (np.bincount(y1, minlength=10) == 6).all()
    x3, _ = synthetic.generate(name, "train", n=60, seed=123)
    xt, _ = synthetic.generate(name, "test", n=60)
    assert not np.array_equal(x1, x3) and not np.array_equal(x1, xt)
    assert x1.std() > 20  # real images, not blanks


def test_variants_differ():
    a, _ = synthetic.generate("synthetic", "train", n=40)
    b, _ = synthetic.generate("synthetic_down", "train", n=40)
    assert not np.array_equal(a, b)
    assert len(synthetic.CLASS_NAMES) == 10 and len(set(synthetic.CLASS_NAMES)) == 10


def test_nothing_looks_like_the_trigger():
    x, _ = synthetic.generate("synthetic", "train", n=300)
    assert int(x.max()) <= 220
    square = white_square_trigger()["tm"][0] == 0  # (32, 32, 3) trigger area
    assert x[:, square].reshape(len(x), -1).mean(axis=1).max() < 230


def test_cached_in_npz_layout(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.SIZES, "synthetic_down", {"train": 30, "test": 20})
    ds = load_split("synthetic_down", "train", tmp_path)
    assert len(ds) == 30 and ds.num_classes == 10 and ds.name == "synthetic_down"
    for split in ("train", "test"):
        assert (tmp_path / "synthetic_down" / f"{split}.npz").is_file()
    np.testing.assert_array_equal(ds.x, synthetic.generate("synthetic_down", "train")[0])

    def no_generation(*args, **kwargs):
        raise AssertionError("should load the cache")

    monkeypatch.setattr(synthetic, "generate", no_generation)
    again = load_split("synthetic_down", "train", tmp_path, size=16)
    assert again.x.shape == (30, 16, 16, 3)


def test_stale_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.SIZES, "synthetic", {"train": 20, "test": 20})
    load_split("synthetic", "test", tmp_path)
    path = tmp_path / "synthetic" / "test.npz"
    np.savez(path, x=np.zeros((5, 32, 32, 3), np.uint8), y=np.zeros(5, np.int64), generator_version=np.int64(-1))
    assert len(load_split("synthetic", "test", tmp_path)) == 20
    np.savez(path, x=np.zeros((5, 32, 32, 3), np.uint8), y=np.zeros(5, np.int64))  # user's own file: kept
    assert len(load_split("synthetic", "test", tmp_path)) == 5


@pytest.mark.slow
def test_full_sizes_and_usage_statistics():
    x, y = synthetic.generate("synthetic", "train")
    assert x.shape == (10000, 32, 32, 3) and (np.bincount(y) == 1000).all()
    pixels = x.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(pixels.mean(0), USAGE["synthetic"].mean, atol=6e-5)
    np.testing.assert_allclose(pixels.std(0), USAGE["synthetic"].std, atol=6e-5)
    for name, split, n in [("synthetic", "test", 2000), ("synthetic_down", "train", 5000),
                           ("synthetic_down", "test", 2000)]:
        assert synthetic.generate(name, split)[0].shape[0] == n
