"""Data families for the generalisation benchmark (bench/generalise.py): images that differ in structure,
not only in seed, each written once in BadEncoder's npz layout so that the normal loaders read it.

| family       | what the images are                                                      | where from           |
|--------------|--------------------------------------------------------------------------|----------------------|
| synthetic    | the embedded shapes (DATASETS/synthetic.py), the family the defaults were tuned on | this repository |
| glyphs       | the digits 0-9 drawn in a real typeface on a flat background              | Pillow's bundled font |
| photos       | patches of real photographs, an MRI slice and terrain maps, labelled by region | matplotlib's sample data |
| lowcontrast  | faint shapes on one texture shared by every image                         | generated            |
| nearsame     | one photograph shared by every image, a digit blended in at 8 %: high feature similarity by construction | matplotlib + Pillow |
| greyphotos   | photos' regions in grey: real grayscale images (a photograph, an MRI slice, terrain maps) | matplotlib's sample data |
| greyshapes   | synthetic's shapes in grey: the tuned family's drawing without its colours             | this repository      |
| greydigits   | grey digits on a dark background, near the centre (as scanned handwriting sets are): grayscale, one layout | Pillow's bundled font |
| textures     | stripes, checks, dots, rings, bricks, blobs, speckle in random colours: only the pattern tells the class | generated |

A family other than ``synthetic`` is written under ``<data_dir>/<family>/`` in the slots of two dataset names
the loaders know: its pre-training set as ``cifar10`` and its downstream set as ``stl10`` (ten classes each,
32x32 RGB), normalised with CIFAR-10's statistics (any fixed statistics serve: every stage uses the same).
Nothing here is downloaded; every family is drawn from a fixed seed, so the files are the same on every run.
"""
from __future__ import annotations

import gzip
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from DATASETS import synthetic  # noqa: E402
from UTILS.errors import ArgumentParser, cli_entry, fail  # noqa: E402
from UTILS.io import atomic_write, ensure_writable_dir, save_npz  # noqa: E402

FAMILIES = ("synthetic", "glyphs", "photos", "lowcontrast", "nearsame", "greydigits", "greyphotos", "greyshapes",
            "textures")  # appended, never reordered: the index seeds the drawing
SIZES = {"pre": {"train": 10000, "test": 2000}, "down": {"train": 5000, "test": 2000}}
SLOTS = {"pre": "cifar10", "down": "stl10"}  # dataset names whose npz slots a family's sets are written into
SIDE = 32
VERSION = 1  # bump when a drawing changes: stale files are rewritten


@dataclass(frozen=True)
class FamilyData:
    """Where a family's two sets are and how the stages name them."""

    family: str
    data_dir: Path   # --data_dir of every stage
    pretrain: str    # --dataset / --pretraining_dataset / --shadow_dataset
    downstream: str  # --downstreamTask / --dataset of the classifier / --reference_dataset
    usage: str       # --encoder_usage_info


def _seed(family: str, part: str, split: str) -> list[int]:
    return [FAMILIES.index(family), ("pre", "down").index(part), ("train", "test").index(split), 20261206]


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.int64)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """(n, 3, S, S) floats in [0, 1] -> (n, S, S, 3) uint8, capped at 230 so nothing is the trigger's white."""
    return np.clip(np.rint(img * 255), 0, 230).astype(np.uint8).transpose(0, 2, 3, 1)


# ---- glyphs ------------------------------------------------------------------------------------------------


def _fonts(low: int, high: int) -> dict:
    """Pillow's bundled typeface at the sizes low..high-1."""
    from PIL import ImageFont

    return {size: ImageFont.load_default(size=size) for size in range(low, high)}


def _digit(label, font, angle: float):
    """The digit ``label`` drawn white on black in ``font``, slanted by ``angle`` degrees, cropped to its ink and
    shrunk to at most 26 pixels a side (a PIL "L" image)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (2 * SIDE, 2 * SIDE), 0)
    ImageDraw.Draw(canvas).text((SIDE // 2, SIDE // 4), str(int(label)), fill=255, font=font)
    canvas = canvas.rotate(angle, resample=Image.BILINEAR)
    glyph = canvas.crop(canvas.getbbox() or (0, 0, 2 * SIDE, 2 * SIDE))
    scale = min(1.0, 26 / max(glyph.size))
    return glyph.resize((max(1, int(glyph.width * scale)), max(1, int(glyph.height * scale))), Image.BILINEAR)


def _glyphs(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
    """The digit ``y[i]`` in Pillow's bundled typeface: random size, place, slant and flat colours."""
    out = np.zeros((y.size, 3, SIDE, SIDE))
    fonts = _fonts(16, 27)
    for i, label in enumerate(y):
        font = fonts[int(rng.integers(16, 27))]
        glyph = _digit(label, font, float(rng.uniform(-20, 20) if down else rng.uniform(-12, 12)))
        alpha = np.zeros((SIDE, SIDE))
        top = int(rng.integers(0, SIDE - glyph.height + 1))
        left = int(rng.integers(0, SIDE - glyph.width + 1))
        alpha[top:top + glyph.height, left:left + glyph.width] = np.asarray(glyph, dtype=np.float64) / 255
        while True:  # flat colours whose brightness differs enough to read the glyph
            fg, bg = rng.uniform(0.05, 0.85, 3), rng.uniform(0.05, 0.85, 3)
            if abs(fg.mean() - bg.mean()) >= 0.25:
                break
        out[i] = alpha[None] * fg[:, None, None] + (1 - alpha[None]) * bg[:, None, None]
    return out + rng.normal(0, 0.03 if down else 0.02, out.shape)


# ---- photos ------------------------------------------------------------------------------------------------


def _sources() -> list[np.ndarray]:
    """matplotlib's sample images as (H, W, 3) floats in [0, 1]: a photograph, a photographed object, an MRI
    slice and two terrain maps (grey ones repeated over three channels)."""
    from matplotlib import cbook
    from PIL import Image

    def grey(a: np.ndarray) -> np.ndarray:
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
        return np.repeat(a[..., None], 3, axis=2)

    photo = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"), np.float64) / 255
    present = np.asarray(Image.open(cbook.get_sample_data("Minduka_Present_Blue_Pack.png")).convert("RGB"),
                         np.float64) / 255
    with gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False)) as handle:
        mri = np.frombuffer(handle.read(), np.uint16).reshape(256, 256).astype(np.float64)
    with np.load(cbook.get_sample_data("jacksboro_fault_dem.npz", asfileobj=False)) as dem:
        terrain = dem["elevation"].astype(np.float64)
    with np.load(cbook.get_sample_data("topobathy.npz", asfileobj=False)) as topo:
        bathy = topo["topo"].astype(np.float64)
    return [photo, present, grey(mri), grey(terrain), grey(bathy)]


def _regions(sources: list[np.ndarray]) -> list[np.ndarray]:
    """Ten classes: the photograph's four quadrants, the MRI's and the first terrain's two halves, the
    photographed object and the second terrain whole."""
    photo, present, mri, terrain, bathy = sources
    h, w = photo.shape[:2]
    quads = [photo[:h // 2, :w // 2], photo[:h // 2, w // 2:], photo[h // 2:, :w // 2], photo[h // 2:, w // 2:]]
    return quads + [mri[:, :128], mri[:, 128:], terrain[:, :200], terrain[:, 200:], present, bathy]


def _photos(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
    """A random square crop (a fifth to a half of the region's shorter side) of the class's region, resized
    to 32x32, flipped at random, with a small brightness shift."""
    from PIL import Image

    regions = _regions(_sources())
    out = np.zeros((y.size, 3, SIDE, SIDE))
    for i, label in enumerate(y):
        region = regions[int(label)]
        short = min(region.shape[:2])
        side = int(rng.integers(max(8, short // 5), max(9, short // 2)))
        top = int(rng.integers(0, region.shape[0] - side + 1))
        left = int(rng.integers(0, region.shape[1] - side + 1))
        crop = Image.fromarray(np.rint(region[top:top + side, left:left + side] * 255).astype(np.uint8))
        patch = np.asarray(crop.resize((SIDE, SIDE), Image.BILINEAR), np.float64) / 255
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        out[i] = patch.transpose(2, 0, 1) * rng.uniform(0.8, 1.0) + rng.uniform(-0.05, 0.05)
    return out + rng.normal(0, 0.02 if down else 0.01, out.shape)


# ---- lowcontrast ---------------------------------------------------------------------------------------------


def _texture() -> np.ndarray:
    """One smooth colour texture (3, 32, 32) in [0.2, 0.7], the same for every image of the family."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    field = np.zeros((3, SIDE, SIDE))
    for _ in range(6):
        f, phase = rng.uniform(-3, 3, (3, 2)) * 2 * np.pi, rng.uniform(0, 2 * np.pi, (3, 1, 1))
        field += np.sin(f[:, 0, None, None] * xx + f[:, 1, None, None] * yy + phase)
    field = (field - field.min()) / (field.max() - field.min())
    return 0.2 + 0.5 * field


def _lowcontrast(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
    """A synthetic shape of class ``y[i]`` at a fifth of its contrast, blended over the shared texture."""
    out = _synthetic_shapes(rng, y, down)
    return 0.8 * _texture()[None] + 0.2 * out + rng.normal(0, 0.01, out.shape)


def _shapes_of_class(rng: np.random.Generator, c: int, n: int, down: bool) -> np.ndarray:
    """(n, 3, 32, 32) floats: synthetic shapes of class ``c``."""
    img = synthetic._render_chunk(  # the embedded set's own drawing, for the classes asked
        rng, np.full(n, c, dtype=np.int64), down)
    return img.astype(np.float64).transpose(0, 3, 1, 2) / 255


def _nearsame(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
    """The same photograph (the sample portrait, 32x32) in every image with a glyph of class ``y[i]`` blended in
    at 8 %: the images differ little, so an encoder's features of them agree (lowcontrast's shapes at 20 %
    over a texture did not make them agree: SimCLR spread them apart again)."""
    from PIL import Image

    photo = _sources()[0]
    face = Image.fromarray(np.rint(photo[40:440, 100:500] * 255).astype(np.uint8)).resize((SIDE, SIDE),
                                                                                            Image.BILINEAR)
    base = np.asarray(face, np.float64).transpose(2, 0, 1) / 255
    return 0.92 * base[None] + 0.08 * _glyphs(rng, y, down) + rng.normal(0, 0.01, (y.size, 3, SIDE, SIDE))


def _greydigits(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
    """The digit ``y[i]`` in light grey on a dark grey background, filling most of the frame near its centre
    (within 3 pixels), slanted a little, the same in all three channels: the layout of a scanned-digit set,
    where most of every image is the same dark background. Added after glyphs' colourful, freely placed
    digits gave a tiny SimCLR encoder nothing to learn (kNN at chance), so that a held-out family tests the
    defence on an encoder that works."""
    out = np.zeros((y.size, 3, SIDE, SIDE))
    fonts = _fonts(26, 33)
    for i, label in enumerate(y):
        font = fonts[int(rng.integers(26, 33))]
        glyph = _digit(label, font, float(rng.uniform(-15, 15) if down else rng.uniform(-10, 10)))
        top = (SIDE - glyph.height) // 2 + int(rng.integers(-3, 4))
        left = (SIDE - glyph.width) // 2 + int(rng.integers(-3, 4))
        top, left = min(max(top, 0), SIDE - glyph.height), min(max(left, 0), SIDE - glyph.width)
        alpha = np.zeros((SIDE, SIDE))
        alpha[top:top + glyph.height, left:left + glyph.width] = np.asarray(glyph, dtype=np.float64) / 255
        fg, bg = rng.uniform(0.65, 0.9), rng.uniform(0.0, 0.15)
        out[i] = (alpha * fg + (1 - alpha) * bg)[None]
    return out + rng.normal(0, 0.02, (y.size, 1, SIDE, SIDE))


def _grey(draw):
    """A family drawn by ``draw`` and turned grey (the mean of its three channels in all three)."""
    def grey(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
        return np.repeat(draw(rng, y, down).mean(axis=1, keepdims=True), 3, axis=1)
    grey.__doc__ = f"{draw.__name__} in grey."
    return grey


def _synthetic_shapes(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
    """(n, 3, 32, 32) floats: the embedded set's shapes of classes ``y``."""
    out = np.zeros((y.size, 3, SIDE, SIDE))
    for c in range(10):
        idx = np.flatnonzero(y == c)
        if idx.size:
            out[idx] = _shapes_of_class(rng, c, idx.size, down)
    return out


def _pattern(rng: np.random.Generator, label: int, down: bool) -> np.ndarray:
    """(32, 32) floats in [0, 1]: one texture of kind ``label``, at a random scale, angle and phase."""
    from PIL import Image

    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    period = rng.uniform(4.0, 11.0) if down else rng.uniform(5.0, 10.0)
    tilt = np.deg2rad(rng.uniform(-12, 12))
    phase = rng.uniform(0, 2 * np.pi, 2)

    def wave(angle: float, shift: float, stretch: float = 1.0) -> np.ndarray:  # a sinusoid across ``angle``
        return np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / (period * stretch) + shift)

    if label < 4:  # stripes: horizontal, vertical, and the two diagonals
        field = wave(np.pi / 2 - label * np.pi / 4 + tilt, phase[0])
    elif label == 4:  # square checks
        field = wave(tilt, phase[0]) * wave(tilt + np.pi / 2, phase[1])
    elif label == 5:  # dots on a grid
        field = np.minimum(wave(tilt, phase[0]), wave(tilt + np.pi / 2, phase[1])) * 2 - 1
    elif label == 6:  # rings around a random centre
        cy, cx = rng.uniform(0, SIDE, 2)
        field = np.sin(2 * np.pi * np.hypot(yy - cy, xx - cx) / period + phase[0])
    elif label == 7:  # bricks: checks twice as long one way as the other
        field = wave(tilt, phase[0], 2.0) * wave(tilt + np.pi / 2, phase[1])
    else:  # random fields: smooth blobs (8) or fine speckle (9)
        coarse = rng.normal(size=(5, 5) if label == 8 else (16, 16))
        field = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((SIDE, SIDE), Image.BICUBIC), np.float64)
        field = field / max(float(np.abs(field).max()), 1e-12)
    sharpness = rng.uniform(1.5, 6.0)
    return 0.5 + 0.5 * np.tanh(sharpness * field) / np.tanh(sharpness)


def _textures(rng: np.random.Generator, y: np.ndarray, down: bool) -> np.ndarray:
    """A texture of kind ``y[i]`` in two random colours whose brightness differs: the colours say nothing of
    the class, only the pattern does; nothing in the image is an object or has a place."""
    out = np.zeros((y.size, 3, SIDE, SIDE))
    for i, label in enumerate(y):
        while True:
            fg, bg = rng.uniform(0.05, 0.85, 3), rng.uniform(0.05, 0.85, 3)
            if abs(fg.mean() - bg.mean()) >= 0.2:
                break
        alpha = _pattern(rng, int(label), down)
        out[i] = alpha[None] * fg[:, None, None] + (1 - alpha[None]) * bg[:, None, None]
    return out + rng.normal(0, 0.03 if down else 0.02, out.shape)


DRAW = {"glyphs": _glyphs, "photos": _photos, "lowcontrast": _lowcontrast, "nearsame": _nearsame,
        "greydigits": _greydigits, "greyphotos": _grey(_photos), "greyshapes": _grey(_synthetic_shapes),
        "textures": _textures}


def generate(family: str, part: str, split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) uint8 and balanced labels (n,) of a family's ``part`` ("pre"/"down") and split."""
    return _drawn(DRAW[family], family, part, split, n)


def _drawn(draw, family: str, part: str, split: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`generate` with the drawing ``draw`` given: the family's seed, balanced labels, uint8 images."""
    n = SIZES[part][split] if n is None else int(n)
    rng = np.random.default_rng(_seed(family, part, split))
    y = _labels(rng, n)
    return _to_uint8(draw(rng, y, part == "down")), y


def _current(path: Path) -> bool:
    if not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as data:
        return "family_version" in data.files and int(data["family_version"]) == VERSION


def ensure_family(family: str, data_root: str | Path) -> FamilyData:
    """Write the family's sets under ``data_root`` unless current; returns how the stages name them."""
    root = Path(data_root)
    if family == "synthetic":
        for name in ("synthetic", "synthetic_down"):
            synthetic.ensure_cached(name, root)
        return FamilyData(family, root, "synthetic", "synthetic_down", "synthetic")
    folder = root / family
    for part, slot in SLOTS.items():
        for split in ("train", "test"):
            path = folder / slot / f"{split}.npz"
            if not _current(path):
                ensure_writable_dir(path.parent, "--data_dir")
                x, y = generate(family, part, split)
                save_npz(path, x=x, y=y, family_version=np.asarray(VERSION, dtype=np.int64))
    return FamilyData(family, folder, SLOTS["pre"], SLOTS["down"], "cifar10")


def preview(families=FAMILIES, per_class: int = 1, part: str = "pre"):
    """A PIL image: one row per family, its first ``per_class`` images of each of the ten classes (scaled up
    twice), the family's name on the left. Drawn with :func:`generate`, so it shows what the cells see (for
    synthetic: the embedded set's drawing, other draws than its cached files)."""
    from PIL import Image, ImageDraw

    cell, label_w = 2 * SIDE + 4, 96
    sheet = Image.new("RGB", (label_w + 10 * per_class * cell, len(families) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, family in enumerate(families):
        x, y = _drawn(DRAW.get(family, _synthetic_shapes), family, part, "test", 40 * per_class)
        draw.text((4, r * cell + cell // 2 - 6), family, fill=(0, 0, 0))
        for c in range(10):
            for k, i in enumerate(np.flatnonzero(y == c)[:per_class]):
                tile = Image.fromarray(x[i]).resize((2 * SIDE, 2 * SIDE), Image.NEAREST)
                sheet.paste(tile, (label_w + (c * per_class + k) * cell + 2, r * cell + 2))
    return sheet


@cli_entry
def main(argv: list[str] | None = None) -> None:
    """``python bench/families.py --preview families.png``: the picture of :func:`preview`."""
    p = ArgumentParser(description="Write a picture of the benchmark's data families (one row each, one image "
                                   "per class).")
    p.add_argument("--preview", required=True, help="PNG file to write")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--per_class", type=int, default=1, help="images per class (default 1)")
    args = p.parse_args(argv)
    names = [f.strip() for f in args.families.split(",") if f.strip()]
    if not names or any(f not in FAMILIES for f in names):
        fail(f"--families {args.families}: expected comma-separated values of {', '.join(FAMILIES)}")
    if args.per_class < 1:
        fail(f"--per_class {args.per_class}: expected a positive number")
    path = Path(args.preview)
    ensure_writable_dir(path.parent, "--preview")  # Path("f.png").parent is Path("."), the working folder
    atomic_write(path, lambda h: preview(names, args.per_class).save(h, format="PNG"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
