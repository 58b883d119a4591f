"""Mask helpers shared by inference (the text-fill removal modes) and the classical baselines."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

TELEA_RADIUS = 3  # px: cv2.inpaint neighbourhood


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a bool mask by `pixels` with an elliptical structuring element."""
    if pixels <= 0:
        return mask.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def telea_inpaint(image: np.ndarray, text: np.ndarray, *, radius: int = TELEA_RADIUS) -> np.ndarray:
    """Fill the `text` pixels of a uint8 RGB image with OpenCV's Telea inpainting.

    OpenCV's working maps take ~10 bytes a pixel, so it runs on crops: one per group of text rows (groups
    further apart than the fill reaches), spanning the group's columns, with a margin the fill cannot see
    past. Each text pixel sees the same neighbourhood as in one call on the whole image: same result."""
    mask = np.asarray(text, dtype=bool)
    filled = np.array(image, copy=True, order="C")
    margin = 2 * max(1, radius) + 4  # the fill reads `radius` around a pixel, its distance map as far again
    text_rows = np.flatnonzero(mask.any(axis=1))
    if text_rows.size == 0:
        return filled
    breaks = np.flatnonzero(np.diff(text_rows) > 2 * margin)
    crops = []
    for first, last in zip(np.r_[text_rows[0], text_rows[breaks + 1]], np.r_[text_rows[breaks], text_rows[-1]]):
        top, bottom = max(0, first - margin), min(len(mask), last + 1 + margin)
        text_cols = np.flatnonzero(mask[top:bottom].any(axis=0))
        left, right = max(0, text_cols[0] - margin), min(mask.shape[1], text_cols[-1] + 1 + margin)
        crops.append((top, bottom, left, right))

    def fill(crop: tuple[int, int, int, int]) -> None:
        top, bottom, left, right = crop
        crop_mask = mask[top:bottom, left:right].astype(np.uint8) * 255
        filled[top:bottom, left:right] = cv2.inpaint(np.ascontiguousarray(image[top:bottom, left:right]), crop_mask,
                                                     radius, cv2.INPAINT_TELEA)

    # Row groups never share rows (they are further apart than two margins) and read only `image`: they run
    # on threads (OpenCV releases the GIL), one per core, with the same result as one after another.
    workers = min(len(crops), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="upocr-telea") as pool:
            list(pool.map(fill, crops))
    else:
        for crop in crops:
            fill(crop)
    return filled
