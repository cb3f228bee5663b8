"""The embedded default dataset: ten shape classes drawn procedurally, no download.

Classes are defined by shape and structure, which survive SimCLR's colour jitter, grayscale and
crops; position, scale, small rotation, colours, background and noise are random nuisances.
``synthetic`` is the pre-training set (train 10,000 / test 2,000), ``synthetic_down`` the downstream
set (train 5,000 / test 2,000) with its own seed and a style shift (textured backgrounds, HSV
colours, noisier). Pixels stay <= 220 so nothing resembles the white-square trigger (255).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from UTILS.io import ensure_writable_dir, save_npz
from UTILS.runtime import progress

CLASS_NAMES = ["disc", "square", "triangle", "ring", "plus", "horizontal_stripes",
               "vertical_stripes", "checkerboard", "diamond", "x_cross"]
SIZES = {"synthetic": {"train": 10000, "test": 2000}, "synthetic_down": {"train": 5000, "test": 2000}}
SEEDS = {"synthetic": 20240601, "synthetic_down": 20240602}
GENERATOR_VERSION = 2  # bump when the drawing changes, so stale caches are regenerated
SIDE = 32
_SS = 2  # supersampling factor: shapes are drawn at 64x64 and box-filtered (anti-aliased edges)
_CHUNK = 1000
_MAX_VALUE = 220  # brightest pixel value: far from the trigger's 255 white


def _inside(c: int, u: np.ndarray, v: np.ndarray, r: np.ndarray, w: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Boolean coverage of class ``c`` in local coordinates (u, v) (object radius = 1).

    u, v: (n, S, S); r: object radius in pixels, w: stroke width, p: stripe period in pixels, (n,1,1).
    """
    box = np.maximum(np.abs(u), np.abs(v))
    if c == 0:
        return u * u + v * v <= 1.0
    if c == 1:
        return box <= 0.85
    if c == 2:
        return (v <= 0.75) & (np.abs(u) <= (v + 1.05) / 1.8)
    if c == 3:
        rho = np.sqrt(u * u + v * v)
        return (rho <= 1.0) & (rho >= 1.0 - 1.6 * w)
    if c == 4:
        return ((np.abs(u) <= w) & (np.abs(v) <= 1)) | ((np.abs(v) <= w) & (np.abs(u) <= 1))
    if c == 5:
        return (box <= 1.0) & (np.mod(v * r / p, 1.0) < 0.5)
    if c == 6:
        return (box <= 1.0) & (np.mod(u * r / p, 1.0) < 0.5)
    if c == 7:
        return (box <= 1.0) & ((np.mod(u * r / p, 1.0) < 0.5) ^ (np.mod(v * r / p, 1.0) < 0.5))
    if c == 8:
        return np.abs(u) + np.abs(v) <= 1.1
    return (box <= 0.95) & ((np.abs(u - v) <= 1.2 * w) | (np.abs(u + v) <= 1.2 * w))


def _luma(c: np.ndarray) -> np.ndarray:
    return c @ np.array([0.299, 0.587, 0.114])


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n,) each in [0,1] -> (n, 3)."""
    k = np.mod(np.stack([5.0, 3.0, 1.0], -1) + h[:, None] * 6.0, 6.0)
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _colours(rng: np.random.Generator, n: int, down: bool) -> tuple[np.ndarray, np.ndarray]:
    """Foreground/background colours (n,3) in [0.03, 0.8] whose luma differs by >= 0.25."""
    fg, bg = np.zeros((n, 3)), np.zeros((n, 3))
    todo = np.arange(n)
    while todo.size:  # rejection sampling, vectorised over the images still lacking a pair
        m = todo.size
        if down:
            a = _hsv_to_rgb(rng.random(m), rng.uniform(0.35, 1.0, m), rng.uniform(0.1, 0.8, m))
            b = _hsv_to_rgb(rng.random(m), rng.uniform(0.35, 1.0, m), rng.uniform(0.1, 0.8, m))
        else:
            a, b = rng.uniform(0.03, 0.8, (m, 3)), rng.uniform(0.03, 0.8, (m, 3))
        ok = np.abs(_luma(a) - _luma(b)) >= 0.25
        fg[todo[ok]], bg[todo[ok]] = a[ok], b[ok]
        todo = todo[~ok]
    return fg, bg


def _background(rng: np.random.Generator, bg: np.ndarray, down: bool) -> np.ndarray:
    """(n, 3, SIDE, SIDE) in [0,1]: a linear gradient (pre-training) or low-frequency blotches (downstream)."""
    n = bg.shape[0]
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64) / SIDE
    if down:
        field = np.zeros((n, SIDE, SIDE))
        for _ in range(3):
            f = rng.uniform(-2.0, 2.0, (n, 2, 1, 1)) * 2 * np.pi  # <= 2 cycles: blotches, never stripe-like
            ph = rng.uniform(0, 2 * np.pi, (n, 1, 1))
            field += np.sin(f[:, 0] * xx + f[:, 1] * yy + ph) / 3.0
        shade = 0.14 * field
    else:
        ang = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        shade = rng.uniform(-0.12, 0.12, (n, 1, 1)) * ((xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang)) * 2
    return bg[:, :, None, None] + shade[:, None]


def _render_chunk(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
    """Draw images of labels y (n,) -> (n, SIDE, SIDE, 3) uint8."""
    n, s = y.size, SIDE * _SS
    r = rng.uniform(6.0, 12.0, n) if down else rng.uniform(7.0, 13.0, n)  # radius in pixels
    cx = rng.uniform(0.8 * r, SIDE - 0.8 * r)
    cy = rng.uniform(0.8 * r, SIDE - 0.8 * r)
    ang = np.deg2rad(rng.uniform(-20, 20, n) if down else rng.uniform(-12, 12, n))
    w, p = rng.uniform(0.2, 0.3, n), rng.uniform(3.5, 6.5, n)
    grid = (np.arange(s) + 0.5) / _SS
    dx = grid[None, None, :] - cx[:, None, None]  # (n, 1, s)
    dy = grid[None, :, None] - cy[:, None, None]  # (n, s, 1)
    cos, sin = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    u = (cos * dx + sin * dy) / r[:, None, None]  # (n, s, s)
    v = (-sin * dx + cos * dy) / r[:, None, None]
    cover = np.zeros((n, s, s), dtype=np.float32)
    for c in np.unique(y):
        i = np.flatnonzero(y == c)
        cover[i] = _inside(int(c), u[i], v[i], r[i, None, None], w[i, None, None], p[i, None, None])
    alpha = cover.reshape(n, SIDE, _SS, SIDE, _SS).mean(axis=(2, 4))[:, None]  # (n, 1, SIDE, SIDE)
    fg, bg = _colours(rng, n, down)
    fg_tex = fg[:, :, None, None] * (1 + rng.normal(0, 0.04, (n, 1, SIDE, SIDE)))  # mild surface texture
    img = alpha * fg_tex + (1 - alpha) * _background(rng, bg, down)
    img += rng.normal(0, 0.035 if down else 0.022, img.shape)
    return np.clip(np.rint(img * 255), 0, _MAX_VALUE).astype(np.uint8).transpose(0, 2, 3, 1)


def generate(name: str, split: str, n: int | None = None, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) uint8 and balanced, shuffled labels (n,) int64; same seed -> same arrays."""
    n = SIZES[name][split] if n is None else int(n)
    seed = SEEDS[name] if seed is None else int(seed)
    rng = np.random.default_rng([seed, ("train", "test").index(split)])
    y = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    down = name == "synthetic_down"
    parts = [_render_chunk(rng, y[i:i + _CHUNK], down)
             for i in progress(range(0, n, _CHUNK), desc=f"generating {name} {split}")]
    x = np.concatenate(parts) if parts else np.zeros((0, SIDE, SIDE, 3), np.uint8)
    return x, y


def _is_current(path: Path) -> bool:
    """False when the cache must be (re)written: absent, or written by another generator version."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return "generator_version" not in data.files or int(data["generator_version"]) == GENERATOR_VERSION
    except Exception:  # unreadable: leave it to the loader, which reports the file by name
        return True


def ensure_cached(name: str, data_dir: str | Path) -> Path:
    """Write ``data_dir/<name>/{train,test}.npz`` (BadEncoder npz layout) unless already current."""
    folder = Path(data_dir) / name
    for split in ("train", "test"):
        path = folder / f"{split}.npz"
        if not _is_current(path):
            ensure_writable_dir(folder, "--data_dir")
            x, y = generate(name, split)
            save_npz(path, x=x, y=y, generator_version=np.asarray(GENERATOR_VERSION, dtype=np.int64))
    return folder
