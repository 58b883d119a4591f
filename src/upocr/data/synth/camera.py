"""Camera effects: photometric degradations applied identically to a scene's composite and to its
text-free twin, so outside the word polygons both stay equal.

  classic_camera     v1's: fractal illumination, Gaussian or motion blur, additive noise;
  photo_camera       v2 photos: lighting (gradient, cast shadow, vignette, fractal), blur (Gaussian,
                     defocus disk, motion), additive or signal-dependent (shot) noise driven by ONE random
                     field (so the noise differs only where the text changed the signal);
  screenshot_camera  none (only the JPEG quality the file is written at).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from upocr.data.synth import backgrounds
from upocr.data.synth.render import Degradation


def motion_kernel(rng: np.random.Generator, max_length: int) -> np.ndarray:
    """A normalised straight motion-blur kernel of 3..`max_length` pixels at a random angle."""
    length = int(rng.integers(3, max_length + 1))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    return kernel / max(float(kernel.sum()), 1e-6)


def classic_camera(rng: np.random.Generator, hw: tuple[int, int]) -> Degradation:
    """v1 scenes (and the v2 `classic` kind)."""
    h, w = hw
    illumination = None
    if rng.random() < 0.5:
        field = backgrounds.fractal_noise(rng, h, w, octaves=2)
        illumination = (1 + rng.uniform(0.1, 0.45) * (field - 0.5))[..., None].astype(np.float32)
    blur = float(rng.uniform(0.3, 1.2)) if rng.random() < 0.55 else 0.0
    motion = motion_kernel(rng, 7) if rng.random() < 0.1 else None
    noise = None
    if rng.random() < 0.6:
        noise = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(1, 7))
    return Degradation(illumination, blur, motion, noise, int(rng.integers(60, 96)))


def screenshot_camera(rng: np.random.Generator, hw: tuple[int, int]) -> Degradation:
    """Screenshots: no camera, only JPEG."""
    return Degradation(None, 0.0, None, None, int(rng.integers(75, 99)))


def cast_shadow(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) multiplicative field: a soft-edged polygon (a hand, a pole, a roof edge) darker."""
    h, w = hw
    points = np.stack([rng.uniform(-0.2, 1.2, 5) * w, rng.uniform(-0.2, 1.2, 5) * h], 1)
    hull = cv2.convexHull(points.astype(np.float32)).astype(np.int32)
    mask = np.zeros((h, w), np.float32)
    cv2.fillPoly(mask, [hull], 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.01, 0.06) * max(h, w) + 1)
    return 1 - rng.uniform(0.25, 0.6) * mask


def lighting(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray | None:
    """(H, W, 1) multiplicative light field (gradient, cast shadow, vignette, fractal), or None."""
    h, w = hw
    field = np.ones((h, w), np.float32)
    used = False
    if rng.random() < 0.4:  # directional light: a linear gradient
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w)
        field *= 1 + rng.uniform(0.1, 0.5) * (t - t.mean())
        used = True
    if rng.random() < 0.3:
        field *= cast_shadow(rng, hw)
        used = True
    if rng.random() < 0.25:  # vignette
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        field *= 1 - rng.uniform(0.1, 0.35) * r2 / 2
        used = True
    if rng.random() < 0.3:
        noise = backgrounds.fractal_noise(rng, h, w, octaves=2)
        field *= 1 + rng.uniform(0.1, 0.4) * (noise - 0.5)
        used = True
    return field[..., None].astype(np.float32) if used else None


def defocus_kernel(radius: float) -> np.ndarray:
    """A normalised disk: an out-of-focus lens."""
    size = 2 * int(math.ceil(radius)) + 1
    kernel = np.zeros((size, size), np.float32)
    cv2.circle(kernel, (size // 2, size // 2), int(round(radius)), 1.0, -1, lineType=cv2.LINE_AA)
    return kernel / kernel.sum()


def photo_camera(rng: np.random.Generator, hw: tuple[int, int]) -> Degradation:
    """A v2 photo: lighting, sometimes blur (Gaussian, defocus, motion), often noise."""
    h, w = hw
    illumination = lighting(rng, hw)
    r = rng.random()
    blur, kernel = 0.0, None
    if r < 0.45:
        blur = float(rng.uniform(0.3, 1.4))
    elif r < 0.55:
        kernel = defocus_kernel(float(rng.uniform(1.2, 3.0)))
    elif r < 0.63:
        kernel = motion_kernel(rng, 8)
    noise, shot = None, None
    if rng.random() < 0.7:
        field = rng.standard_normal((h, w, 3), dtype=np.float32)
        if rng.random() < 0.5:  # sensor shot noise: std grows with the signal (same field for both)
            shot = field * np.float32(rng.uniform(0.15, 0.5))
        else:
            noise = field * np.float32(rng.uniform(1, 6))
    return Degradation(illumination, blur, kernel, noise, int(rng.integers(55, 96)), shot_noise=shot)
