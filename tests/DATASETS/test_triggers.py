"""Trigger stamping in both formats against slow per-pixel references written from the format's definition."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from DATASETS import (GroundTruthTrigger, InvertedTrigger, load_trigger, save_ground_truth_trigger, stamp,
                      to_tensor, white_square_trigger)
from DATASETS.triggers import main
from UTILS.errors import UserError

REPO = Path(__file__).resolve().parents[2]
FLAG = "--trigger_file"


def _images(n: int = 3, side: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _reference_ground_truth(x: np.ndarray, t: np.ndarray, tm: np.ndarray) -> np.ndarray:
    """The format's definition, literally: in uint8 space stamped = x * tm + t, clipped, then /255. Per pixel."""
    out = np.zeros((x.shape[0], 3, x.shape[1], x.shape[2]))
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                for c in range(3):
                    v = float(x[b, i, j, c]) * tm[0, i, j, c] + t[0, i, j, c]
                    out[b, c, i, j] = min(max(v, 0.0), 255.0) / 255.0
    return out


def _reference_inverted(x: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """(1 - mask) * x + mask * pattern in [0,1] space, per pixel; mask (H,W) shared by channels."""
    out = np.zeros((x.shape[0], 3, x.shape[1], x.shape[2]))
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                for c in range(3):
                    v = (1 - mask[i, j]) * x[b, i, j, c] / 255.0 + mask[i, j] * pattern[c, i, j]
                    out[b, c, i, j] = min(max(v, 0.0), 1.0)
    return out


def test_ground_truth_matches_reference():
    rng = np.random.default_rng(1)
    x = _images()
    tm = (rng.random((1, 8, 8, 3)) < 0.6).astype(np.float32)
    t = np.where(tm == 0, rng.uniform(0, 255, tm.shape), rng.uniform(0, 40, tm.shape)).astype(np.float32)
    ours = GroundTruthTrigger(t, tm)(to_tensor(x, "cpu"))
    np.testing.assert_allclose(ours.numpy(), _reference_ground_truth(x, t, tm), atol=1e-6)


def test_white_square_stamp_exact():
    arr = white_square_trigger()
    x = _images(2, 32, 3)
    ours = GroundTruthTrigger(arr["t"], arr["tm"])(to_tensor(x, "cpu"))
    expected = x.copy()
    expected[:, 21:31, 21:31, :] = 255
    assert torch.equal(ours, to_tensor(expected, "cpu"))


def test_inverted_matches_reference_for_every_mask_shape():
    rng = np.random.default_rng(2)
    x = _images()
    mask = rng.random((8, 8)).astype(np.float32)
    pattern = rng.random((3, 8, 8)).astype(np.float32)
    ref = _reference_inverted(x, mask, pattern)
    for m in (mask, mask[None], np.repeat(mask[None], 3, 0)):
        trig = InvertedTrigger(torch.from_numpy(m), torch.from_numpy(pattern))
        np.testing.assert_allclose(trig(to_tensor(x, "cpu")).numpy(), ref, atol=1e-6)


def test_stamp_is_differentiable_and_unclipped():
    x = torch.rand(2, 3, 4, 4)
    mask = torch.full((4, 4), 0.5, requires_grad=True)
    pattern = torch.full((3, 4, 4), 3.0, requires_grad=True)
    out = stamp(x, mask, pattern)
    assert float(out.detach().max()) > 1.0  # no clipping inside stamp
    out.sum().backward()
    assert mask.grad is not None and pattern.grad is not None
    torch.testing.assert_close(pattern.grad, torch.full((3, 4, 4), 1.0))


def test_trigger_follows_device_and_dtype():
    arr = white_square_trigger(size=8, patch=2, start=5)
    trig = GroundTruthTrigger(arr["t"], arr["tm"])
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert trig(x).dtype == torch.float64 and trig(x.float()).dtype == torch.float32
    assert trig.size == 8 and trig.mask.shape == (3, 8, 8) and float(trig.mask.sum()) == 12.0
    assert torch.equal(trig.pattern, trig.mask)  # white exactly where the trigger replaces
    with pytest.raises(ValueError, match="8x8"):
        trig(torch.rand(1, 3, 16, 16))


def test_inverted_l1_save_and_load(tmp_path):
    mask = torch.zeros(6, 6)
    mask[1:3, 1:4] = 0.5
    trig = InvertedTrigger(mask, torch.rand(3, 6, 6))
    assert trig.l1 == pytest.approx(3.0) and trig.size == 6
    a, b = trig.save(tmp_path / "a.npz", idx=7), trig.save(tmp_path / "b.npz", idx=7)
    assert a.read_bytes() == b.read_bytes()
    data = np.load(a)
    assert data["mask"].shape == (3, 6, 6) and data["mask"].dtype == np.float32
    assert data["pattern"].dtype == np.float32 and data["idx"].dtype == np.int64 and int(data["idx"]) == 7
    back = load_trigger(a, FLAG, expected_size=6)
    assert isinstance(back, InvertedTrigger) and back.l1 == pytest.approx(3.0)
    assert "idx" not in np.load(trig.save(tmp_path / "c.npz")).files


def test_white_square_content_and_file(tmp_path):
    arr = white_square_trigger()
    assert set(arr) == {"t", "tm"}
    for v in arr.values():
        assert v.shape == (1, 32, 32, 3) and v.dtype == np.float32
    inside = np.zeros((32, 32), bool)
    inside[21:31, 21:31] = True
    assert (arr["t"][0][inside] == 255).all() and (arr["t"][0][~inside] == 0).all()
    assert (arr["tm"][0][inside] == 0).all() and (arr["tm"][0][~inside] == 1).all()
    path = save_ground_truth_trigger(tmp_path / "trigger" / "t.npz")
    trig = load_trigger(path, FLAG, expected_size=32)
    assert isinstance(trig, GroundTruthTrigger)
    np.testing.assert_array_equal(np.load(path)["t"], arr["t"])
    with pytest.raises(UserError, match="--size/--patch/--start"):
        white_square_trigger(size=32, patch=10, start=25)


def test_cli_writes_trigger(tmp_path, capsys):
    out = tmp_path / "trigger" / "trigger_pt_white_21_10_ap_replace.npz"
    main(["--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out)["tm"], white_square_trigger()["tm"])
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "x.npz"), "--start", "30"])
    assert exc.value.code == 2


def test_cli_as_module(tmp_path):
    out = tmp_path / "t.npz"
    subprocess.run([sys.executable, "-m", "DATASETS.triggers", "--out", str(out), "--size", "16", "--patch", "4",
                    "--start", "11"], cwd=REPO, check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(out)["t"], white_square_trigger(16, 4, 11)["t"])


def _write(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


GOOD_T = white_square_trigger(8, 2, 5)
BAD_FILES = {
    "no keys": dict(x=np.zeros(3)),
    "t shape": dict(t=np.zeros((2, 8, 8, 3)), tm=np.ones((2, 8, 8, 3))),  # (8, 8, 3) is DECREE's layout: valid
    "t/tm differ": dict(t=np.zeros((1, 8, 8, 3)), tm=np.ones((1, 4, 4, 3))),
    "t range": dict(t=GOOD_T["t"] * 2, tm=GOOD_T["tm"]),
    "tm not binary": dict(t=GOOD_T["t"], tm=GOOD_T["tm"] * 0.5),
    "t nan": dict(t=np.full((1, 8, 8, 3), np.nan), tm=GOOD_T["tm"]),
    "mask shape": dict(mask=np.zeros((2, 8, 8)), pattern=np.zeros((3, 8, 8))),
    "not square": dict(mask=np.zeros((8, 6)), pattern=np.zeros((3, 8, 6))),
    "pattern shape": dict(mask=np.zeros((8, 8)), pattern=np.zeros((3, 6, 6))),
    "mask range": dict(mask=np.full((8, 8), 1.5), pattern=np.zeros((3, 8, 8))),
    "pattern inf": dict(mask=np.zeros((8, 8)), pattern=np.full((3, 8, 8), np.inf)),
    "strings": dict(mask=np.array([["a"] * 8] * 8), pattern=np.zeros((3, 8, 8))),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_load_trigger_rejects(tmp_path, case):
    path = _write(tmp_path / "bad.npz", **BAD_FILES[case])
    with pytest.raises(UserError) as err:
        load_trigger(path, FLAG)
    assert str(err.value).startswith(f"{FLAG} ") and str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_trigger_size_and_file_errors(tmp_path):
    path = _write(tmp_path / "t.npz", **GOOD_T)
    with pytest.raises(UserError, match=f"{FLAG} .*trigger is 8x8 but the encoder expects 32x32"):
        load_trigger(path, FLAG, expected_size=32)
    with pytest.raises(UserError, match=f"{FLAG} .*not found"):
        load_trigger(tmp_path / "missing.npz", FLAG)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="--re_mask_pattern .*junk.npz"):
        load_trigger(tmp_path / "junk.npz", "--re_mask_pattern")
