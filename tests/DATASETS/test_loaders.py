"""Loaders: both on-disk layouts for every dataset, resizing, errors, take_ratio, to_tensor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from DATASETS import ImageSet, load_split, take_ratio, to_tensor
from DATASETS.loaders import resize_images
from tests.DATASETS import writers
from UTILS.errors import UserError


def torchvision_resize(images, size: int) -> np.ndarray:
    """The original's resize, image by image: torchvision's Resize((size, size)) on a PIL image."""
    resize = transforms.Resize((size, size))
    return np.stack([np.asarray(resize(Image.fromarray(img))) for img in images])


@pytest.mark.parametrize("bytes_keys", [True, False])
@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("under_name", [False, True])
def test_cifar_torchvision_layout(tmp_path, bytes_keys, protocol, under_name):
    root = tmp_path / "cifar10" if under_name else tmp_path
    truth = writers.write_cifar(root, bytes_keys=bytes_keys, protocol=protocol)
    for split in ("train", "test"):
        ds = load_split("cifar10", split, tmp_path)
        np.testing.assert_array_equal(ds.x, truth[split][0])
        np.testing.assert_array_equal(ds.y, truth[split][1])
        assert ds.x.dtype == np.uint8 and ds.y.dtype == np.int64 and ds.num_classes == 10
    assert len(load_split("cifar10", "train", tmp_path)) == 20


def test_stl10_torchvision_layout_is_resized(tmp_path):
    truth = writers.write_stl10(tmp_path / "stl10")
    ds = load_split("stl10", "train", tmp_path)
    x96, y = truth["train"]
    assert ds.x.shape == (3, 32, 32, 3) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.y, y)
    np.testing.assert_array_equal(ds.x, torchvision_resize(x96, 32))
    assert load_split("stl10", "test", tmp_path, size=96).x.shape == (3, 96, 96, 3)
    np.testing.assert_array_equal(load_split("stl10", "test", tmp_path, size=96).x, truth["test"][0])


def test_svhn_torchvision_layout(tmp_path):
    truth = writers.write_svhn(tmp_path)
    for split in ("train", "test"):
        ds = load_split("svhn", split, tmp_path)
        np.testing.assert_array_equal(ds.x, truth[split][0])
        np.testing.assert_array_equal(ds.y, truth[split][1])  # stored 10 comes back as 0
    assert 0 in ds.y


def test_gtsrb_torchvision_layout(tmp_path):
    truth = writers.write_gtsrb(tmp_path, classes=(0, 12, 42))
    train = load_split("gtsrb", "train", tmp_path)
    assert train.x.shape == (6, 32, 32, 3) and train.num_classes == 43
    np.testing.assert_array_equal(train.y, truth["train"][1])  # class id from the folder name
    np.testing.assert_array_equal(train.x, resize_images(truth["train"][0], 32))
    test = load_split("gtsrb", "test", tmp_path)
    np.testing.assert_array_equal(test.y, truth["test"][1])
    np.testing.assert_array_equal(test.x[2], truth["test"][0][2])  # the 32x32 one is untouched


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("stl10", 10), ("svhn", 10), ("gtsrb", 43)])
@pytest.mark.parametrize("column_y", [False, True])
def test_npz_layout(tmp_path, name, classes, column_y):
    truth = writers.write_npz(tmp_path, name, column_y=column_y, num_classes=classes)
    ds = load_split(name, "test", tmp_path)
    assert isinstance(ds, ImageSet) and ds.name == name and ds.split == "test"
    np.testing.assert_array_equal(ds.x, truth["test"][0])
    np.testing.assert_array_equal(ds.y, truth["test"][1])
    assert ds.y.shape == (6,) and ds.y.dtype == np.int64


def test_npz_96_is_resized(tmp_path):
    writers.write_npz(tmp_path, "stl10", side=96)
    assert load_split("stl10", "train", tmp_path).x.shape == (6, 32, 32, 3)


def test_npz_preferred_over_torchvision(tmp_path):
    writers.write_cifar(tmp_path)
    truth = writers.write_npz(tmp_path, "cifar10", n=3)
    np.testing.assert_array_equal(load_split("cifar10", "train", tmp_path).x, truth["train"][0])


def test_matches_torchvision_readers(tmp_path, monkeypatch):
    """Our readers agree with torchvision's own datasets on the same files (md5 checks bypassed)."""
    import torchvision.datasets as tvd
    from torchvision.datasets import cifar, stl10, svhn

    for module in (cifar, stl10, svhn):
        monkeypatch.setattr(module, "check_integrity", lambda *a, **k: True)
    writers.write_cifar(tmp_path)
    writers.write_stl10(tmp_path)
    writers.write_svhn(tmp_path)
    writers.write_gtsrb(tmp_path)
    pairs = [("cifar10", tvd.CIFAR10(tmp_path, train=True)), ("stl10", tvd.STL10(tmp_path, split="train")),
             ("svhn", tvd.SVHN(tmp_path, split="train")), ("gtsrb", tvd.GTSRB(tmp_path, split="train"))]
    for name, theirs in pairs:
        ours = load_split(name, "train", tmp_path, size=96 if name == "stl10" else 32)
        assert len(ours) == len(theirs)
        for i in range(len(theirs)):
            img, label = theirs[i]
            assert int(ours.y[i]) == int(label), name
            if name != "gtsrb":
                np.testing.assert_array_equal(ours.x[i], np.asarray(img), err_msg=name)


def test_missing_dataset_names_both_layouts(tmp_path):
    with pytest.raises(UserError) as err:
        load_split("cifar10", "train", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "npz" in msg and "torchvision" in msg
    assert str(tmp_path / "cifar10" / "train.npz") in msg
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1") in msg


@pytest.mark.parametrize("kwargs,needle", [({"name": "mnist"}, "mnist"), ({"split": "val"}, "split")])
def test_bad_name_or_split(tmp_path, kwargs, needle):
    args = {"name": "cifar10", "split": "train", **kwargs}
    with pytest.raises(UserError, match=needle):
        load_split(args["name"], args["split"], tmp_path)


def test_labels_out_of_range(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    np.savez(folder / "train.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, 10]))
    with pytest.raises(UserError, match=r"labels must lie in \[0, 10\)"):
        load_split("cifar10", "train", tmp_path)


def test_npz_wrong_dtype_and_shape(tmp_path):
    folder = tmp_path / "svhn"
    folder.mkdir()
    np.savez(folder / "train.npz", x=np.zeros((2, 32, 32, 3), np.float32), y=np.array([0, 1]))
    np.savez(folder / "test.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, 1, 2]))
    with pytest.raises(UserError, match="uint8"):
        load_split("svhn", "train", tmp_path)
    with pytest.raises(UserError, match="'y'"):
        load_split("svhn", "test", tmp_path)


def test_corrupt_files_are_named(tmp_path):
    writers.write_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match="data_batch_3"):
        load_split("cifar10", "train", tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(UserError, match="test_32x32.mat"):
        load_split("svhn", "test", tmp_path)
    (tmp_path / "stl10").mkdir()
    (tmp_path / "stl10" / "train.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(UserError, match="train.npz"):
        load_split("stl10", "train", tmp_path)


def test_corrupt_gtsrb_image_and_stl_size(tmp_path):
    writers.write_gtsrb(tmp_path)
    (tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "00001.ppm").write_bytes(b"P6 junk")
    with pytest.raises(UserError, match="00001.ppm"):
        load_split("gtsrb", "test", tmp_path)
    writers.write_stl10(tmp_path)
    with open(tmp_path / "stl10_binary" / "test_X.bin", "ab") as handle:
        handle.write(b"\x00" * 7)
    with pytest.raises(UserError, match="test_X.bin"):
        load_split("stl10", "test", tmp_path)


def _set(n: int) -> ImageSet:
    return ImageSet(x=np.arange(n * 12, dtype=np.uint8).reshape(n, 2, 2, 3), y=np.arange(n) % 10,
                    num_classes=10, name="cifar10", split="train")


def test_take_ratio():
    ds = _set(100)
    assert len(take_ratio(ds, 1.0)) == 100
    sub = take_ratio(ds, 0.29)
    assert len(sub) == 28  # the original's int(100 * 0.29) = int(28.999999999999996): truncated, not rounded
    np.testing.assert_array_equal(sub.x, ds.x[:28])
    np.testing.assert_array_equal(sub.y, ds.y[:28])
    for n, ratio in ((50000, 0.01), (50000, 0.29), (5000, 0.5), (73257, 0.3), (10, 0.7), (26032, 0.1)):
        assert len(take_ratio(_set(n), ratio)) == int(n * ratio)
    assert len(take_ratio(_set(50000), 0.29)) == 14499  # not 14500
    for bad in (0.0, -0.1, 1.5, float("nan"), "abc"):
        with pytest.raises(UserError, match="--data_ratio"):
            take_ratio(ds, bad)
    with pytest.raises(UserError, match="--data_ratio"):
        take_ratio(_set(10), 0.05)


def test_to_tensor():
    x = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    t = to_tensor(x, "cpu")
    assert t.shape == (4, 3, 5, 6) and t.dtype == torch.float32 and t.is_contiguous()
    assert torch.equal(t, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    with pytest.raises(ValueError):
        to_tensor(x.astype(np.float32), "cpu")


def test_resize_constant_image_stays_constant():
    x = np.full((2, 96, 96, 3), 77, dtype=np.uint8)
    out = resize_images(x, 32)
    assert out.shape == (2, 32, 32, 3) and (out == 77).all()


def test_resize_is_torchvisions_resize_on_pil_images():
    """Bit-exact with the original's transforms.Resize on PIL images: 96 -> 32 (STL-10), other sizes, a list."""
    rng = np.random.default_rng(3)
    x96 = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    x96[0] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None]  # smooth ramps round differently from noise
    np.testing.assert_array_equal(resize_images(x96, 32), torchvision_resize(x96, 32))
    mixed = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((45, 31, 3), (32, 32, 3), (17, 60, 3))]
    np.testing.assert_array_equal(resize_images(mixed, 32), torchvision_resize(mixed, 32))
    np.testing.assert_array_equal(resize_images(x96[:2], 224), torchvision_resize(x96[:2], 224))  # upscaling too
    assert resize_images(x96, 32).dtype == np.uint8


def test_ratio_and_keep_choose_before_resizing(tmp_path, monkeypatch):
    """Only the images a run uses are resized (224x224 for ImageNet encoders), with the same result."""
    import DATASETS.loaders as loaders

    rng = np.random.default_rng(0)
    (tmp_path / "cifar10").mkdir()
    x, y = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10
    np.savez(tmp_path / "cifar10" / "train.npz", x=x, y=y)
    full = load_split("cifar10", "train", tmp_path, size=64)
    resized = []
    monkeypatch.setattr(loaders, "_resize_one", lambda img, size: resized.append(1) or np.asarray(
        Image.fromarray(img).resize((size, size), Image.BILINEAR)))
    share = load_split("cifar10", "train", tmp_path, size=64, ratio=0.25)
    assert len(resized) == 10 and np.array_equal(share.x, take_ratio(full, 0.25).x)
    picked = load_split("cifar10", "train", tmp_path, size=64, keep=lambda labels: np.flatnonzero(labels == 3)[:2])
    assert len(resized) == 12 and np.array_equal(picked.x, full.x[[3, 13]]) and list(picked.y) == [3, 3]
    np.savez(tmp_path / "cifar10" / "train.npz", x=x[:0], y=y[:0])
    with pytest.raises(UserError, match="--dataset cifar10: the train split at .* holds no image"):
        load_split("cifar10", "train", tmp_path, ratio=0.5)
