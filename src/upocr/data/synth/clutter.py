"""Non-text marks drawn into v2 backgrounds: hard negatives for every task.

On real photos the model erased and segmented things that are not text: barcodes, dashed rules, icons
(wifi arcs, rings, arrows), railings and poles, a pen circle around a total (`upocr evaluate real`,
docs/results.md). Scenes without such marks never show it that they stay. Here they are drawn into the
text-free background itself, before any text, so they are in the image AND in its removal label, the
segmentation mask and tampering classes call them background, and text may later be drawn over them.

Each mark is drawn as an anti-aliased coverage map (0..1) and composited in one colour, so it looks
printed or painted, not pasted; the camera effects of the scene come later and apply to it as to the rest.
"""

from __future__ import annotations

import functools
from typing import Callable

import cv2
import numpy as np

from upocr.data.synth.render import contrasting_colour

CLUTTER_PROBABILITY = 0.6  # share of v2 scenes that get marks
MAX_MARKS = 4
SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 px
ONE = 1 << SHIFT

Coverage = np.ndarray  # (H, W) float32 in [0, 1]


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * ONE).astype(np.int32)


def _mark(draw: Callable[[np.random.Generator, np.ndarray], None]) -> Callable[[np.random.Generator, tuple[int, int]], Coverage]:
    """A mark drawn with 255s (cv2, anti-aliased) into a zero uint8 layer of the image's size, as coverage."""

    @functools.wraps(draw)
    def coverage(rng: np.random.Generator, hw: tuple[int, int]) -> Coverage:
        layer = np.zeros(hw, np.uint8)
        draw(rng, layer)
        return layer.astype(np.float32) / 255

    return coverage


def _thickness(rng: np.random.Generator, short: int, lo: float = 0.002, hi: float = 0.012) -> int:
    return max(1, int(round(short * rng.uniform(lo, hi))))


@_mark
def barcode(rng: np.random.Generator, layer: np.ndarray) -> None:
    """Vertical bars of 1-4 module widths (products, receipts, tickets)."""
    h, w = layer.shape
    module = max(1, int(round(min(h, w) * rng.uniform(0.002, 0.006))))
    width = int(min(w * rng.uniform(0.15, 0.45), module * 95))
    height = int(h * rng.uniform(0.04, 0.18))
    x0, y0 = int(rng.integers(0, max(1, w - width))), int(rng.integers(0, max(1, h - height)))
    x, bar = x0, True
    while x < x0 + width:
        step = module * int(rng.integers(1, 5))
        if bar:
            layer[y0 : y0 + height, x : min(x + step, x0 + width)] = 255
        x, bar = x + step, not bar


@_mark
def rules(rng: np.random.Generator, layer: np.ndarray) -> None:
    """Solid, dashed or dotted lines, sometimes a table grid (forms, receipts, UI)."""
    h, w = layer.shape
    thickness = _thickness(rng, min(h, w), 0.001, 0.006)
    dash = (0, 0) if rng.random() < 0.4 else (int(rng.integers(1, 12)), int(rng.integers(2, 10)))
    vertical = rng.random() < 0.3
    for _ in range(int(rng.integers(1, 5))):
        along, across = (h, w) if vertical else (w, h)
        start = rng.uniform(0, 0.5) * along
        end = start + rng.uniform(0.3, 1.0) * (along - start)
        offset = rng.uniform(0.02, 0.98) * across
        tilt = rng.normal(0, 0.01) * (end - start)
        pieces = [(start, end)] if dash == (0, 0) else [
            (s, min(s + dash[0] * thickness, end)) for s in np.arange(start, end, (dash[0] + dash[1]) * thickness)]
        for a, b in pieces:
            ta, tb = tilt * (a - start) / max(end - start, 1), tilt * (b - start) / max(end - start, 1)
            p, q = ((offset + ta, a), (offset + tb, b)) if vertical else ((a, offset + ta), (b, offset + tb))
            cv2.line(layer, tuple(_fixed(p)), tuple(_fixed(q)), 255, thickness, cv2.LINE_AA, SHIFT)


@_mark
def icon(rng: np.random.Generator, layer: np.ndarray) -> None:
    """One pictogram: disc, ring, rounded box, triangle, star, arrow, tick or plus."""
    h, w = layer.shape
    size = min(h, w) * rng.uniform(0.04, 0.16)
    cx, cy = rng.uniform(size, max(size + 1, w - size)), rng.uniform(size, max(size + 1, h - size))
    r = size / 2
    thickness = max(1, int(round(size * rng.uniform(0.06, 0.15))))
    filled = rng.random() < 0.5
    shape = str(rng.choice(["disc", "ring", "box", "triangle", "star", "arrow", "tick", "plus"]))
    centre = np.array([cx, cy])
    if shape in ("disc", "ring"):
        cv2.circle(layer, tuple(_fixed(centre)), int(r * ONE), 255, -1 if shape == "disc" else thickness, cv2.LINE_AA, SHIFT)
        return
    if shape == "box":
        points = centre + r * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    elif shape == "triangle":
        points = centre + r * np.array([[0, -1], [0.87, 0.5], [-0.87, 0.5]])
    elif shape == "star":
        angles = np.arange(10) * np.pi / 5 - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        points = centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
    elif shape == "arrow":
        points, filled = centre + r * np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.7], [1, 0], [0.2, 0.7], [0.2, 0.25], [-1, 0.25]]), True
    elif shape == "tick":
        points, filled = centre + r * np.array([[-0.8, 0], [-0.2, 0.6], [0.9, -0.7]]), False
    else:  # plus
        for d in (np.array([r, 0]), np.array([0, r])):
            cv2.line(layer, tuple(_fixed(centre - d)), tuple(_fixed(centre + d)), 255, thickness, cv2.LINE_AA, SHIFT)
        return
    angle = rng.uniform(-0.3, 0.3)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (points - centre) @ rotation.T + centre
    if filled:
        cv2.fillPoly(layer, [_fixed(points)], 255, cv2.LINE_AA, SHIFT)
    else:
        cv2.polylines(layer, [_fixed(points)], shape != "tick", 255, thickness, cv2.LINE_AA, SHIFT)


@_mark
def arcs(rng: np.random.Generator, layer: np.ndarray) -> None:
    """Concentric arcs over a dot (the wifi / signal / sound pictogram)."""
    h, w = layer.shape
    size = min(h, w) * rng.uniform(0.05, 0.18)
    cx, cy = rng.uniform(size, max(size + 1, w - size)), rng.uniform(size, max(size + 1, h - size / 2))
    count = int(rng.integers(2, 5))
    thickness = max(1, int(round(size / (3 * count))))
    spread, facing = rng.uniform(35, 60), float(rng.choice([-90, 0, 90, 180], p=[0.7, 0.1, 0.1, 0.1]))
    cv2.circle(layer, tuple(_fixed((cx, cy))), int(thickness * 0.9 * ONE), 255, -1, cv2.LINE_AA, SHIFT)
    for i in range(1, count + 1):
        radius = size * i / count
        axes = (int(radius * ONE), int(radius * ONE))
        cv2.ellipse(layer, tuple(_fixed((cx, cy))), axes, facing, -spread, spread, 255, thickness, cv2.LINE_AA, SHIFT)


@_mark
def poles(rng: np.random.Generator, layer: np.ndarray) -> None:
    """Parallel thin bars with a shared lean: railings, fences, window frames."""
    h, w = layer.shape
    count = int(rng.integers(3, 12))
    spacing = w * rng.uniform(0.02, 0.08)
    x0 = rng.uniform(0, max(1.0, w - spacing * count))
    top, length = rng.uniform(0, 0.6) * h, rng.uniform(0.15, 0.6) * h
    lean = rng.normal(0, 0.15) * length
    thickness = _thickness(rng, min(h, w), 0.002, 0.01)
    for i in range(count):
        x = x0 + i * spacing
        cv2.line(layer, tuple(_fixed((x, top))), tuple(_fixed((x + lean, top + length))), 255, thickness, cv2.LINE_AA, SHIFT)
    if rng.random() < 0.6:  # the rail joining them
        end = x0 + (count - 1) * spacing
        cv2.line(layer, tuple(_fixed((x0, top))), tuple(_fixed((end, top))), 255, thickness + 1, cv2.LINE_AA, SHIFT)


@_mark
def code_matrix(rng: np.random.Generator, layer: np.ndarray) -> None:
    """A QR-like square of random modules with three finder squares."""
    h, w = layer.shape
    modules = int(rng.integers(15, 30))
    module = max(1, int(round(min(h, w) * rng.uniform(0.003, 0.008))))
    side = modules * module
    if side >= min(h, w):
        return
    grid = rng.random((modules, modules)) < 0.5
    finder = np.ones((7, 7), bool)
    finder[1:6, 1:6], finder[2:5, 2:5] = False, True
    for r, c in ((0, 0), (0, modules - 7), (modules - 7, 0)):
        grid[r : r + 7, c : c + 7] = finder
    y0, x0 = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    layer[y0 : y0 + side, x0 : x0 + side] = np.kron(grid, np.ones((module, module), np.uint8)) * 255


@_mark
def pen_loop(rng: np.random.Generator, layer: np.ndarray) -> None:
    """A hand-drawn loop (ringing a total, a tick mark's circle): a wobbly, not quite closed ellipse."""
    h, w = layer.shape
    rx, ry = min(h, w) * rng.uniform(0.05, 0.15), min(h, w) * rng.uniform(0.04, 0.1)
    cx, cy = rng.uniform(rx, max(rx + 1, w - rx)), rng.uniform(ry, max(ry + 1, h - ry))
    t = np.linspace(0, 2 * np.pi * rng.uniform(1.0, 1.25), 80) + rng.uniform(0, 2 * np.pi)
    wobble = 1 + np.cumsum(rng.normal(0, 0.01, t.size))
    points = np.stack([cx + rx * wobble * np.cos(t), cy + ry * wobble * np.sin(t)], 1)
    cv2.polylines(layer, [_fixed(points)], False, 255, _thickness(rng, min(h, w), 0.002, 0.006), cv2.LINE_AA, SHIFT)


MARKS: dict[str, Callable[[np.random.Generator, tuple[int, int]], Coverage]] = {
    "barcode": barcode, "rules": rules, "icon": icon, "arcs": arcs, "poles": poles,
    "code_matrix": code_matrix, "pen_loop": pen_loop,
}


def add_clutter(rng: np.random.Generator, background: np.ndarray, *, probability: float = CLUTTER_PROBABILITY) -> np.ndarray:
    """`background` (H, W, 3) float32 0..255 with 1-MAX_MARKS marks painted in (or unchanged, 1 - probability
    of the time). Each mark gets one colour that stands out against the pixels it covers."""
    if rng.random() >= probability:
        return background
    out = background.astype(np.float32, copy=True)
    names = list(MARKS)
    for _ in range(int(rng.integers(1, MAX_MARKS + 1))):
        coverage = MARKS[names[int(rng.integers(len(names)))]](rng, out.shape[:2])
        if not coverage.any():
            continue
        covered = coverage > 0.5
        under = out[covered].mean(0) if covered.any() else out.reshape(-1, 3).mean(0)
        colour = contrasting_colour(rng, under, float(rng.uniform(40, 120)))
        alpha = coverage[..., None] * np.float32(rng.uniform(0.75, 1.0))
        out = out * (1 - alpha) + colour.astype(np.float32) * alpha
    return out
