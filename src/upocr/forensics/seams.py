"""Seams: the border of a forged patch, searched for around each word.

A forger's patch has a border: a pasted rectangle brings its own background, an erased and refilled one
is a little brighter or darker, smoother or noisier, and saves differently under JPEG. That border is
where the labels of synthetic forgeries put the word's box, but a word finder's box is set in from it by
0.1-0.2 of the word's height (docs/tampering-log.md, session 21), so features read at the found box's
edge miss it. Here each side of the box is searched, from a little inside the box to half the word's
height outside it, for the strongest step across the side: the median over the side's rows (or columns)
of a 3-pixel strip outside minus a 3-pixel strip inside, with strips that touch a glyph's edge left out
(glyph edges are steps too, far larger than a seam). Steps are read in two views: the luminance in units
of the image's noise (with the two chroma channels and the local texture at the same place), and the
log error levels at JPEG qualities 85, 70 and 95 (with the texture). Per view, twelve summaries over the
four sides; each also enters as its deviation from the median of the image's words.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import cv2
import numpy as np

from upocr.forensics.robust import nanmedian_columns

STRIP = 3  # pixels on each side of a candidate seam
SEARCH = (-0.15, 0.5)  # offsets searched, in word heights from each side (negative: inside the box)
MIN_QUIET_SHARE = 0.25  # a candidate needs this share of its rows (and 3) away from glyph edges
CALM_GRADIENT = (4.0, 2.0)  # a pixel is calm below a * noise + b (gradient of the lightly smoothed luminance)
VIEWS = ("intensity", "ela")
# (plane whose step is searched, two planes read at the same offset, texture plane) per view, as indices
# of `seam_planes`: 0 luminance, 1 Cr, 2 Cb, 3 texture, 4 ela85, 5 ela70, 6 ela95.
VIEW_PLANES = {"intensity": (0, (1, 2), 3), "ela": (4, (5, 6), 3)}
_MAINS = [VIEW_PLANES[view][0] for view in VIEWS]
_READS = [[*others, texture] for _, others, texture in (VIEW_PLANES[view] for view in VIEWS)]
STATS = ("min", "median", "max", "signed", "sign_agreement", "second", "second_min", "texture", "texture_max",
         "offset", "offset_sd", "texture_signed")
BASE_SEAM_NAMES = tuple(f"seam_{view}_{stat}" for view in VIEWS for stat in STATS)
SEAM_NAMES = (*BASE_SEAM_NAMES, *(f"{name}_dev" for name in BASE_SEAM_NAMES))


def seam_planes(grey: np.ndarray, bgr: np.ndarray, ela: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(planes (7, H, W) float32: luminance, Cr and Cb in units of the image's noise, texture, error levels at
    85, 70 and 95; calm (H, W) float32, 1 away from glyph edges) of an image: its luminance `grey` (float32),
    colour `bgr` (uint8) and luminance error levels `ela` (quality -> map), as `features.image_maps` holds."""
    noise = 1.4826 * float(np.median(np.abs(np.diff(grey, axis=1)))) / np.sqrt(2) + 0.5
    ycc = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    texture = np.log1p(cv2.blur(np.abs(grey - cv2.blur(grey, (3, 3))), (3, 3)))
    levels = [np.log1p(cv2.blur(ela[quality], (3, 3))) for quality in (85, 70, 95)]
    planes = np.stack([grey / noise, ycc[..., 1] / noise, ycc[..., 2] / noise, texture, *levels]).astype(np.float32, copy=False)
    gy, gx = np.gradient(cv2.GaussianBlur(grey, (0, 0), 0.7))
    calm = (np.hypot(gx, gy) < CALM_GRADIENT[0] * noise + CALM_GRADIENT[1]).astype(np.float32)
    return planes, calm


def _side_seams(planes: np.ndarray, calm: np.ndarray, box: tuple[int, int, int, int], side: int) -> np.ndarray | None:
    """One side (0 left, 1 top, 2 right, 3 bottom) of `box`, per view (views, 5): the strongest seam's |step|
    and step (outside minus inside, median over the side's rows away from glyph edges) on the view's main
    plane, its offset outward / the box's height, the |steps| of the view's two other planes there, and the
    texture's step there. None when no candidate seam fits in the image."""
    x1, y1, x2, y2 = box
    height = y2 - y1 + 1
    reach_in, reach_out = max(1, round(-SEARCH[0] * height)), max(3, round(SEARCH[1] * height))
    if side in (1, 3):  # horizontal seams: work on the transposed image, so rows become columns
        planes, calm = planes.transpose(0, 2, 1), calm.T
        x1, y1, x2, y2 = y1, x1, y2, x2
    size = planes.shape[2]
    if side in (0, 1):  # outside = lower coordinates; a seam lies between column c - 1 and c
        seams = np.arange(x1 - reach_out, x1 + reach_in + 1)
        outward = x1 - seams
    else:
        seams = np.arange(x2 - reach_in, x2 + reach_out + 1) + 1
        outward = seams - (x2 + 1)
    fits = (seams - STRIP >= 0) & (seams + STRIP <= size)
    seams, outward = seams[fits], outward[fits]
    if seams.size == 0:
        return None
    start = seams.min() - STRIP
    band = planes[:, y1:y2 + 1, start:seams.max() + STRIP]
    quiet_band = calm[y1:y2 + 1, start:seams.max() + STRIP]
    total = np.concatenate([np.zeros_like(band[..., :1]), np.cumsum(band, axis=-1)], axis=-1)  # (P, rows, L + 1)
    quiet_total = np.concatenate([np.zeros_like(quiet_band[:, :1]), np.cumsum(quiet_band, axis=1)], axis=1)
    at = seams - start
    quiet = (quiet_total[:, at + STRIP] - quiet_total[:, at - STRIP]) > 2 * STRIP - 0.5  # (rows, K)
    enough = quiet.sum(axis=0) >= max(3, MIN_QUIET_SHARE * quiet.shape[0])
    outside_first = side in (0, 1)

    def steps(chosen: list[int], where: np.ndarray) -> np.ndarray:
        """(len(chosen), rows, len(where)) steps across the seams at `where` (indices into `at`)."""
        cut = total[chosen]
        before = (cut[..., at[where]] - cut[..., at[where] - STRIP]) / STRIP
        after = (cut[..., at[where] + STRIP] - cut[..., at[where]]) / STRIP
        return np.where(quiet[:, where], before - after if outside_first else after - before, np.nan)

    # The strongest seam by each view's main plane, then the view's other planes at that seam.
    rows, count = quiet.shape
    main = steps(_MAINS, np.arange(count))
    profiles = np.where(enough, nanmedian_columns(main.transpose(1, 0, 2).reshape(rows, -1)).reshape(len(VIEWS), count), 0.0)
    best = np.argmax(np.abs(profiles), axis=1)
    there = nanmedian_columns(np.concatenate([steps(planes, np.array([k]))[..., 0].T for planes, k in zip(_READS, best)], axis=1))
    there = np.where(enough[best].repeat(3), there, 0.0).reshape(len(VIEWS), 3)
    step = profiles[np.arange(len(VIEWS)), best]
    return np.stack([np.abs(step), step, np.abs(outward[best]) / height,
                     np.abs(there[:, 0]) + np.abs(there[:, 1]), there[:, 2]], axis=1)


def _summaries(tables: np.ndarray) -> np.ndarray:
    """(N, 4, 5) side tables -> (N, len(STATS)) summaries over the four sides (NaN where no side fits)."""
    size, signed, offset, second, texture = np.moveaxis(tables, -1, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: boxes with no side in the image
        columns = [np.nanmin(size, 1), np.nanmedian(size, 1), np.nanmax(size, 1), np.nanmean(signed, 1),
                   np.abs(np.nansum(np.sign(signed), 1)), np.nanmean(second, 1), np.nanmin(second, 1),
                   np.nanmean(np.abs(texture), 1), np.nanmax(np.abs(texture), 1), np.nanmean(offset, 1),
                   np.nanstd(offset, 1), np.nanmean(texture, 1)]
    out = np.stack(columns, axis=1)
    out[np.isnan(size).all(axis=1)] = np.nan
    return out


def measure_seams(planes: np.ndarray, calm: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """(N, len(BASE_SEAM_NAMES)) float32: each box's (x1, y1, x2, y2, inclusive pixels) seam summaries."""
    if not len(boxes):
        return np.zeros((0, len(BASE_SEAM_NAMES)), np.float32)
    height, width = calm.shape
    tables = np.full((len(VIEWS), len(boxes), 4, 5), np.nan)  # per view, box and side: `_side_seams`
    for index, box in enumerate(boxes):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width - 1, x2), min(height - 1, y2)
        box_height = y2 - y1 + 1
        if box_height < 4 or x2 - x1 < 3:
            continue
        for side in range(4):
            found = _side_seams(planes, calm, (x1, y1, x2, y2), side)
            if found is not None:
                tables[:, index, side] = found
    return np.hstack([_summaries(view_tables) for view_tables in tables]).astype(np.float32)


def seam_features(planes: np.ndarray, calm: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """(N, len(SEAM_NAMES)) float32: the seam summaries, then each minus the median of the image's words."""
    measured = measure_seams(planes, calm, boxes)
    if len(measured) == 0:
        return np.zeros((0, len(SEAM_NAMES)), np.float32)
    return np.hstack([measured, measured - nanmedian_columns(measured)]).astype(np.float32)
