"""The bundled demo set: ten classes of generated textures, written as ImageNet-style JPEG folders.

`write_demo_set(out)` writes

    out/train/<class>/<class>_0000.jpg ...   (the pytorch-examples folder convention; sorted folder
    out/val/<class>/<class>_0000.jpg ...      names give the label index, the order of DEMO_CLASSES)
    out/classes.txt                           "<folder> <readable name>" per line, like ImageNet's
                                              LOC_synset_mapping.txt
    out/.complete                             the settings it was made with; the set is built in a
                                              hidden sibling folder and renamed into place whole

so that training runs on a fresh machine with no download.

Why textures: an earlier probe found that plain geometric shapes are learned very slowly by AlexNet from
scratch, while texture-like classes are learned fast. Each class here is a pattern whose identity lies in
local structure (what conv filters see), drawn with strong nuisance variation so that raw pixels and colour
statistics say little about the class: random foreground/background colours (the same distribution for
every class), random period, phase and orientation, a pattern that may cover only a central region of a
blotchy background, small distractor shapes, an illumination gradient, pixel noise and blur. Image sizes
and aspect ratios vary (sides 140-400 px, aspect 0.6-1.7) so the "shorter side to 256, center crop"
preprocessing, upscaling included, is exercised. The pattern always covers the image centre, so every class
stays recognisable in the central 227 crop.

Determinism: every image draws from its own numpy Generator seeded with (seed, split, class, index), so
the output does not depend on generation order; JPEGs are written at a fixed quality with no metadata.
The same seed gives the same bytes with the same numpy, Pillow and libjpeg.

Measured on a 2-core CPU, default size (10 classes x (240 train + 30 val) = 2,700 images, 70 MB), seed 0.
- `alexnet demo-data --out DIR`: 25 s in two processes; a second call on the complete set returns in
  under a millisecond.
- Linear classifier on raw pixels (`python benchmarks/linear_baseline.py --data DIR`: each image's central
  227 crop shrunk to 32x32 or 64x64, multinomial logistic regression fitted by L-BFGS, the best of six L2
  penalties picked on val): 100% train at low penalties, at best 20.0% val (chance: 10%), spread over
  every class (13-30% recall each). Its signal is in the variance, not the mean: colours are drawn
  symmetrically, so every pixel has the same expectation in every class, but a linear score can still be
  large for one class's spatial frequencies; coarser periods give it more (version 2: 17.3%).
- AlexNet, preset `demo` (3 epochs of 2,400 images at batch 16, 450 steps): 96.3, 97.7, 93.7, 96.3% val
  top-1 with seeds 0, 2, 3, 4 in float32 and 97.7, 92.7% with seeds 0, 1 in bf16 (4 epochs: 99.0, 98.0%).
  Version 4 (this one) replaced zigzags, bricks and crosses, which AlexNet took for waves, grids and
  checkers until it had seen 20,000 images, by diagonal stripes, sunburst rays and camouflage blobs, made
  the periods 1.5 times longer and the grid lines half as wide (at version 3's 14-24% of a period, grids
  were half of the errors, taken for checkers); version 2 needed 10 epochs for 97% and reached 77-80% in 4.
  Version 1 (120 train images a class, periods down to 15 px) stopped at 82% after 20 epochs with 89% on
  its own training images.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import numbers
import os
import re
import shutil
import signal
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from alexnet.cores import usable_cores
from alexnet.errors import Stopped, UserError
from alexnet.files import maker, sweep_abandoned
from alexnet.orphans import die_with_parent
from alexnet.progress import progress_bar

# Bump when the pictures change, so a cached set made by an older generator is rebuilt.
GENERATOR_VERSION = 4

# (folder, readable name), sorted by folder so the position is the label index.
DEMO_CLASSES: tuple[tuple[str, str], ...] = (
    ("camo", "camouflage blobs"),
    ("checker", "checkerboard"),
    ("dots", "polka dots"),
    ("dstripes", "diagonal stripes"),
    ("grid", "grid lines"),
    ("hstripes", "horizontal stripes"),
    ("rays", "sunburst rays"),
    ("rings", "concentric rings"),
    ("vstripes", "vertical stripes"),
    ("waves", "wavy lines"),
)

TRAIN_PER_CLASS = 240
VAL_PER_CLASS = 30
JPEG_QUALITY = 90
MARKER = ".complete"
PARALLEL_FROM = 200   # images; below this, starting worker processes costs more than it saves
SPLITS = ("train", "val")

# Image geometry: shorter side and aspect ratio ranges (the aspect is long/short, either orientation).
SHORT_SIDE = (140, 320)
MAX_SIDE = 400
MAX_ASPECT = 1.7
# Pattern period as a fraction of the shorter side: 41-67 px after the shorter side is scaled to 256, so
# 3.4-5.5 periods inside a 227 crop and each period 10-17 steps of conv1's stride 4. Version 1 went down
# to 15 px, where a cross's arm or a zigzag's corner is about one conv1 step: AlexNet reached 62% on those
# images after 20 epochs against 86-92% on 20-35 px ones; version 2 (26-46 px) needed 10 epochs for 97%,
# and coarser periods are what let versions 3 and 4 learn from 7,200 images (module docstring).
PERIOD = (0.16, 0.26)


# ---------------------------------------------------------------------------------------------------
# Pattern masks. Each takes pixel coordinates (x, y) centred on a random origin, the period p in pixels
# and the image's Generator, and returns a float mask in [0, 1]: 1 where the foreground colour goes.
# Edges are soft (about one pixel) so the JPEGs are not full of aliasing.

def _rotate(x: np.ndarray, y: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) a direction `degrees` from the x axis."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return x * c + y * s, -x * s + y * c


def _band(t: np.ndarray, width: float, period: float) -> np.ndarray:
    """Soft periodic bands: t is a coordinate in periods, width the band's fraction of a period."""
    g = np.abs(t - np.floor(t) - 0.5)  # distance from the nearest band centre, in periods (0..0.5)
    return np.clip((width / 2 - g) * period + 0.5, 0.0, 1.0)


def _lattice_offsets(u: np.ndarray, v: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in pixels from the nearest point of a square lattice of spacing p."""
    return (u / p - np.round(u / p)) * p, (v / p - np.round(v / p)) * p


def _stripes(x, y, p, rng, angle):
    _, v = _rotate(x, y, angle + rng.uniform(-15, 15))
    return _band(v / p, rng.uniform(0.35, 0.6), p)


def _hstripes(x, y, p, rng):
    return _stripes(x, y, p, rng, 0.0)


def _vstripes(x, y, p, rng):
    return _stripes(x, y, p, rng, 90.0)


def _dstripes(x, y, p, rng):
    # Either diagonal, each +-15 degrees like the other stripes: 15 degrees from them at the closest.
    return _stripes(x, y, p, rng, 45.0 if rng.random() < 0.5 else 135.0)


def _checker(x, y, p, rng):
    u, v = _rotate(x, y, rng.uniform(0, 90))
    a, b = _band(u / p, 0.5, p), _band(v / p, 0.5, p)
    return a + b - 2 * a * b  # soft XOR of two stripe sets


def _grid(x, y, p, rng):
    u, v = _rotate(x, y, rng.uniform(0, 90))
    w = rng.uniform(0.07, 0.12)  # thin lines: at 0.14-0.24 of a period grids passed for checkers early on
    return np.maximum(_band(u / p, w, p), _band(v / p, w, p))


def _dots(x, y, p, rng):
    u, v = _rotate(x, y, rng.uniform(0, 90))
    du, dv = _lattice_offsets(u, v, p)
    radius = rng.uniform(0.18, 0.28) * p
    return np.clip(radius - np.hypot(du, dv) + 0.5, 0.0, 1.0)


def _rays(x, y, p, rng):
    # Spokes from the origin (near the image centre), spaced about p apart at 35% of the image.
    r = np.hypot(x, y)
    short = min(np.ptp(x), np.ptp(y))
    n = max(6, round(2 * math.pi * 0.35 * short / p))
    spacing = np.maximum(2 * math.pi * r / n, 1.0)
    return _band(np.arctan2(y, x) * n / (2 * math.pi) + rng.uniform(0, 1), rng.uniform(0.35, 0.6), spacing)


def _rings(x, y, p, rng):
    # The origin is already a random point near the image centre; rings stay centred there.
    # A random radial phase, or the centre would always be background.
    return _band(np.hypot(x, y) / p + rng.uniform(0, 1), rng.uniform(0.35, 0.6), p)


def _bent_lines(x, y, p, rng, profile, wavelengths):
    """Parallel lines displaced sideways by a periodic profile (values in [-1, 1]) along their length."""
    u, v = _rotate(x, y, rng.uniform(0, 180))
    wavelength = rng.uniform(*wavelengths) * p
    slope = math.tan(math.radians(rng.uniform(40, 60)))  # steep enough to never pass for straight stripes
    amplitude = slope * wavelength / 4
    return _band((v - amplitude * profile(u / wavelength)) / p, rng.uniform(0.3, 0.42), p)


def _waves(x, y, p, rng):
    # Versions 1 and 2 had zigzags beside waves: at the same wavelength the corners alone were a distinction
    # that 750 steps of AlexNet could not learn; versions 3 and 4 have no zigzags.
    return _bent_lines(x, y, p, rng, lambda t: (2 / math.pi) * np.sin(2 * math.pi * t), (2.4, 3.4))


def _camo(x, y, p, rng):
    # Irregular blobs with no period or direction: six plane waves of random directions, phases and
    # wavelengths of 1-2 periods, summed and cut at zero.
    field = np.zeros_like(x)
    for _ in range(6):
        a = rng.uniform(0, 2 * math.pi)
        wavelength = rng.uniform(1.0, 2.0) * p
        field += np.cos((x * math.cos(a) + y * math.sin(a)) * 2 * math.pi / wavelength + rng.uniform(0, 2 * math.pi))
    return np.clip(field * p / 4 + 0.5, 0.0, 1.0)


_PATTERNS = {
    "camo": _camo, "checker": _checker, "dots": _dots, "dstripes": _dstripes, "grid": _grid,
    "hstripes": _hstripes, "rays": _rays, "rings": _rings, "vstripes": _vstripes, "waves": _waves,
}
assert tuple(_PATTERNS) == tuple(slug for slug, _ in DEMO_CLASSES)


# ---------------------------------------------------------------------------------------------------
# Nuisances: identical distributions for every class, so none of them carries the label.

def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    short = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    long = min(MAX_SIDE, round(short * math.exp(rng.uniform(0, math.log(MAX_ASPECT)))))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours far enough apart that the pattern is plainly visible."""
    while True:
        a, b = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(a - b) > 120:
            return a.astype(np.float32), b.astype(np.float32)


def _blotches(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth random colour field (a few random colours bilinearly upsampled): the surround."""
    k = int(rng.integers(2, 7))
    small = rng.uniform(0, 255, size=(k, k, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.float32)


def _region(x: np.ndarray, y: np.ndarray, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Where the pattern shows: the whole image, or an ellipse or rectangle covering the centre."""
    kind = rng.choice(["full", "ellipse", "rectangle"], p=[0.4, 0.3, 0.3])
    if kind == "full":
        return np.ones_like(x)
    # Half-axes of at least 36% of each side keep most of the central crop patterned.
    ax, ay = rng.uniform(0.36, 0.6) * w, rng.uniform(0.36, 0.6) * h
    if kind == "ellipse":
        inside = (1 - np.hypot(x / ax, y / ay)) * min(ax, ay)  # roughly the distance to the edge, in px
    else:
        inside = np.minimum(ax - np.abs(x), ay - np.abs(y))
    return np.clip(inside + 0.5, 0.0, 1.0)


def _draw_distractors(img: Image.Image, rng: np.random.Generator) -> None:
    """A few small random shapes in random colours, drawn over everything (clutter)."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(0.04, 0.09) * min(w, h)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif shape == 1:
            draw.rectangle((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), fill=colour)
        else:
            corners = rng.uniform(0, 2 * math.pi) + np.arange(3) * 2 * math.pi / 3
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners], fill=colour)


# ---------------------------------------------------------------------------------------------------
# One image.

def image_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    """The image's own Generator: depends only on its identity, never on generation order."""
    return np.random.default_rng([seed, SPLITS.index(split), class_index, index])


def render(seed: int, split: str, class_index: int, index: int) -> Image.Image:
    """The RGB image number `index` of class `class_index` in `split`, as a PIL image."""
    rng = image_rng(seed, split, class_index, index)
    w, h = _image_size(rng)
    # Coordinates centred on a random point near the image centre (this is also the pattern's phase).
    cx, cy = w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 + rng.uniform(-0.08, 0.08) * h
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x -= cx
    y -= cy

    p = rng.uniform(*PERIOD) * min(w, h)
    fg, bg = _colour_pair(rng)
    # Shift the pattern by a random phase; rings keep their centre near the middle.
    px, py = (rng.uniform(0, p, size=2) if DEMO_CLASSES[class_index][0] not in ("rays", "rings") else (0.0, 0.0))
    mask = _PATTERNS[DEMO_CLASSES[class_index][0]](x + px, y + py, p, rng)[..., None]
    pattern = bg + (fg - bg) * mask

    region = _region(x, y, w, h, rng)[..., None]
    pixels = region * pattern + (1 - region) * _blotches(rng, w, h)

    # Uneven lighting: a linear ramp of up to +-20% across the image.
    gx, gy = rng.uniform(-0.2, 0.2, size=2)
    pixels *= 1 + (gx * x / w + gy * y / h)[..., None]
    pixels += rng.normal(0, rng.uniform(0, 10), size=pixels.shape).astype(np.float32)

    img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    _draw_distractors(img, rng)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img


# ---------------------------------------------------------------------------------------------------
# The set on disk.

def _settings(seed: int, train_per_class: int, val_per_class: int) -> dict:
    return {"generator": "alexnet.data.demo", "version": GENERATOR_VERSION, "seed": seed,
            "train_per_class": train_per_class, "val_per_class": val_per_class}


def _images_lost(out: Path, settings: dict) -> int:
    """How many of the images a complete set of ``settings`` holds are missing or empty (a stat each: some
    milliseconds for the 2,700 of the default set)."""
    lost = 0
    for split, n in (("train", settings["train_per_class"]), ("val", settings["val_per_class"])):
        for slug, _ in DEMO_CLASSES:
            for i in range(n):
                try:
                    lost += (out / split / slug / f"{slug}_{i:04d}.jpg").stat().st_size == 0
                except OSError:
                    lost += 1
    return lost


def _read_marker(out: Path) -> dict | None:
    try:
        data = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_arguments(seed, train_per_class, val_per_class) -> None:
    if not _is_int(seed) or seed < 0:
        raise UserError(f"demo set seed must be a non-negative integer, got {seed!r}")
    for name, n in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if not _is_int(n) or n < 1:
            raise UserError(f"demo set {name} must be a positive integer, got {n!r}")


def _write_images(root: str, seed: int, items: list[tuple[str, int, int]]) -> int:
    """Render and save these (split, class index, index) images under root; returns how many."""
    for split, c, i in items:
        slug = DEMO_CLASSES[c][0]
        # No exif or other metadata is passed, so the bytes depend only on the pixels.
        render(seed, split, c, i).save(Path(root) / split / slug / f"{slug}_{i:04d}.jpg", "JPEG",
                                       quality=JPEG_QUALITY)
    return len(items)


def _generate(root: Path, seed: int, counts: dict[str, int], progress: bool) -> None:
    """Write every image and classes.txt under root (a fresh, empty folder)."""
    (root / "classes.txt").write_text("".join(f"{slug} {name}\n" for slug, name in DEMO_CLASSES))
    items = []
    for split, n in counts.items():
        for c, (slug, _) in enumerate(DEMO_CLASSES):
            (root / split / slug).mkdir(parents=True)
            items += [(split, c, i) for i in range(n)]
    chunks = [items[k:k + 25] for k in range(0, len(items), 25)]
    cpus = usable_cores()
    workers = min(cpus, len(chunks))
    with progress_bar(total=len(items), desc="demo set", unit="img", show=progress) as bar:
        if workers < 2 or len(items) < PARALLEL_FROM:
            for chunk in chunks:
                bar.update(_write_images(str(root), seed, chunk))
            return
        # Every image has its own Generator, so the bytes do not depend on which process drew it. Spawned,
        # not forked: the caller may be a training process with threads running.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                                 initargs=(os.getpid(),)) as pool:
            try:
                for done in pool.map(_write_images, [str(root)] * len(chunks), [seed] * len(chunks), chunks):
                    bar.update(done)
            except (KeyboardInterrupt, Stopped):
                # The workers ignore Ctrl-C (it reaches the whole process group) and end with their
                # current chunk; the caller removes the partial set.
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _worker_start(parent: int) -> None:
    """A pool worker ignores Ctrl-C (it reaches the whole process group; the parent stops the pool) and,
    on Linux, dies with its parent: a parent killed with kill -9 left its workers (and, through them,
    multiprocessing's resource tracker) waiting on a pipe for good."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def _check_replaceable(out: Path, marker: dict | None) -> None:
    """UserError unless `out` is empty or a demo set left exactly as we wrote it: never touch user files."""
    contents = {p.name for p in out.iterdir()}
    if not contents:
        return
    if marker is None or marker.get("generator") != "alexnet.data.demo":
        raise UserError(f"{out} is not empty and does not hold a demo set; choose another folder or empty it first")
    if not contents <= {"train", "val", "classes.txt", MARKER} or not _only_generated_images(out, marker):
        raise UserError(f"{out} holds a demo set made with other settings, plus files of yours; "
                        "choose another folder or remove it first")


def _only_generated_images(out: Path, marker: dict) -> bool:
    """Whether `out`'s train/ and val/ hold nothing but what a generator of `marker`'s settings names
    (SPLIT/<class>/<class>_NNNN.jpg, NNNN under its count): a file of the user's anywhere in them is kept."""
    for split in ("train", "val"):
        folder, count = out / split, marker.get(f"{split}_per_class")
        if not folder.exists():
            continue
        if folder.is_symlink() or not folder.is_dir():
            return False
        for cls in folder.iterdir():
            if cls.is_symlink() or not cls.is_dir():
                return False
            name = re.compile(rf"{re.escape(cls.name)}_(\d{{4}})\.jpg")
            for file in cls.iterdir():
                number = name.fullmatch(file.name)
                if number is None or file.is_symlink() or not file.is_file() or \
                        (_is_int(count) and int(number[1]) >= count):
                    return False
    return True


def _move_into_place(tmp: Path, out: Path, settings: dict) -> None:
    """Move the finished set (marker included) from tmp to `out`."""
    # Several processes (torchrun ranks, say) may build the same set at once: the first one to finish wins,
    # and the others leave its files alone, since it may already be reading them.
    if _read_marker(out) == settings and not _images_lost(out, settings):
        shutil.rmtree(tmp)
        return
    try:
        if not out.exists():
            tmp.rename(out)  # atomic: `out` appears complete or not at all
        elif _read_marker(out) is not None:  # an older demo set: swap it out whole, then delete it
            old = out.with_name(f".{out.name}.old-{maker()}-{uuid.uuid4().hex[:12]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            # An empty folder (checked before generating): keep the folder itself, which may be the current
            # directory or a mount point, and move the entries in with the marker last.
            for entry in sorted(tmp.iterdir(), key=lambda p: p.name == MARKER):
                entry.rename(out / entry.name)
            tmp.rmdir()
    except OSError:  # another process won the race between the check above and the renames
        if _read_marker(out) != settings:
            raise
        shutil.rmtree(tmp)


def write_demo_set(out, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                   val_per_class: int = VAL_PER_CLASS, progress: bool = True) -> Path:
    """Write the demo set to `out` and return `out` as a Path.

    Safe to call as a cache: if `out` already holds a complete set made with the same settings it returns
    at once. A demo set made with other settings is replaced. Any other non-empty folder is refused with
    UserError, so a user's data is never overwritten.

    The set is generated in a hidden sibling folder, marker included, then renamed into place (into an
    existing empty folder, the marker moves last): an interrupted run leaves no `out` that looks complete.
    """
    _check_arguments(seed, train_per_class, val_per_class)
    seed, train_per_class, val_per_class = int(seed), int(train_per_class), int(val_per_class)
    given = Path(out).expanduser()
    out = Path(os.path.abspath(given))  # normalised, so "." or "data/.." still have a name to rename to
    settings = _settings(seed, train_per_class, val_per_class)

    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out} exists and is not a folder")
        marker = _read_marker(out)
        if marker == settings:
            lost = _images_lost(out, settings)
            if not lost:
                return given
            # Deleted or emptied since (a disk cleaner, a failed copy): the set is made again, as it was.
            print(f"alexnet demo-data: {out} lacks {lost} of its images (missing or empty); making it again",
                  file=sys.stderr)
        _check_replaceable(out, marker)

    out.parent.mkdir(parents=True, exist_ok=True)
    for kind in ("partial", "old"):   # what a killed run (kill -9) left: a set's worth of disk each
        sweep_abandoned(out.parent, f".{out.name}.{kind}-")
    # Not tempfile.mkdtemp: its folder is private (0700) and would stay so once renamed to `out`.
    tmp = out.with_name(f".{out.name}.partial-{maker()}-{uuid.uuid4().hex[:12]}")
    try:
        tmp.mkdir()
    except OSError as e:   # /proc, /sys: a folder that takes no new entries, with an errno of its own
        raise UserError(f"cannot write the demo set into {out.parent} ({e.strerror})") from None
    try:
        _generate(tmp, seed, {"train": train_per_class, "val": val_per_class}, progress)
        (tmp / MARKER).write_text(json.dumps(settings, sort_keys=True) + "\n")
        _move_into_place(tmp, out, settings)
    except BaseException:  # Ctrl-C included: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return given
