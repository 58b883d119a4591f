"""Mask helpers shared by inference (the text-fill removal modes) and the classical baselines."""

from __future__ import annotations

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
    """Fill the `text` pixels of a uint8 RGB image with OpenCV's Telea inpainting."""
    return cv2.inpaint(np.ascontiguousarray(image), text.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
