"""Stroke-level clean-up of a text mask: edges snapped to the ink, parts the word detector confirms kept.

Two steps the text-segmentation finders (`upocr.removal.SEGMENTATION_FINDERS`) combine:

* `snap_to_ink`: the model's mask, decoded from an output made at a smaller working size or from
  overlapping tiles, misses the anti-aliased rim of each stroke (on DIBCO ink masks its precision is
  0.94, its recall 0.85). Each pixel near the mask is given to the ink or to the paper by the colours
  around it: the mean colour of the mask's pixels and of the background (pixels a few px off the mask)
  in a small window; a pixel joins the ink when it lies past the midpoint between the two along the
  ink - paper axis. The model decides *where* the text is, the image decides *which pixels*.
* `components_touching`: keeps whole connected components of a mask that touch a region (the word
  detector's polygons), so the detector drops the model's false positives (barcodes, textures, window
  frames) without cutting off the ascenders, descenders and flourishes its polygons do not enclose.
  `confirmed_strokes` applies it per image: where the words confirm nearly all of the model's strokes
  (a page the detector reads), the rest are text it missed (handwritten lines), and all are kept.

Both work in row bands with enough context rows that the result equals one pass over the whole image,
so a 9000 x 9000 photo needs a few hundred MB, not tens of GB of float maps.
"""

from __future__ import annotations

import cv2
import numpy as np

from upocr.inpaint import dilate
from upocr.tiling import BAND_ROWS

INK_WINDOW = 15  # px: the window in which the ink and paper colours are averaged (a few stroke widths)
INK_REACH = 3  # px: how far outside the model's mask a pixel may join the ink
PAPER_GAP = 3  # px: the paper colour is read at least this far from the mask (not from the stroke's rim)
# Share of the mask's pixels that the words must confirm for all strokes to be kept (`confirmed_strokes`). On
# real-dev the DIBCO pages and two receipts lie at 0.91-0.99, a receipt with a barcode at 0.77 and the scene
# photos at 0.00-0.82: any value in (0.82, 0.91] gives the same result there (docs/results.md).
TRUSTED_PAGE_SHARE = 0.85


def snap_to_ink(pixels: np.ndarray, mask: np.ndarray, *, window: int = INK_WINDOW, reach: int = INK_REACH,
                gap: int = PAPER_GAP, band_rows: int = BAND_ROWS) -> np.ndarray:
    """bool (H, W): `mask` with its edges moved to the ink of `pixels` (uint8 RGB (H, W, 3)); see the module
    docstring. Pixels farther than `reach` from the mask never join; where a window holds no ink or no
    paper the mask is kept as it is."""
    mask = np.asarray(mask, dtype=bool)
    height = mask.shape[0]
    context = window // 2 + reach + gap + 1  # rows beyond a band that its pixels' windows and dilations read
    snapped = np.zeros_like(mask)
    for top in range(0, height, band_rows):
        bottom = min(height, top + band_rows)
        first, last = max(0, top - context), min(height, bottom + context)
        rows = _snap_rows(pixels[first:last], mask[first:last], window, reach, gap)
        snapped[top:bottom] = rows[top - first : top - first + bottom - top]
    return snapped


def _snap_rows(pixels: np.ndarray, mask: np.ndarray, window: int, reach: int, gap: int) -> np.ndarray:
    if not mask.any():
        return mask
    ink = mask.astype(np.float32)
    paper = (~dilate(mask, gap)).astype(np.float32)
    size = (window, window)
    ink_count = cv2.boxFilter(ink, -1, size, normalize=False)
    paper_count = cv2.boxFilter(paper, -1, size, normalize=False)
    image = pixels.astype(np.float32)
    axis_length = np.zeros(mask.shape, np.float32)
    along = np.zeros(mask.shape, np.float32)
    for channel in range(3):  # per channel, so at most a few (H, W) float maps live at once
        values = image[:, :, channel]
        ink_mean = cv2.boxFilter(values * ink, -1, size, normalize=False) / np.maximum(ink_count, 1e-3)
        paper_mean = cv2.boxFilter(values * paper, -1, size, normalize=False) / np.maximum(paper_count, 1e-3)
        difference = ink_mean - paper_mean
        along += (values - paper_mean) * difference
        axis_length += difference * difference
    decided = (ink_count > 0.5) & (paper_count > 0.5) & (axis_length > 1e-3)
    is_ink = along > 0.5 * axis_length  # past the midpoint between paper (0) and ink (1)
    return dilate(mask, reach) & np.where(decided, is_ink, mask)


def components_touching(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """bool (H, W): the 8-connected components of `mask` that share at least one pixel with `region`."""
    mask = np.asarray(mask, dtype=bool)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[mask & region])] = True
    keep[0] = False
    return keep[labels]


def confirmed_strokes(mask: np.ndarray, region: np.ndarray, *, trusted_share: float = TRUSTED_PAGE_SHARE) -> np.ndarray:
    """bool (H, W): the strokes of `mask` that touch `region` (`components_touching`), or the whole mask when
    those hold at least `trusted_share` of its pixels: the detector then confirms the model on this image, and
    the strokes it did not box are text too (handwriting it misses), not the model's false positives."""
    mask = np.asarray(mask, dtype=bool)
    kept = components_touching(mask, region)
    return mask if kept.sum() >= trusted_share * mask.sum() else kept
