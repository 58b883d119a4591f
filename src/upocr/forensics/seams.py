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

All words are searched at once: each side of each box is a "job" (the rows it reads, the candidate seams),
and jobs with the same number of candidates are read from the planes in one gather.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import cv2
import numpy as np

from upocr.forensics.robust import nanmedian_columns

STRIP = 3  # pixels on each side of a candidate seam
SEARCH = (-0.15, 0.5)  # offsets searched, in word heights from each side (negative: inside the box)
ROWS = 64  # at most this many of a side's rows are read, evenly spaced: a median over more says little more
MIN_QUIET_SHARE = 0.25  # a candidate needs this share of its rows (and 3) away from glyph edges
CALM_GRADIENT = (4.0, 2.0)  # a pixel is calm below a * noise + b (gradient of the lightly smoothed luminance)
TIE = 1e-3  # steps this close count as equal, and of equal steps the one nearest the box wins (a stable choice)
VIEWS = ("intensity", "ela")
# (plane whose step is searched, two planes read at the same offset, texture plane) per view, as indices
# of `seam_planes`: 0 luminance, 1 Cr, 2 Cb, 3 texture, 4 ela85, 5 ela70, 6 ela95.
VIEW_PLANES = {"intensity": (0, (1, 2), 3), "ela": (4, (5, 6), 3)}
STATS = ("min", "median", "max", "signed", "sign_agreement", "second", "second_min", "texture", "texture_max",
         "offset", "offset_sd", "texture_signed")
BASE_SEAM_NAMES = tuple(f"seam_{view}_{stat}" for view in VIEWS for stat in STATS)
SEAM_NAMES = (*BASE_SEAM_NAMES, *(f"{name}_dev" for name in BASE_SEAM_NAMES))

Planes = tuple[np.ndarray, ...]


def seam_planes(grey: np.ndarray, bgr: np.ndarray, ela: dict[int, np.ndarray]) -> tuple[Planes, np.ndarray]:
    """(seven float32 (H, W) planes: luminance, Cr and Cb in units of the image's noise, texture, log error
    levels at 85, 70 and 95; calm: bool (H, W), True away from glyph edges) of an image: its luminance `grey`
    (float32), colour `bgr` (uint8) and luminance error levels `ela` (quality -> map), as `features.image_maps`
    holds. Kept apart, not stacked: the search gathers from each plane, and a stack costs a whole-image copy."""
    noise = np.float32(1.4826 * float(np.median(np.abs(np.diff(grey, axis=1)))) / np.sqrt(2) + 0.5)
    ycc = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    texture = np.log1p(cv2.blur(np.abs(grey - cv2.blur(grey, (3, 3))), (3, 3)))
    levels = [np.log1p(cv2.blur(ela[quality], (3, 3))) for quality in (85, 70, 95)]
    chroma = [ycc[..., channel].astype(np.float32) / noise for channel in (1, 2)]
    gy, gx = np.gradient(cv2.GaussianBlur(grey, (0, 0), 0.7))
    calm = np.hypot(gx, gy) < CALM_GRADIENT[0] * noise + CALM_GRADIENT[1]
    return (grey / noise, *chroma, texture, *levels), calm


def _strip_steps(values: np.ndarray) -> np.ndarray:
    """(..., L) values along a line -> (..., L - 5): the mean of 3 before each point minus the mean of 3 from it."""
    count = values.shape[-1] - 2 * STRIP + 1
    before = values[..., 0:count] + values[..., 1:count + 1] + values[..., 2:count + 2]
    after = values[..., 3:count + 3] + values[..., 4:count + 4] + values[..., 5:count + 5]
    return (before - after) / STRIP


def _median_over_rows(steps: np.ndarray) -> np.ndarray:
    """(n, rows, k) -> (n, k): the median over the rows, NaN left out."""
    n, rows, k = steps.shape
    return nanmedian_columns(steps.transpose(1, 0, 2).reshape(rows, n * k)).reshape(n, k)


def _side_jobs(boxes: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Every side of every box as a search job: which box and side, the lines it reads (first and count, across
    the side), the first candidate seam and how many (a seam at c lies between pixel c - 1 and c along the
    search), whether the search runs along x (left and right sides), and `sign`: -1 where the outside lies at
    lower coordinates (left, top), +1 where at higher, so that a seam's offset outward is sign * (c - base)
    and its step, outside minus inside, is -sign * (mean before c - mean from c)."""
    height, width = shape
    x1, y1, x2, y2 = boxes.T
    box_height = y2 - y1 + 1
    reach_in = np.maximum(1, np.round(-SEARCH[0] * box_height)).astype(int)
    reach_out = np.maximum(3, np.round(SEARCH[1] * box_height)).astype(int)
    jobs = []
    for side in range(4):  # 0 left, 1 top, 2 right, 3 bottom
        along_x = side in (0, 2)
        line_first, line_count = (y1, box_height) if along_x else (x1, x2 - x1 + 1)
        size = width if along_x else height
        edge = (x1, y1, x2, y2)[side]
        if side in (0, 1):  # outside = lower coordinates: outward = edge - c
            first, last, sign, base = edge - reach_out, edge + reach_in, -1, edge
        else:  # outward = c - (edge + 1)
            first, last, sign, base = edge - reach_in + 1, edge + reach_out + 1, 1, edge + 1
        first, last = np.maximum(first, STRIP), np.minimum(last, size - STRIP)
        jobs.append(dict(box=np.arange(len(boxes)), side=np.full(len(boxes), side), line_first=line_first,
                         line_count=line_count, first=first, count=last - first + 1,
                         along_x=np.full(len(boxes), along_x), sign=np.full(len(boxes), sign), base=base))
    merged = {key: np.concatenate([job[key] for job in jobs]) for key in jobs[0]}
    fits = merged["count"] > 0
    return {key: value[fits] for key, value in merged.items()}


def _search(planes: Planes, calm: np.ndarray, jobs: dict[str, np.ndarray], along_x: bool, heights: np.ndarray) -> np.ndarray:
    """(views, n, 5) for n jobs with the same candidate count and direction: per view, the strongest seam's
    |step| and step on the view's main plane, its offset outward / the box's height, the |steps| of the
    view's two other planes there and the texture's step there (0 where too few rows are calm)."""
    n, count = len(jobs["first"]), int(jobs["count"][0])
    line_count = jobs["line_count"]
    reads = np.minimum(line_count, ROWS)
    rows = np.arange(int(reads.max()))
    line_ok = rows[None, :] < reads[:, None]
    lines = jobs["line_first"][:, None] + np.where(line_ok, rows[None, :] * line_count[:, None] // reads[:, None], 0)
    positions = jobs["first"][:, None] - STRIP + np.arange(count + 2 * STRIP - 1)  # (n, count + 5)

    def gather(plane: np.ndarray, at: np.ndarray) -> np.ndarray:
        """(n, rows, len) values of `plane` on each job's lines at positions `at` (n, len) along the search."""
        plane = plane if along_x else plane.T
        return plane[lines[:, :, None], at[:, None, :]]

    # A candidate is read on a row when its two strips are calm (no glyph edge in the 6 pixels).
    calm_windows = gather(calm, positions).astype(np.int8)
    quiet = sum(calm_windows[..., shift:shift + count] for shift in range(2 * STRIP)) == 2 * STRIP
    quiet &= line_ok[:, :, None]
    enough = quiet.sum(axis=1) >= np.maximum(3, MIN_QUIET_SHARE * reads)[:, None]  # (n, count)
    sign = jobs["sign"][:, None, None].astype(np.float32)  # (see `_side_jobs`)
    outward = jobs["sign"][:, None] * (jobs["first"][:, None] + np.arange(count)[None, :] - jobs["base"][:, None])
    out = np.zeros((len(VIEWS), n, 5))
    for index, view in enumerate(VIEWS):
        main, others, texture = VIEW_PLANES[view]
        steps = np.where(quiet, -sign * _strip_steps(gather(planes[main], positions)), np.nan)
        profile = np.where(enough, _median_over_rows(steps), 0.0)
        # Ties (common: medians of 8-bit strip means) go to the seam nearest the box, not to float noise.
        best = np.argmax(np.round(np.abs(profile) / TIE) - np.abs(outward) / (np.abs(outward).max() + 1), axis=1)
        chosen = np.arange(n)
        at = (jobs["first"] + best)[:, None] - STRIP + np.arange(2 * STRIP)
        there = []
        for plane in (*others, texture):
            read = np.where(quiet[chosen, :, best][..., None], -sign * _strip_steps(gather(planes[plane], at)), np.nan)
            there.append(np.where(enough[chosen, best], _median_over_rows(read)[:, 0], 0.0))
        step = profile[chosen, best]
        out[index] = np.stack([np.abs(step), step, np.abs(outward[chosen, best]) / heights,
                               np.abs(there[0]) + np.abs(there[1]), there[2]], axis=1)
    return out


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


def measure_seams(planes: Planes, calm: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """(N, len(BASE_SEAM_NAMES)) float32: each box's (x1, y1, x2, y2, inclusive pixels) seam summaries."""
    if not len(boxes):
        return np.zeros((0, len(BASE_SEAM_NAMES)), np.float32)
    tables = np.full((len(VIEWS), len(boxes), 4, 5), np.nan)  # per view, box and side: `_search`
    height, width = calm.shape
    clipped = np.round(np.asarray(boxes, np.float64).reshape(-1, 4)).astype(int)
    clipped[:, :2] = np.maximum(clipped[:, :2], 0)
    clipped[:, 2] = np.minimum(clipped[:, 2], width - 1)
    clipped[:, 3] = np.minimum(clipped[:, 3], height - 1)
    searched = np.flatnonzero((clipped[:, 3] - clipped[:, 1] + 1 >= 4) & (clipped[:, 2] - clipped[:, 0] >= 3))
    jobs = _side_jobs(clipped[searched], (height, width))
    heights = (clipped[searched, 3] - clipped[searched, 1] + 1)[jobs["box"]]
    groups = np.stack([jobs["along_x"], jobs["count"]], axis=1)
    for along_x, count in np.unique(groups, axis=0):
        members = np.flatnonzero((groups[:, 0] == along_x) & (groups[:, 1] == count))
        found = _search(planes, calm, {key: value[members] for key, value in jobs.items()}, bool(along_x), heights[members])
        tables[:, searched[jobs["box"][members]], jobs["side"][members]] = found
    return np.hstack([_summaries(view_tables) for view_tables in tables]).astype(np.float32)


def seam_features(planes: Planes, calm: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """(N, len(SEAM_NAMES)) float32: the seam summaries, then each minus the median of the image's words."""
    measured = measure_seams(planes, calm, boxes)
    if len(measured) == 0:
        return np.zeros((0, len(SEAM_NAMES)), np.float32)
    return np.hstack([measured, measured - nanmedian_columns(measured)]).astype(np.float32)
