"""Per-word forensic features: each word measured, then compared with the other words of its own image.

A forger edits a few words of a file and leaves the rest alone, so the evidence is a *difference
within the image*: a word whose error level at some JPEG quality, noise residual, JPEG 8x8 grid,
sharpness, colour or background differs from the words around it. Absolute values say little (a
crisp screenshot and a blurred phone photo differ by far more than a forgery does), so every
measurement also enters as its deviation from the median of the image's other words (and of the
words of the same line), in units of the spread over the image's words.

Measurements per word (its region: a polygon or a box, rasterised; crop = its bounding box):
  * error level (ELA) at several JPEG qualities: mean |image - JPEG(image, q)| over the word's ink
    edges and over its background; a region saved at another quality has its "JPEG ghost" elsewhere;
  * noise residual (second-order high-pass, SRM-style) of the background inside the box and of a
    ring around it: an erased and refilled background is smoother or noisier than its surroundings;
  * the JPEG 8x8 grid: horizontal and vertical steps on the image's block boundaries vs inside the
    blocks; a pasted region carries a grid at another phase, or none;
  * sharpness: edge gradient over contrast (an edge-width proxy);
  * ink and background colour (Lab), contrast, height;
  * a copy-move cue: the best normalised correlation of the word with another word of similar size;
  * seams (`seams.py`): the strongest step in luminance, colour, texture and error level across each
    side of the box, searched outward from it, where a pasted or refilled patch ends.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import cv2
import numpy as np

from upocr.data.synth.tampering import jpeg_roundtrip
from upocr.forensics.robust import nanmedian_columns
from upocr.forensics.seams import SEAM_NAMES, seam_features, seam_planes

# Raised when a feature's values change under the same name, so that kept tables and classifier files
# measured by another version are refused (1: up to session 29; 2: the seams read at most 64 rows of a side
# and take the seam nearest the box of equal steps).
FEATURES_VERSION = 2
ELA_QUALITIES = (50, 70, 85, 95)
RING_SHARE = 0.35  # the ring around a word is this share of its height wide
TWIN_SIZE = (12, 40)  # (h, w) a word is resized to for the copy-move correlation
MIN_SIDE = 3  # regions thinner than this (pixels) are too small to measure; their features are NaN

# Measured per word; those in RELATIVE also enter as deviations from the image's other words.
BASE_NAMES = (
    *(f"ela{q}_edge" for q in ELA_QUALITIES),
    *(f"ela{q}_bg" for q in ELA_QUALITIES),
    *(f"ela{q}_ring" for q in ELA_QUALITIES),
    "noise_bg", "noise_ring", "noise_edge",
    "grid_x", "grid_y", "grid_x_phase", "grid_y_phase",
    "sharpness", "edge_width", "contrast",
    "ink_l", "ink_a", "ink_b", "bg_l", "bg_a", "bg_b",
    "log_height", "aspect", "twin",
)
RELATIVE = tuple(n for n in BASE_NAMES if n not in ("aspect", "twin"))
# Also against words of about the same height (a headline is naturally sharper and saves differently
# from small print; a forged word matches the size of the words it sits among).
SIZE_RELATIVE = ("ela50_edge", "ela70_edge", "ela85_edge", "ela95_edge", "ela70_bg", "noise_bg", "noise_edge", "sharpness",
                 "edge_width", "contrast", "grid_x", "grid_y", "ink_l", "bg_l")
SIZE_PEER_LOG_RATIO = 0.25  # |log(height ratio)| below this: "about the same height"
LINE_RELATIVE = ("ink_l", "ink_a", "ink_b", "log_height", "sharpness", "edge_width", "noise_bg", "ela85_edge", "ela70_edge")
IMAGE_NAMES = ("word_count", "image_ela85", "image_ela70", "image_noise", "image_grid")
# Derived per word: background-inside vs ring (an erased and refilled background differs from its surroundings).
DERIVED_NAMES = ("noise_bg_over_ring", *(f"ela{q}_bg_over_ring" for q in ELA_QUALITIES),
                 *(f"ela{q}_edge_over_bg" for q in ELA_QUALITIES))
FEATURE_NAMES = (
    *BASE_NAMES,
    *DERIVED_NAMES,
    *(f"{n}_dev" for n in RELATIVE),
    *(f"{n}_z" for n in RELATIVE),
    *(f"{n}_line_dev" for n in LINE_RELATIVE),
    *(f"{n}_size_dev" for n in SIZE_RELATIVE),
    "size_peers",
    *IMAGE_NAMES,
    *SEAM_NAMES,
)


@dataclass
class ImageMaps:
    """Whole-image maps the per-word measurements read from (computed once per image)."""

    grey: np.ndarray  # float32 (H, W), 0-255
    bgr: np.ndarray  # uint8 (H, W, 3)
    ela: dict[int, np.ndarray]  # quality -> float32 (H, W) absolute luminance error
    residual: np.ndarray  # float32 (H, W) absolute second-order residual
    gradient: np.ndarray  # float32 (H, W) gradient magnitude
    step_x: np.ndarray  # float32 (H, W-1) |grey[:, x+1] - grey[:, x]|
    step_y: np.ndarray  # float32 (H-1, W)

    @cached_property
    def seams(self) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """The seams' planes and calm map (`seams.seam_planes`), made on first use: only the word features read them."""
        return seam_planes(self.grey, self.bgr, self.ela)


def check_rgb(image: np.ndarray) -> None:
    """ValueError unless `image` is RGB uint8 (H, W, 3), what the measurements read."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def image_maps(image: np.ndarray) -> ImageMaps:
    """The maps of an RGB uint8 (H, W, 3) image. Error levels on the luminance only: JPEG's chroma is
    subsampled and coarsely quantised, and three channels would triple the cost (about 1 s per
    1600x1200 photo instead of 0.3)."""
    bgr = np.ascontiguousarray(image[..., ::-1])
    grey_levels = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    grey = grey_levels.astype(np.float32)

    def error_level(quality: int) -> np.ndarray:
        again = cv2.cvtColor(jpeg_roundtrip(image, quality), cv2.COLOR_RGB2GRAY)
        return cv2.absdiff(grey_levels, again).astype(np.float32)

    # The four re-encodings run side by side while this thread makes the other maps: OpenCV's JPEG codec releases
    # the GIL (on 2 cores the maps of a 1600x1200 photo take 0.08 s instead of 0.13 s; the same maps).
    with ThreadPoolExecutor(len(ELA_QUALITIES)) as pool:
        levels = pool.map(error_level, ELA_QUALITIES)
        # Second-order residual: the image minus the average of its 4 neighbours (an SRM "square 3x3" style
        # filter): flat for smooth content, so what is left is sensor noise, resampling and JPEG traces.
        kernel = np.array([[0, -0.25, 0], [-0.25, 1, -0.25], [0, -0.25, 0]], np.float32)
        residual = np.abs(cv2.filter2D(grey, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT))
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        # numpy, not cv2.magnitude: OpenCV's result differs in the last bit with the buffers' memory alignment,
        # so the same photo gave other percentiles (and masks) from run to run.
        gradient = np.sqrt(gx * gx + gy * gy)
        step_x = np.abs(np.diff(grey, axis=1))
        step_y = np.abs(np.diff(grey, axis=0))
        ela = dict(zip(ELA_QUALITIES, levels))
    return ImageMaps(grey, bgr, ela, residual, gradient, step_x, step_y)


def _lab(bgr_means: np.ndarray) -> np.ndarray:
    """(N, 3) mean BGR colours (0-255 floats, NaN rows: no such pixels) -> (N, 3) float32 Lab, in one conversion
    (per pixel the same values as one conversion per colour)."""
    bgr_means = np.asarray(bgr_means, np.float32).reshape(-1, 3)
    missing = np.isnan(bgr_means).any(axis=1)
    known = np.where(missing[:, None], 0, bgr_means)  # OpenCV's table lookups are not for NaN
    lab = cv2.cvtColor((known / 255.0).reshape(1, -1, 3), cv2.COLOR_BGR2Lab).reshape(-1, 3)
    lab[missing] = np.nan
    return lab


def _mean_colour(colours: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The float64 mean BGR colour of `colours` (uint8 (h, w, 3)) where `where` (bool) holds, NaN when nowhere:
    exactly numpy's `colours[where].mean(0)`, without the copy. cv2.mean multiplies the exact integer sums by
    1 / count; rounding back to the sums and dividing by the count gives numpy's value to the last bit."""
    mask = where.view(np.uint8)
    count = cv2.countNonZero(mask)
    if not count:
        return np.full(3, np.nan)
    return np.round(np.array(cv2.mean(colours, mask=mask)[:3]) * count) / count


def percentiles(values: np.ndarray, *qs: float) -> list[np.float32]:
    """`np.percentile(values, q)` (linear method) of 1-D float32 `values` for each q, to the last bit, from one
    partition (numpy partitions once per call)."""
    count = values.size
    picks = []  # per q: (index below, index above, weight of the one above)
    for q in qs:
        fraction = q / 100
        # numpy's virtual index for the linear method (alpha = beta = 1), in its order of operations.
        virtual = count * fraction + (1 + fraction * (1 - 1 - 1)) - 1
        if virtual >= count - 1:
            picks.append((count - 1, count - 1, 0.0))
        elif virtual < 0:
            picks.append((0, 0, 0.0))
        else:
            below = math.floor(virtual)
            picks.append((below, below + 1, virtual - below))  # a Python float: numpy keeps float32 arithmetic
    ordered = np.partition(values, sorted({index for pick in picks for index in pick[:2]}))
    out = []
    for below, above, gamma in picks:
        low, high = ordered[below], ordered[above]
        step = high - low
        out.append(high - step * (1 - gamma) if gamma >= 0.5 else low + step * gamma)
    return out


def region_boxes(regions: Sequence[np.ndarray | Sequence[float]], shape: tuple[int, int]) -> list[np.ndarray]:
    """Regions as polygons (N, 2) float32: a 4-number box (x1, y1, x2, y2, inclusive) becomes its rectangle."""
    height, width = shape
    polygons = []
    for region in regions:
        points = np.asarray(region, np.float32)
        if points.ndim == 1:
            if points.size < 4:
                raise ValueError(f"a region box needs 4 numbers (x1, y1, x2, y2), got {points.size}")
            x1, y1, x2, y2 = points[:4]
            points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
        points = points.reshape(-1, 2)
        points[:, 0] = np.clip(points[:, 0], 0, width - 1)
        points[:, 1] = np.clip(points[:, 1], 0, height - 1)
        polygons.append(points)
    return polygons


def pixel_box(polygon: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the whole pixels a polygon's points reach (floor of the minimum, ceiling of the maximum)."""
    x1, y1 = np.floor(polygon.min(0)).astype(int)
    x2, y2 = np.ceil(polygon.max(0)).astype(int)
    return int(x1), int(y1), int(x2), int(y2)


def _means(values: np.ndarray, where: np.ndarray) -> tuple[float, float, float, float]:
    """Per channel (up to 4), the mean of `values` (float32 (h, w) or (h, w, c)) where `where` (bool) holds;
    NaN when nowhere. cv2.mean with a mask: several times faster than boolean indexing, and a stack of maps
    is read in one call (per channel bit for bit the mean of one call per map: the bench's 1,582 words measured
    on one set of maps give the same features either way)."""
    mask = where.view(np.uint8)
    if not cv2.countNonZero(mask):
        return (float("nan"),) * 4
    return cv2.mean(values, mask=mask)


def _mean(values: np.ndarray, where: np.ndarray) -> float:
    """Mean of `values` (2-D float32) where `where` (bool) holds; NaN when nowhere (`_means`)."""
    return float(_means(values, where)[0])


def _grid_strength(steps: np.ndarray, offset: int, axis: int) -> tuple[float, float]:
    """(aligned, best-phase) blockiness of a crop's steps: the mean step on the image's 8x8 block
    boundaries (phase 7 in absolute coordinates) over the mean step elsewhere, and the strongest
    phase's ratio (a pasted region's grid sits at another phase)."""
    if steps.shape[axis] < 16:
        return float("nan"), float("nan")
    means = steps.mean(axis=1 - axis)
    phases = (np.arange(means.size) + offset) % 8
    per_phase = np.bincount(phases, weights=means, minlength=8) / np.maximum(np.bincount(phases, minlength=8), 1)
    baseline = float(np.median(per_phase)) + 1e-3
    return float(per_phase[7] / baseline), float(per_phase.max() / baseline)


def measure_words(image: np.ndarray, regions: Sequence[np.ndarray | Sequence[float]],
                  maps: ImageMaps | None = None) -> np.ndarray:
    """(N, len(BASE_NAMES)) float32 measurements of each region (NaN where a region is too small)."""
    maps = maps if maps is not None else image_maps(image)
    height, width = maps.grey.shape
    polygons = region_boxes(regions, (height, width))
    taken = np.zeros((height, width), np.uint8)
    for polygon in polygons:
        cv2.fillPoly(taken, [np.round(polygon).astype(np.int32)], 1)
    rows = np.full((len(polygons), len(BASE_NAMES)), np.nan, np.float32)
    # The maps each mask is read from, stacked (<= 4 channels): one cv2.mean per mask, not one per map and mask.
    ela_stack = cv2.merge([maps.ela[quality] for quality in ELA_QUALITIES])
    noise_stack = cv2.merge([maps.residual, maps.gradient])
    thumbnails: list[np.ndarray | None] = []
    mean_colours = np.full((len(polygons), 2, 3), np.nan)  # (ink, background) BGR, converted to Lab at the end
    for index, polygon in enumerate(polygons):
        x1, y1, x2, y2 = pixel_box(polygon)
        box_h, box_w = y2 - y1 + 1, x2 - x1 + 1
        if min(box_h, box_w) < MIN_SIDE:
            thumbnails.append(None)
            continue
        ring = max(2, int(round(RING_SHARE * box_h)))
        rx1, ry1, rx2, ry2 = max(0, x1 - ring), max(0, y1 - ring), min(width - 1, x2 + ring), min(height - 1, y2 + ring)
        crop = (slice(ry1, ry2 + 1), slice(rx1, rx2 + 1))
        inside = np.zeros((ry2 - ry1 + 1, rx2 - rx1 + 1), np.uint8)
        cv2.fillPoly(inside, [np.round(polygon - [rx1, ry1]).astype(np.int32)], 1)
        inside = inside.astype(bool)
        outside_ring = ~inside & (taken[crop] == 0)
        grey = maps.grey[crop]
        gradient = maps.gradient[crop]
        elas, noises = ela_stack[crop], noise_stack[crop]  # (residual, gradient)
        # Ink vs background inside the word: Otsu on the word's grey levels, ink = the minority side.
        values = grey[inside]
        if values.size < 9:
            thumbnails.append(None)
            continue
        level, _ = cv2.threshold(values.astype(np.uint8).reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        dark = grey <= level
        ink = (dark if (dark & inside).sum() <= inside.sum() / 2 else ~dark) & inside
        background = inside & ~ink
        word_gradients = gradient[inside]
        edge_level, calm_level = percentiles(word_gradients, 80, 50)
        edge = inside & (gradient >= edge_level)
        # Background well away from the ink (the residual of anti-aliased edges is not noise).
        calm_bg = background & (cv2.dilate(ink.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0)
        calm_ring = outside_ring & (gradient < calm_level + 1)
        colours = maps.bgr[crop]
        feature = {}
        for where, mask in (("edge", edge), ("bg", calm_bg), ("ring", calm_ring)):
            for quality, level in zip(ELA_QUALITIES, _means(elas, mask)):
                feature[f"ela{quality}_{where}"] = level
        feature["noise_edge"], edge_gradient, *_ = _means(noises, edge)
        feature["noise_bg"] = _means(noises, calm_bg)[0]
        feature["noise_ring"] = _means(noises, calm_ring)[0]
        box_x = maps.step_x[y1:y2 + 1, x1:min(x2, width - 2) + 1]
        box_y = maps.step_y[y1:min(y2, height - 2) + 1, x1:x2 + 1]
        feature["grid_x"], feature["grid_x_phase"] = _grid_strength(box_x, x1, axis=1)
        feature["grid_y"], feature["grid_y_phase"] = _grid_strength(box_y.T, y1, axis=1)
        contrast = abs(_mean(grey, ink) - _mean(grey, background)) if background.any() else float("nan")
        feature["contrast"] = contrast
        feature["sharpness"] = edge_gradient / (contrast + 1.0)
        feature["edge_width"] = (contrast + 1.0) / (float(word_gradients.max()) / 4.0 + 1.0)  # Sobel gain 4
        mean_colours[index] = _mean_colour(colours, ink), _mean_colour(colours, background)
        feature["log_height"] = float(np.log(box_h))
        feature["aspect"] = float(np.log(box_w / box_h))
        rows[index] = [feature.get(name, np.nan) for name in BASE_NAMES]
        word = maps.grey[y1:y2 + 1, x1:x2 + 1]
        thumb = cv2.resize(word, (TWIN_SIZE[1], TWIN_SIZE[0]), interpolation=cv2.INTER_AREA)
        thumb = thumb - thumb.mean()
        norm = float(np.linalg.norm(thumb))
        thumbnails.append(thumb / norm if norm > 1e-3 else None)
    lab = _lab(mean_colours.reshape(-1, 3)).reshape(-1, 2, 3)
    for part, where in enumerate(("ink", "bg")):
        rows[:, [BASE_NAMES.index(f"{where}_{name}") for name in "lab"]] = lab[:, part]
    rows[:, BASE_NAMES.index("twin")] = _twin_scores(thumbnails, rows[:, BASE_NAMES.index("log_height")],
                                                     rows[:, BASE_NAMES.index("aspect")])
    return rows


def _twin_scores(thumbnails: list[np.ndarray | None], log_height: np.ndarray, aspect: np.ndarray) -> np.ndarray:
    """Per word: the best correlation with another word of similar height and shape (a copy-moved
    word and its source correlate near 1; two renderings of the same word less, through noise)."""
    scores = np.zeros(len(thumbnails), np.float32)
    usable = [i for i, t in enumerate(thumbnails) if t is not None]
    if len(usable) < 2:
        return scores
    stack = np.stack([thumbnails[i].ravel() for i in usable])
    similarity = stack @ stack.T
    heights, aspects = log_height[usable], aspect[usable]
    comparable = (np.abs(heights[:, None] - heights[None]) < 0.3) & (np.abs(aspects[:, None] - aspects[None]) < 0.25)
    np.fill_diagonal(comparable, False)
    similarity = np.where(comparable, similarity, 0.0)
    scores[usable] = similarity.max(axis=1)
    return scores


def _same_line(polygons_boxes: np.ndarray) -> np.ndarray:
    """(N, N) bool: words whose vertical extents overlap by half the smaller height (a line)."""
    y1, y2 = polygons_boxes[:, 1], polygons_boxes[:, 3]
    overlap = np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None])
    smaller = np.minimum(y2 - y1, (y2 - y1)[:, None]) + 1
    line = overlap >= 0.5 * smaller
    np.fill_diagonal(line, False)
    return line


def size_peers(log_height: np.ndarray) -> np.ndarray:
    """(N,) log word heights -> (N, N) bool: the other words of about each word's height (SIZE_PEER_LOG_RATIO)."""
    log_height = np.asarray(log_height)
    peers = np.abs(log_height[:, None] - log_height[None]) < SIZE_PEER_LOG_RATIO
    np.fill_diagonal(peers, False)
    return peers


def leave_one_out_median(values: np.ndarray, peers: np.ndarray) -> np.ndarray:
    """values (N, F), peers (N, N) bool -> (N, F) median over each word's peers (NaN without peers)."""
    out = np.full(values.shape, np.nan, np.float32)
    for i in range(values.shape[0]):
        chosen = values[peers[i]]
        if len(chosen):
            out[i] = nanmedian_columns(chosen)
    return out


def median_of_others(values: np.ndarray) -> np.ndarray:
    """values (N, F) -> (N, F): per column, the median of the other words' values, NaNs left out
    (one sort instead of N medians: the others are the sorted column with the word's own value removed)."""
    count = values.shape[0]
    order = np.argsort(values, axis=0, kind="stable")  # NaN sorts last
    ordered = np.take_along_axis(values, order, axis=0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(count)[:, None], order.shape), axis=0)
    present = ~np.isnan(values)
    others = present.sum(axis=0)[None] - present  # valid values among the others
    def pick(k: np.ndarray) -> np.ndarray:
        index = np.where(present & (k >= rank), k + 1, k)  # skip the word's own value
        return np.take_along_axis(ordered, np.clip(index, 0, count - 1), axis=0)
    low, high = np.maximum(others - 1, 0) // 2, np.maximum(others, 1) // 2
    median = (pick(low) + pick(high)) / 2
    return np.where(others > 0, median, np.nan).astype(np.float32)


def word_features(image: np.ndarray, regions: Sequence[np.ndarray | Sequence[float]],
                  maps: ImageMaps | None = None) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) float32 features of the N regions of `image` (RGB uint8 (H, W, 3));
    NaN marks what could not be measured (the learner handles missing values). `maps`: the image's
    `image_maps`, when the caller has them already."""
    check_rgb(image)
    count = len(regions)
    if count == 0:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    maps = maps if maps is not None else image_maps(image)
    base = measure_words(image, regions, maps)
    column = {name: base[:, i] for i, name in enumerate(BASE_NAMES)}
    with np.errstate(all="ignore"):
        derived = [column["noise_bg"] / (column["noise_ring"] + 0.1)]
        derived += [column[f"ela{q}_bg"] / (column[f"ela{q}_ring"] + 0.1) for q in ELA_QUALITIES]
        derived += [column[f"ela{q}_edge"] / (column[f"ela{q}_bg"] + 0.1) for q in ELA_QUALITIES]
    relative = base[:, [BASE_NAMES.index(n) for n in RELATIVE]]
    median = median_of_others(relative)
    deviation = relative - median
    spread = nanmedian_columns(np.abs(relative - nanmedian_columns(relative))) + 1e-3
    z = deviation / spread
    polygons = region_boxes(regions, maps.grey.shape)
    boxes = np.array([[*p.min(0), *p.max(0)] for p in polygons], np.float32)
    line_columns = base[:, [BASE_NAMES.index(n) for n in LINE_RELATIVE]]
    line_dev = line_columns - leave_one_out_median(line_columns, _same_line(boxes))
    log_height = column["log_height"]
    size_columns = base[:, [BASE_NAMES.index(n) for n in SIZE_RELATIVE]]
    peers = size_peers(log_height)
    size_dev = size_columns - leave_one_out_median(size_columns, peers)
    image_level = np.array([
        count,
        float(maps.ela[85].mean()), float(maps.ela[70].mean()), float(maps.residual.mean()),
        _grid_strength(maps.step_x, 0, axis=1)[0],
    ], np.float32)
    seams = seam_features(*maps.seams, [pixel_box(p) for p in polygons])
    features = np.concatenate([
        base, np.stack(derived, axis=1), deviation, z, line_dev, size_dev, peers.sum(axis=1, keepdims=True),
        np.broadcast_to(image_level, (count, len(IMAGE_NAMES))), seams,
    ], axis=1).astype(np.float32)
    assert features.shape[1] == len(FEATURE_NAMES)
    return features
