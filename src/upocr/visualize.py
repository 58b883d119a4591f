"""Pictures for people: masks and class maps drawn over images, and titled side-by-side grids.

All functions take and return uint8 RGB numpy arrays (H, W, 3); masks may be bool or 0/1/255 arrays.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]
# The palette; which class gets which colour is the task's (`upocr.tasks.TaskSpec.colours`).
RED: Colour = (255, 40, 40)
GREEN: Colour = (40, 220, 40)


def as_rgb(picture: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) array -> uint8 (H, W, 3). Bool masks and float arrays in [0, 1] are scaled to
    0..255; other arrays are clipped to 0..255."""
    picture = np.asarray(picture)
    if picture.dtype == bool or (picture.dtype != np.uint8 and picture.max(initial=0) <= 1):
        picture = (picture.astype(np.float32) * 255).round()
    if picture.dtype != np.uint8:
        picture = np.clip(picture, 0, 255).astype(np.uint8)
    if picture.ndim == 2:
        picture = np.repeat(picture[:, :, None], 3, axis=2)
    if picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) picture, got shape {picture.shape}")
    return picture


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, *, colour: Colour = RED, alpha: float = 0.55
) -> np.ndarray:
    """Tint the pixels where `mask` is true (non-zero) with `colour`, `alpha` opaque."""
    return overlay_classes(image, np.asarray(mask).astype(bool).astype(np.uint8), colours={1: colour}, alpha=alpha)


def overlay_classes(
    image: np.ndarray,
    classes: np.ndarray,
    *,
    colours: Mapping[int, Colour],
    alpha: float = 0.55,
) -> np.ndarray:
    """Tint each pixel whose class has a colour in `colours` (class value -> RGB), `alpha` opaque."""
    image = as_rgb(image)
    classes = np.asarray(classes)
    if classes.shape != image.shape[:2]:
        raise ValueError(f"class map {classes.shape} does not match image {image.shape[:2]}")
    result = np.array(image, dtype=np.uint8, copy=True)
    for value, colour in colours.items():  # float only for the tinted pixels: memory stays ~image-sized
        where = classes == value
        tinted = (1 - alpha) * image[where].astype(np.float32) + alpha * np.asarray(colour, np.float32)
        result[where] = np.rint(tinted).astype(np.uint8)
    return result


def side_by_side(
    images: Sequence[np.ndarray], titles: Sequence[str] | None = None, *, height: int | None = 256
) -> np.ndarray:
    """One row of pictures scaled to the same `height` (None: the first one's), titled above each."""
    return image_grid([list(images)], titles, height=height)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str] | None = None,
    *,
    height: int | None = 256,
    gap: int = 6,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Rows of pictures, each scaled to `height` keeping its aspect, with column titles on top.

    Columns are as wide as their widest picture (pictures centred), so every row lines up.
    """
    if not rows or not all(rows):
        raise ValueError("image_grid needs at least one non-empty row")
    columns = max(len(row) for row in rows)
    if titles is not None and len(titles) > columns:
        raise ValueError(f"{len(titles)} titles for {columns} columns")
    target = height or as_rgb(rows[0][0]).shape[0]
    scaled = [[_scale_to_height(as_rgb(p), target) for p in row] for row in rows]
    widths = [max(row[c].shape[1] for row in scaled if c < len(row)) for c in range(columns)]
    font = _font(max(12, target // 14))
    title_height = 0 if not titles else int(font.size * 1.6)
    total_w = sum(widths) + gap * (columns + 1)
    total_h = title_height + len(rows) * (target + gap) + gap
    canvas = Image.new("RGB", (total_w, total_h), background)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for c, width in enumerate(widths):
        if titles and c < len(titles):
            text_w = draw.textlength(titles[c], font=font)
            draw.text((x + (width - text_w) / 2, gap // 2 + font.size * 0.2), titles[c], fill=(0, 0, 0), font=font)
        for r, row in enumerate(scaled):
            if c < len(row):
                picture = row[c]
                left = x + (width - picture.shape[1]) // 2
                canvas.paste(Image.fromarray(picture), (left, title_height + gap + r * (target + gap)))
        x += width + gap
    return np.asarray(canvas).copy()


def _scale_to_height(picture: np.ndarray, height: int) -> np.ndarray:
    if picture.shape[0] == height:
        return picture
    width = max(1, round(picture.shape[1] * height / picture.shape[0]))
    return np.asarray(Image.fromarray(picture).resize((width, height), Image.Resampling.LANCZOS))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at `size` px; PIL's built-in font if it cannot be found."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except Exception:  # noqa: BLE001 - any font problem falls back to PIL's own font
        return ImageFont.load_default(size=size)
