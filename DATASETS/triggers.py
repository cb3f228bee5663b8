"""Trigger formats (docs/DATA.md): the one place where images get stamped.

Ground truth (BadEncoder) npz: ``t`` (1,H,W,3) in 0..255 and ``tm`` (1,H,W,3) of 0/1, stamped in
uint8 space as ``x * tm + t`` (DECREE stores its 224-pixel triggers without the leading axis,
``(H,W,3)``: read alike). Inverted npz: ``mask`` and ``pattern`` (3,H,W) in [0,1], stamped in
[0,1] space as ``(1 - mask) * x + mask * pattern``. Both act on [0,1] images before normalisation.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from DATASETS.names import DEFAULT_TRIGGER
from UTILS.errors import ArgumentParser, cli_entry, fail
from UTILS.io import load_npz, save_npz


def _mask3(mask: Tensor) -> Tensor:
    """(H,W), (1,H,W) or (3,H,W) -> (3,H,W); the inverted mask is one plane shared by all channels."""
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or mask.shape[0] not in (1, 3):
        raise ValueError(f"mask must be (H,W), (1,H,W) or (3,H,W), got {tuple(mask.shape)}")
    return mask.expand(3, -1, -1)


def stamp(x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """``(1 - mask) * x + mask * pattern``; differentiable in mask and pattern, no clipping.

    x: (B, 3, H, W) in [0, 1]; mask: (H, W) | (1, H, W) | (3, H, W); pattern: (3, H, W).
    """
    m = _mask3(mask)
    return (1 - m) * x + m * pattern


class Trigger(Protocol):
    """What every consumer of a trigger needs: ``trigger(x)`` stamps a batch, x (B, 3, H, W) in [0, 1] ->
    stamped (B, 3, H, W) in [0, 1]. Both file formats below are Triggers (they also carry ``mask`` and
    ``pattern`` (3, H, W), which the previews draw); so is any function of that shape, e.g. in a test."""

    def __call__(self, x: Tensor) -> Tensor: ...


class GroundTruthTrigger:
    """BadEncoder trigger: ``clamp(x * tm + t / 255, 0, 1)`` on [0,1] images."""

    def __init__(self, t: np.ndarray, tm: np.ndarray) -> None:
        t = np.asarray(t, dtype=np.float32)  # (1, H, W, 3), 0..255
        tm = np.asarray(tm, dtype=np.float32)  # (1, H, W, 3), 0/1
        self._t = torch.from_numpy(t[0].transpose(2, 0, 1).copy()) / 255.0  # (3, H, W)
        self._tm = torch.from_numpy(tm[0].transpose(2, 0, 1).copy())  # (3, H, W)
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.size = int(t.shape[1])
        self.mask = 1.0 - self._tm  # (3, H, W): 1 where the trigger replaces the image
        self.pattern = self._t  # (3, H, W) in [0, 1]

    def _buffers(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = (self._tm.to(x.device, x.dtype), self._t.to(x.device, x.dtype))
        return self._cache[key]

    def __call__(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) in [0, 1] -> stamped (B, 3, H, W) in [0, 1]."""
        _check_size(x, self.size)
        tm, t = self._buffers(x)
        return torch.clamp(x * tm + t, 0.0, 1.0)


class InvertedTrigger:
    """A reverse-engineered trigger: mask (H,W)|(1|3,H,W) and pattern (3,H,W), both in [0,1]."""

    def __init__(self, mask: Tensor | np.ndarray, pattern: Tensor | np.ndarray) -> None:
        self.mask = _mask3(torch.as_tensor(mask, dtype=torch.float32) if isinstance(mask, np.ndarray) else mask)
        self.pattern = torch.as_tensor(pattern, dtype=torch.float32) if isinstance(pattern, np.ndarray) else pattern
        if tuple(self.pattern.shape) != tuple(self.mask.shape):
            raise ValueError(f"pattern {tuple(self.pattern.shape)} does not match mask {tuple(self.mask.shape)}")
        self.size = int(self.mask.shape[-1])

    @property
    def l1(self) -> float:
        """Trigger size: L1 of the single-channel mask over H, W (= sum of the (3,H,W) mask / 3)."""
        return float(self.mask.detach().sum() / 3.0)

    def __call__(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) in [0, 1] -> stamped and clipped (B, 3, H, W)."""
        _check_size(x, self.size)
        m = self.mask.to(x.device, x.dtype)
        p = self.pattern.to(x.device, x.dtype)
        return torch.clamp(stamp(x, m, p), 0.0, 1.0)

    def save(self, path: str | os.PathLike, idx: int | None = None) -> Path:
        """Write ``mask``/``pattern`` (3,H,W) float32 (+ ``idx`` int64) atomically."""
        arrays = {
            "mask": self.mask.detach().cpu().to(torch.float32).numpy().copy(),
            "pattern": self.pattern.detach().cpu().to(torch.float32).numpy().copy(),
        }
        if idx is not None:
            arrays["idx"] = np.asarray(idx, dtype=np.int64)
        return save_npz(path, **arrays)


def _check_size(x: Tensor, size: int) -> None:
    if x.shape[-1] != size or x.shape[-2] != size:
        raise ValueError(f"trigger is {size}x{size} but images are {x.shape[-2]}x{x.shape[-1]}")


def _finite_in(a: np.ndarray, lo: float, hi: float, what: str, where: str) -> np.ndarray:
    """Numeric, finite and inside [lo, hi], else one-line failure."""
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        fail(f"{where}: '{what}' must be numeric, got dtype {a.dtype}")
    if np.iscomplexobj(a):  # casting would drop the imaginary part (with numpy's multi-line warning)
        fail(f"{where}: '{what}' must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        fail(f"{where}: '{what}' contains NaN or inf")
    if a.size and (a.min() < lo or a.max() > hi):
        fail(f"{where}: '{what}' values must lie in [{lo:g}, {hi:g}], found [{a.min():g}, {a.max():g}]")
    return a


def _ground_truth(data: dict[str, np.ndarray], where: str) -> GroundTruthTrigger:
    # DECREE's files leave out BadEncoder's leading axis of one trigger: (H,W,3) reads as (1,H,W,3)
    t, tm = (a[None] if a.ndim == 3 else a for a in (data["t"], data["tm"]))
    for key, arr in (("t", t), ("tm", tm)):
        if arr.ndim != 4 or arr.shape[0] != 1 or arr.shape[3] != 3 or arr.shape[1] != arr.shape[2]:
            fail(f"{where}: '{key}' must have shape (1,H,H,3) or (H,H,3), got {data[key].shape}")
    if t.shape != tm.shape:
        fail(f"{where}: 't' {t.shape} and 'tm' {tm.shape} differ in shape")
    t = _finite_in(t, 0.0, 255.0, "t", where)
    if 0.0 < t.max() <= 1.0:  # stamped on the 0..255 scale, a 0..1 trigger would be invisible (ASR near 0)
        fail(f"{where}: 't' holds values in [0, 1] (largest {t.max():g}), but BadEncoder's 't' is on the "
             f"0..255 pixel scale (a white trigger is 255); expected values in [0, 255]: multiply it by 255")
    tm = _finite_in(tm, 0.0, 1.0, "tm", where)
    if not np.all((tm == 0) | (tm == 1)):
        fail(f"{where}: 'tm' must hold only 0 and 1")
    return GroundTruthTrigger(t, tm)


def _inverted(data: dict[str, np.ndarray], where: str) -> InvertedTrigger:
    mask, pattern = data["mask"], data["pattern"]
    ok_mask = mask.ndim == 2 or (mask.ndim == 3 and mask.shape[0] in (1, 3))
    if not ok_mask or mask.shape[-1] != mask.shape[-2]:
        fail(f"{where}: 'mask' must have shape (3,H,H), (1,H,H) or (H,H), got {mask.shape}")
    if pattern.shape != (3,) + mask.shape[-2:]:
        fail(f"{where}: 'pattern' must have shape (3,{mask.shape[-2]},{mask.shape[-1]}), got {pattern.shape}")
    mask = _finite_in(mask, 0.0, 1.0, "mask", where)
    pattern = _finite_in(pattern, 0.0, 1.0, "pattern", where)
    return InvertedTrigger(torch.from_numpy(mask), torch.from_numpy(pattern))


def load_trigger(path: str | os.PathLike, flag: str,
                 expected_size: int | None = None) -> GroundTruthTrigger | InvertedTrigger:
    """Load either trigger format, detected by its keys, with every field validated."""
    where = f"{flag} {path}"
    data = load_npz(path, keys=(), flag=flag)
    if "t" in data and "tm" in data:
        trigger = _ground_truth(data, where)
    elif "mask" in data and "pattern" in data:
        trigger = _inverted(data, where)
    else:
        fail(f"{where}: expected keys t/tm (ground-truth trigger) or mask/pattern (inverted trigger), "
             f"found {sorted(data)}")
    if expected_size is not None and trigger.size != int(expected_size):
        hint = ("; BadEncoder's 224-pixel trigger is made with: python -m DATASETS.triggers --size 224 "
                "--patch 50 --start 173 --out trigger/trigger_pt_white_173_50_ap_replace.npz"
                if int(expected_size) == 224 else "")
        fail(f"{where}: trigger is {trigger.size}x{trigger.size} but the encoder expects "
             f"{expected_size}x{expected_size}{hint}")
    return trigger


def white_square_trigger(size: int = 32, patch: int = 10, start: int = 21,
                         batch_axis: bool = True) -> dict[str, np.ndarray]:
    """The standard BadEncoder trigger: a white ``patch``-square on rows/cols start..start+patch-1.

    ``t``/``tm`` are (1, size, size, 3) as BadEncoder stores them, or (size, size, 3) with
    ``batch_axis=False`` (DECREE's layout of its 24x24 trigger at 224 pixels).
    """
    if size < 1 or patch < 1 or start < 0 or start + patch > size:
        fail(f"--size/--patch/--start: the square {start}..{start + patch - 1} must lie inside 0..{size - 1}")
    t = np.zeros((1, size, size, 3), dtype=np.float32)
    tm = np.ones((1, size, size, 3), dtype=np.float32)
    t[:, start:start + patch, start:start + patch, :] = 255.0
    tm[:, start:start + patch, start:start + patch, :] = 0.0
    return {"t": t, "tm": tm} if batch_axis else {"t": t[0], "tm": tm[0]}


def save_ground_truth_trigger(path: str | os.PathLike, size: int = 32, patch: int = 10, start: int = 21,
                              batch_axis: bool = True) -> Path:
    """Write the white-square trigger npz (BadEncoder format, or DECREE's without the leading axis) atomically."""
    return save_npz(path, **white_square_trigger(size, patch, start, batch_axis))


@cli_entry
def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m DATASETS.triggers``: write the white-square BadEncoder trigger npz; returns its path."""
    parser = ArgumentParser(
        prog="python -m DATASETS.triggers",
        description="Write the ground-truth BadEncoder trigger (a white square) as an npz file.")
    parser.add_argument("--out", default=DEFAULT_TRIGGER)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--patch", type=int, default=10, help="side of the white square")
    parser.add_argument("--start", type=int, default=21, help="first row/column of the square")
    parser.add_argument("--no_batch_axis", action="store_true",
                        help="store t/tm as (size,size,3), DECREE's layout, instead of BadEncoder's (1,size,size,3)")
    args = parser.parse_args(argv)
    path = save_ground_truth_trigger(args.out, args.size, args.patch, args.start, not args.no_batch_axis)
    print(f"wrote {path} ({args.patch}x{args.patch} white square at rows/cols "
          f"{args.start}..{args.start + args.patch - 1} of {args.size}x{args.size})")
    return path


if __name__ == "__main__":
    main()
