"""224-pixel data and triggers: BadEncoder's *_224.npz files, torchvision layouts and the embedded sets
resized to 224, the CLIP statistics, and both 224 trigger formats (BadEncoder's and DECREE's)."""
import numpy as np
import pytest
import torch
from torchvision import transforms

from DATASETS import get_usage, load_split, load_trigger, normalize, synthetic
from DATASETS.triggers import main as trigger_main
from DATASETS.triggers import white_square_trigger
from tests.DATASETS import writers
from tests.DATASETS.test_loaders import torchvision_resize
from UTILS.errors import UserError


def test_badencoder_224_files_are_preferred_at_224_only(tmp_path):
    small = writers.write_npz(tmp_path, "stl10", n=4, side=96)
    big = np.random.default_rng(0).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    np.savez(tmp_path / "stl10" / "test_224.npz", x=big, y=np.array([[1], [2], [3]]))
    at224 = load_split("stl10", "test", tmp_path, size=224)
    np.testing.assert_array_equal(at224.x, big)  # read as is, not resized from test.npz
    np.testing.assert_array_equal(at224.y, [1, 2, 3])
    assert load_split("stl10", "test", tmp_path, size=32).x.shape == (4, 32, 32, 3)
    # no train_224.npz: train.npz resized to 224 as torchvision's Resize would
    train = load_split("stl10", "train", tmp_path, size=224)
    np.testing.assert_array_equal(train.x, torchvision_resize(small["train"][0], 224))


def test_torchvision_layout_and_embedded_set_resize_to_224(tmp_path):
    truth = writers.write_cifar(tmp_path, n=2)
    ds = load_split("cifar10", "train", tmp_path, size=224)
    np.testing.assert_array_equal(ds.x, torchvision_resize(truth["train"][0], 224))
    (tmp_path / "synthetic").mkdir()
    for split in ("train", "test"):  # the embedded set's first images, cached small
        x, y = synthetic.generate("synthetic", split, n=4)
        np.savez(tmp_path / "synthetic" / f"{split}.npz", x=x, y=y)
    emb = load_split("synthetic", "test", tmp_path, size=224, ratio=0.5)
    np.testing.assert_array_equal(emb.x, torchvision_resize(x[:2], 224))


def test_missing_224_split_names_both_npz_files(tmp_path):
    with pytest.raises(UserError, match=r"test_224\.npz or .*test\.npz"):
        load_split("svhn", "test", tmp_path, size=224)


def test_clip_statistics_and_any_spelling():
    usage = get_usage("CLIP")
    assert usage is get_usage("clip") and usage.size == 224
    x = torch.rand(2, 3, 224, 224)
    ref = transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))(x)
    assert torch.allclose(normalize(x, usage), ref, atol=1e-6)
    # imagenet keeps the original RECEIVE's util.py statistics (docs/DIFFERENCES.md)
    assert get_usage("imagenet").mean == (0.485, 0.456, 0.406) and get_usage("imagenet").size == 224


def test_badencoder_224_trigger_is_the_50_square_at_173(tmp_path):
    trigger_main(["--out", str(tmp_path / "t.npz"), "--size", "224", "--patch", "50", "--start", "173"])
    with np.load(tmp_path / "t.npz") as z:
        assert z["t"].shape == (1, 224, 224, 3) and z["tm"].shape == (1, 224, 224, 3)
        rows, cols = np.nonzero(z["t"][0, :, :, 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (173, 222, 173, 222)
    trig = load_trigger(tmp_path / "t.npz", "--trigger_file", expected_size=224)
    stamped = trig(torch.zeros(1, 3, 224, 224))
    assert stamped.sum().item() == 3 * 50 * 50 and stamped[0, :, 173:223, 173:223].min() == 1


def test_decree_layout_without_batch_axis_reads_like_badencoders(tmp_path):
    trigger_main(["--out", str(tmp_path / "d.npz"), "--size", "224", "--patch", "24", "--start", "185",
                  "--no_batch_axis"])
    with np.load(tmp_path / "d.npz") as z:
        assert z["t"].shape == (224, 224, 3) and z["tm"].shape == (224, 224, 3)
    np.savez(tmp_path / "b.npz", **white_square_trigger(224, 24, 185))
    x = torch.rand(3, 3, 224, 224)
    decree = load_trigger(tmp_path / "d.npz", "--trigger_file", expected_size=224)
    badenc = load_trigger(tmp_path / "b.npz", "--trigger_file", expected_size=224)
    assert torch.equal(decree(x), badenc(x))
    assert decree.mask[:, 185:209, 185:209].min() == 1 and decree.mask.sum() == 3 * 24 * 24


def test_a_32_pixel_trigger_for_a_224_encoder_says_how_to_make_the_right_one(tmp_path):
    np.savez(tmp_path / "t32.npz", **white_square_trigger())
    with pytest.raises(UserError, match=r"trigger is 32x32 but the encoder expects 224x224; .*--size 224 --patch 50"):
        load_trigger(tmp_path / "t32.npz", "--trigger_file", expected_size=224)


def test_a_malformed_unbatched_trigger_is_one_line(tmp_path):
    np.savez(tmp_path / "bad.npz", t=np.zeros((224, 200, 3)), tm=np.ones((224, 200, 3)))
    with pytest.raises(UserError, match=r"'t' must have shape \(1,H,H,3\) or \(H,H,3\), got \(224, 200, 3\)"):
        load_trigger(tmp_path / "bad.npz", "--trigger_file")
