"""Where a block's pixels go: its layer warped into the image (sine curve, homography, then a page
curl or a circular arc), the polygons of its words, and filled polygon masks.

Every warp maps points (polygons, `forward`) and pixels (`maps`/`apply`) the same way, so ground truth
follows the glyphs exactly up to the polygons' sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np


class ImageWarp:
    """A warp of the whole image after a block's homography: `forward` moves points (polygons), `maps`
    gives cv2.remap's inverse maps, `apply` warps pixels (layers, backgrounds)."""

    # Whether a block bent by this warp must lie whole inside the image (a warp that folds or wraps
    # the block's edges, where a clipped outline would no longer bound the glyphs).
    stays_inside: ClassVar[bool] = False

    def forward(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def apply(self, image: np.ndarray, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
        map_x, map_y = self.maps()
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=border, borderValue=0)


@dataclass
class PageCurl(ImageWarp):
    """A bent page (v2 books and receipts): a global warp of the image, applied to the background once
    and to every block through its geometry, so text, labels and polygons bend together.

    Defined in output coordinates (X, Y) <- source (x, y): x = g^-1(X) (a monotone horizontal squeeze),
    y = Y - (a0 + a1 Y / h) q(X) with q(X) = ((X - spine) / w)^2 (lines bend more away from the spine,
    and differently at the top and bottom of the page). The forward map has a closed form, so polygons
    follow the glyphs exactly up to their sampling."""

    hw: tuple[int, int]
    spine: float
    a0: float
    a1: float
    squeeze: float

    def _g(self, x: np.ndarray) -> np.ndarray:
        return x + self.squeeze * np.sin(np.pi * x / self.hw[1])

    def _q(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.spine) / self.hw[1]) ** 2

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.hw
        grid = np.arange(w, dtype=np.float64)
        map_x = np.interp(grid, self._g(grid), grid)  # g is monotone (|squeeze| < w / pi): invert by table
        q = self._q(grid)[None, :]
        Y = np.arange(h, dtype=np.float64)[:, None]
        map_y = Y - (self.a0 + self.a1 * Y / h) * q
        return np.broadcast_to(map_x[None, :], (h, w)).astype(np.float32), map_y.astype(np.float32)

    def forward(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) source points -> (N, 2) output points."""
        X = self._g(points[:, 0])
        q = self._q(X)
        Y = (points[:, 1] + self.a0 * q) / (1 - self.a1 * q / self.hw[0])
        return np.stack([X, Y], 1)


@dataclass
class ArcBend(ImageWarp):
    """One block bent around a circle (v2 badges, seals, logos, round signs): glyphs follow the arc and
    turn with it, as on a real round sign (the sine "curve" of v1 only shifts glyphs up and down).

    Defined in image coordinates around the straight block's centre (cx, cy): a point `u` along the text
    and `v` below its centre line goes to angle u / radius on a circle whose centre lies `radius` below
    (sign +1: the text arches) or above (sign -1: it smiles). Both directions have a closed form, so
    polygons follow the glyphs exactly up to their sampling (same interface as PageCurl)."""

    hw: tuple[int, int]
    cx: float
    cy: float
    radius: float
    sign: int  # +1 arch (circle centre below the text), -1 smile (above)

    stays_inside: ClassVar[bool] = True

    def forward(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) straight-block image points -> (N, 2) bent image points."""
        u, v = points[:, 0] - self.cx, points[:, 1] - self.cy
        rho, theta = self.radius - self.sign * v, u / self.radius
        centre_y = self.cy + self.sign * self.radius
        return np.stack([self.cx + rho * np.sin(theta), centre_y - self.sign * rho * np.cos(theta)], 1)

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.hw
        Y, X = np.mgrid[0:h, 0:w].astype(np.float64)
        dx, dy = X - self.cx, self.sign * (self.cy + self.sign * self.radius - Y)
        rho, theta = np.hypot(dx, dy), np.arctan2(dx, dy)
        map_x = self.cx + self.radius * theta
        map_y = self.cy + self.sign * (self.radius - rho)
        # Beyond half a turn the circle folds back onto itself: nothing is drawn there.
        map_x[np.abs(theta) > np.pi * 0.999] = -1e6
        return map_x.astype(np.float32), map_y.astype(np.float32)


@dataclass
class BlockGeometry:
    """Layer (height, width) -> curved layer (vertical sine offsets) -> homography into the image
    (-> page curl or arc, v2)."""

    layer_size: tuple[int, int]
    curve_amplitude: float
    curve_period: float
    curve_phase: float
    homography: np.ndarray  # 3x3, curved-layer pixel coords -> image coords
    page: ImageWarp | None = None  # a page curl or an arc, after the homography

    @property
    def curve_pad(self) -> int:
        return int(math.ceil(abs(self.curve_amplitude))) + 1

    def curve_offset(self, x: np.ndarray) -> np.ndarray:
        if self.curve_amplitude == 0:
            return np.zeros_like(x)
        return self.curve_amplitude * np.sin(2 * np.pi * x / self.curve_period + self.curve_phase)

    def layer_to_image(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) layer points -> (N, 2) image points."""
        points = np.asarray(points, np.float64)
        curved = np.stack([points[:, 0], points[:, 1] + self.curve_pad + self.curve_offset(points[:, 0])], 1)
        flat = cv2.perspectiveTransform(curved[None], self.homography)[0]
        return flat if self.page is None else self.page.forward(flat)

    def outline(self) -> np.ndarray:
        """(N, 2) image points around the warped layer (densely sampled where a warp bends it)."""
        h, w = self.layer_size
        corners = np.float64([[0, 0], [w, 0], [w, h + 2 * self.curve_pad], [0, h + 2 * self.curve_pad]])
        if self.page is not None:  # the outline, densely, so the bent edges are inside the bounds
            t = np.linspace(0, 1, 33)[:, None]
            corners = np.concatenate([a + t * (b - a) for a, b in zip(corners, np.roll(corners, -1, 0))])
        warped = cv2.perspectiveTransform(corners[None], self.homography)[0]
        return warped if self.page is None else self.page.forward(warped)

    def image_bounds(self, out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) of the warped layer inside the image (end exclusive; may be empty)."""
        warped = self.outline()
        x0, y0 = np.floor(warped.min(0)).astype(int) - 1
        x1, y1 = np.ceil(warped.max(0)).astype(int) + 2
        return max(0, y0), max(0, x0), min(out_hw[0], y1), min(out_hw[1], x1)

    def warp(self, layers: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice]]:
        """(h, w, C<=4) float layer stack -> (crop, region): the warped stack only over the image
        region it can touch (compositing a block costs its size, not the image's)."""
        h, w = self.layer_size
        if self.curve_amplitude != 0:
            pad = self.curve_pad
            ys, xs = np.mgrid[0:h + 2 * pad, 0:w].astype(np.float32)
            map_y = ys - pad - self.curve_offset(xs).astype(np.float32)
            layers = cv2.remap(layers, xs, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        else:
            layers = np.pad(layers, ((self.curve_pad, self.curve_pad), (0, 0), (0, 0)))
        y0, x0, y1, x1 = self.image_bounds(out_hw)
        channels = layers.shape[2]
        if self.page is not None and y1 > y0 and x1 > x0:
            full = cv2.warpPerspective(layers, self.homography, (out_hw[1], out_hw[0]), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            curled = self.page.apply(full).reshape(out_hw[0], out_hw[1], channels)
            return np.ascontiguousarray(curled[y0:y1, x0:x1]), (slice(y0, y1), slice(x0, x1))
        if y1 <= y0 or x1 <= x0:
            return np.zeros((0, 0, channels), np.float32), (slice(0, 0), slice(0, 0))
        shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
        crop = cv2.warpPerspective(layers, shift @ self.homography, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return crop.reshape(y1 - y0, x1 - x0, channels), (slice(y0, y1), slice(x0, x1))


def polygon_of(geometry: BlockGeometry, local_box: tuple[float, float, float, float], points: int = 6) -> np.ndarray:
    """(2 * points, 2) image polygon around a layer box: `points` samples along its top and its bottom."""
    x0, y0, x1, y1 = local_box
    xs = np.linspace(x0, x1, points)
    outline = np.concatenate([np.stack([xs, np.full(points, y0)], 1), np.stack([xs[::-1], np.full(points, y1)], 1)])
    return geometry.layer_to_image(outline).astype(np.float32)


def box_of(polygon: np.ndarray, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) inclusive pixel box around a polygon, clipped to the image."""
    h, w = hw
    x1, y1 = np.floor(polygon.min(0)).astype(int)
    x2, y2 = np.ceil(polygon.max(0)).astype(int)
    return int(np.clip(x1, 0, w - 1)), int(np.clip(y1, 0, h - 1)), int(np.clip(x2, 0, w - 1)), int(np.clip(y2, 0, h - 1))


def fill_polygons(polygons: list[np.ndarray], hw: tuple[int, int], value: int = 1) -> np.ndarray:
    """(H, W) uint8 mask: `value` inside any of the polygons."""
    mask = np.zeros(hw, np.uint8)
    for polygon in polygons:  # one call per polygon: a single fillPoly call cancels overlaps (even-odd)
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], value)
    return mask
