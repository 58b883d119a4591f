"""Backgrounds: procedural textures and gradients, and photographs shipped inside scikit-image.

Photos are split DISJOINTLY between train and test (the stereo pair motorcycle_left/right stays
together in train so no near-duplicate leaks into test). Photos that contain real, unlabelled text
(`text`, `page`, `logo`) are never used: their text would be "background" in the ground truth.

  train photos: astronaut, coffee, chelsea, motorcycle_left, motorcycle_right, brick, grass, camera,
                coins, ihc
  test photos:  rocket, hubble_deep_field, retina, gravel, moon, cell, clock_motion

Procedural backgrounds (flat, gradients, fractal noise, wood/stripes, tiles, paper) are drawn from
the same generators in both splits (they are random functions, not a finite set).

User photographs (`upocr synth --backgrounds DIR`): any folder of text-free photos, listed once per run
(`list_user_photos`: sorted, unreadable files reported and skipped, annotated evaluation images
refused) and used for a `--background-mix` fraction of the scenes, with the same random crop, rescale,
flip and colour jitter as the built-in photos. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

PHOTOS = {
    "train": ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "motorcycle_right.png",
              "brick.png", "grass.png", "camera.png", "coins.png", "ihc.png"),
    "test": ("rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "gravel.png", "moon.png", "cell.png",
             "clock_motion.png"),
}
PHOTO_PROBABILITY = 0.5
# Decode user photos at about this many times the output size at most (JPEG draft mode): a 24 MP photo
# crop rescaled to 512 px needs no more, and full decoding would dominate the sample time.
USER_PHOTO_OVERSAMPLE = 3


class BackgroundError(ValueError):
    """A --backgrounds folder that cannot be used (one-line message naming the folder or file)."""


def _skimage_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    return Path(spec.origin).parent / "data" if spec and spec.origin else None


@functools.lru_cache(maxsize=None)
def photos_for_split(split: str) -> tuple[str, ...]:
    folder = _skimage_data_dir()
    if folder is None:
        return ()
    return tuple(str(folder / name) for name in PHOTOS[split] if (folder / name).is_file())


@functools.lru_cache(maxsize=32)
def _load_photo(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _has_text_annotations(path: Path) -> bool:
    """True for an image with a sidecar `NAME.json` holding text polygons (the real-dev evaluation
    layout): such images contain text, so they must never become "text-free" backgrounds."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return False
    try:
        return "polygons" in json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def list_user_photos(folder: str | Path, warn=None) -> tuple[str, ...]:
    """Readable images under `folder` (recursive, sorted: choices are deterministic). A file that is not
    a readable image is skipped with one warning line through `warn` (default: stderr)."""
    from upocr.data.layouts import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise BackgroundError(f"{root}: --backgrounds folder not found")
    if warn is None:
        warn = lambda message: print(message, file=sys.stderr)  # noqa: E731
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    # Evaluation data (images with text annotations, and the text-free labels and masks next to them) is
    # for measuring only: one annotated image refuses the whole folder.
    for path in files:
        if path.suffix.lower() in IMAGE_SUFFIXES and _has_text_annotations(path):
            raise BackgroundError(f"{path}: has text annotations ({path.with_suffix('.json').name}); a folder "
                                  "of evaluation data is never used for backgrounds")
    usable = []
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(path) as image:
                image.verify()  # header + structure, without decoding every pixel
            usable.append(str(path))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            warn(f"upocr synth: warning: {path}: not a readable image ({error}); skipped")
    if not usable:
        raise BackgroundError(f"{root}: no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) for --backgrounds")
    return tuple(usable)


# Per worker: at most 8 decoded photos of <= USER_PHOTO_OVERSAMPLE x the output side (~60 MB at 512 px).
@functools.lru_cache(maxsize=8)
def _load_user_photo(path: str, max_side: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale when large
            image = image.convert("RGB")
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BackgroundError(f"{path}: not a readable image ({error})") from None


def fractal_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 5) -> np.ndarray:
    """Smooth multi-scale noise in [0, 1] (upsampled random grids, halving amplitude per octave)."""
    total = np.zeros((height, width), np.float32)
    amplitude, weight = 1.0, 0.0
    cells = int(rng.integers(2, 6))
    for _ in range(octaves):
        grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
        total += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        weight += amplitude
        amplitude *= 0.5
        cells *= 2
    total /= weight
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _two_tone(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]


def _near_colour(rng: np.random.Generator, colour: np.ndarray, spread: float) -> np.ndarray:
    return np.clip(colour + rng.normal(0, spread, 3), 0, 255).astype(np.float32)


def procedural_background(rng: np.random.Generator, height: int, width: int, kind: int | None = None) -> np.ndarray:
    """Kinds: 0 flat, 1 gradient, 2 fractal, 3 wood/stripes, 4 tiles, 5 paper (random when None)."""
    kind = int(rng.integers(6)) if kind is None else kind
    base = _random_colour(rng)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    if kind == 0:  # flat colour, faint mottling (painted wall, card)
        t = fractal_noise(rng, height, width) * 0.3
        image = _two_tone(t, base, _near_colour(rng, base, 25))
    elif kind == 1:  # linear or radial gradient (signs, posters, screens)
        if rng.random() < 0.5:
            angle = rng.uniform(0, 2 * np.pi)
            t = xx * np.cos(angle) + yy * np.sin(angle)
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            t = np.hypot(xx - cx, yy - cy)
        t = np.broadcast_to(t, (height, width))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        image = _two_tone(t, base, _random_colour(rng))
    elif kind == 2:  # fractal texture (concrete, stone, fabric)
        t = fractal_noise(rng, height, width, octaves=6)
        image = _two_tone(t, base, _near_colour(rng, base, 70))
    elif kind == 3:  # wood grain / brushed stripes
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(0.02, 0.15)
        warp = fractal_noise(rng, height, width) * rng.uniform(5, 40)
        t = 0.5 + 0.5 * np.sin((xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle)) + warp) * np.float32(freq))
        image = _two_tone(t.astype(np.float32), base, _near_colour(rng, base, 50))
    elif kind == 4:  # tiles / bricks with mortar
        tile_h = int(rng.integers(max(height // 12, 4), max(height // 3, 6)))
        tile_w = int(tile_h * rng.uniform(1.0, 3.0))
        yy, xx = np.broadcast_to(yy, (height, width)), np.broadcast_to(xx, (height, width))
        row = (yy // tile_h).astype(np.int32)
        shift = (row % 2) * (tile_w // 2)
        col = ((xx + shift) // tile_w).astype(np.int32)
        per_tile = rng.normal(0, 18, (int(row.max()) + 2, int(col.max()) + 2)).astype(np.float32)
        image = base[None, None, :] + per_tile[row, col][..., None]
        mortar = ((yy % tile_h) < 2) | (((xx + shift) % tile_w) < 2)
        image[mortar] = _near_colour(rng, base, 60) * 0.6
    else:  # paper: light, fibrous
        base = rng.uniform(200, 255, 3).astype(np.float32)
        t = fractal_noise(rng, height, width, octaves=6)
        image = _two_tone(t, base, base - rng.uniform(5, 30))
    grain = rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(0, 6))
    return np.clip(image + grain, 0, 255).astype(np.float32)


def photo_background(rng: np.random.Generator, path: str, height: int, width: int, *,
                     photo: np.ndarray | None = None) -> np.ndarray:
    """A random crop of a photo, rescaled to (height, width), flipped and colour-shifted."""
    photo = _load_photo(path) if photo is None else photo
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    aspect = width / height * rng.uniform(0.8, 1.25)
    crop_h = max(8, min(ph, int(round(min(ph, pw / aspect) * scale))))
    crop_w = max(8, min(pw, int(round(crop_h * aspect))))
    y0 = int(rng.integers(0, ph - crop_h + 1))
    x0 = int(rng.integers(0, pw - crop_w + 1))
    crop = photo[y0:y0 + crop_h, x0:x0 + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    image = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    # Colour shift: per-channel gain (tints grey photos), brightness and contrast.
    gain = rng.uniform(0.75, 1.25, 3).astype(np.float32)
    contrast = rng.uniform(0.7, 1.2)
    brightness = rng.uniform(-30, 30)
    mean = image.mean()
    image = (image - mean) * contrast + mean + brightness
    return np.clip(image * gain[None, None, :], 0, 255).astype(np.float32)


def random_background(rng: np.random.Generator, split: str, height: int, width: int, *,
                      user_photos: tuple[str, ...] = (), user_mix: float = 0.0) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255]: a user photo (a `user_mix` share of the calls when `user_photos`
    is given), else a built-in photo crop or a procedural texture of the split."""
    if user_photos and rng.random() < user_mix:
        path = user_photos[int(rng.integers(len(user_photos)))]
        photo = _load_user_photo(path, USER_PHOTO_OVERSAMPLE * max(height, width))
        return photo_background(rng, path, height, width, photo=photo)
    photos = photos_for_split(split)
    if photos and rng.random() < PHOTO_PROBABILITY:
        return photo_background(rng, photos[int(rng.integers(len(photos)))], height, width)
    return procedural_background(rng, height, width)
