"""The decision: word regions -> per-word tampering probabilities -> the 0 / 1 / 2 class map.

Regions come from a finder: the word detector's polygons, ground-truth boxes, or the connected
components of a text mask grouped into words (`regions_from_text_mask`, for the model's
segmentation output). `score_words` gives each region a calibrated probability; `classify_regions`
paints every region 1 (real text) or 2 (tampered text, probability above the threshold).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from upocr.forensics.context import CONTEXT_NAMES, context_features
from upocr.forensics.cnn import image_crops
from upocr.forensics.features import (FEATURE_NAMES, FEATURES_VERSION, check_rgb, image_maps, pixel_box, region_boxes,
                                     word_features)
from upocr.forensics.model import ClassifierError, TreeEnsemble, load_classifier

Region = np.ndarray | Sequence[float]  # a polygon (N, 2) or a box (x1, y1, x2, y2), inclusive pixels
MIN_WORD_HEIGHT = 4  # px: mask components lower than this are noise, not words
MIN_WORD_PIXELS = 12

_bundled: TreeEnsemble | None = None


def bundled_classifier() -> TreeEnsemble:
    """The shipped classifier (loaded once)."""
    global _bundled
    if _bundled is None:
        _bundled = load_classifier()
    return _bundled


_loaded: dict[tuple[str, int, int], TreeEnsemble] = {}  # (resolved path, mtime, size) -> classifier


def load_word_classifier(path: str | Path) -> TreeEnsemble:
    """A classifier file this version can use: readable, and trained on the features it computes
    (ClassifierError, one line naming the file, otherwise). Read once while the file is unchanged."""
    try:
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None  # load_classifier says what is wrong
    if key in _loaded:
        return _loaded[key]
    model = load_classifier(path)
    if not _computes_its_features(model):
        raise ClassifierError(f"{path}: trained on other features than this upocr computes; retrain it "
                              "with `upocr train-tampering`")
    version = model.record.get("features_version", 1)  # how they were measured (files from before it was kept: 1)
    if version != FEATURES_VERSION:
        raise ClassifierError(f"{path}: trained on features version {version}, this upocr measures version "
                              f"{FEATURES_VERSION}; retrain it with `upocr train-tampering`")
    if key is not None:
        _loaded[key] = model
    return model


def _classifier(classifier: TreeEnsemble | str | Path | None) -> TreeEnsemble:
    if classifier is None:
        return bundled_classifier()
    if isinstance(classifier, TreeEnsemble):
        return classifier
    return load_word_classifier(classifier)


def score_words(image: np.ndarray, regions: Sequence[Region], classifier: TreeEnsemble | str | Path | None = None) -> np.ndarray:
    """(N,) probability that each region of `image` (RGB uint8 (H, W, 3)) holds tampered text."""
    model = _classifier(classifier)
    if not _computes_its_features(model):
        raise ClassifierError("the classifier was trained on other features than this version computes; retrain it")
    if len(regions) == 0:
        return np.zeros(0, np.float64)
    check_rgb(image)
    maps = image_maps(image)  # read by the features and the crop CNN
    boxes = np.array([pixel_box(polygon) for polygon in region_boxes(regions, image.shape[:2])], np.float64)
    with ThreadPoolExecutor(1) as pool:
        if model.crop_net is not None:
            # The networks run in a thread while this one measures the features for the trees: torch releases the
            # GIL, and the features are mostly single-threaded Python and OpenCV calls, so the two share the cores
            # (the same values; 12-15 % less wall time on the stand-in benchmark, 2 cores).
            crops = image_crops(maps, boxes, model.crop_net.layout)
            logits = pool.submit(model.crop_net.logits, crops)
        features = word_features(image, regions, maps)
        probabilities = model.probability(features)
        if model.context is not None:
            probabilities = model.context.probability(np.hstack([features, context_features(probabilities, boxes)]))
        if model.crop_net is not None:
            probabilities = model.crop_net.blend_logits(probabilities, logits.result())
    return probabilities


def _computes_its_features(model: TreeEnsemble) -> bool:
    """Whether this version computes the features `model` (and its second look) was trained on (their names)."""
    return tuple(model.feature_names) == FEATURE_NAMES and (
        model.context is None or tuple(model.context.feature_names) == FEATURE_NAMES + CONTEXT_NAMES)


@dataclass
class WordTampering:
    """The class map and what it was made from."""

    classes: np.ndarray  # uint8 (H, W): 0 background, 1 real text, 2 tampered text
    polygons: list[np.ndarray]  # each region as painted (its extent), a polygon (N, 2) float32
    probabilities: np.ndarray  # (N,) per region
    threshold: float
    scored: list[np.ndarray] | None = None  # each region as the classifier measured it (None: as painted)

    @property
    def measured(self) -> list[np.ndarray]:
        """Each region as the classifier measured it (`scored`, or the painted polygons where they are the same)."""
        return self.polygons if self.scored is None else self.scored

    def words(self) -> list[dict]:
        """JSON-able per-word records: box and polygon (as painted), scored_box (the region the classifier
        measured: inside the painted box when the words are painted grown), probability, tampered."""
        return [{"box": _json_box(polygon), "polygon": np.round(polygon, 1).tolist(), "scored_box": _json_box(measured),
                 "probability": round(float(probability), 4), "tampered": bool(probability > self.threshold)}
                for polygon, measured, probability in zip(self.polygons, self.measured, self.probabilities)]

    def at_threshold(self, threshold: float) -> WordTampering:
        """The same words decided at another threshold: their class map painted again, nothing measured again
        (an operating curve from one scoring, `upocr.evaluate.forensic.pipeline_sweep`)."""
        classes = paint_words(self.classes.shape, self.polygons, self.probabilities > threshold)
        return replace(self, classes=classes, threshold=float(threshold))


def classify_regions(image: np.ndarray, regions: Sequence[Region], *, threshold: float | None = None,
                     classifier: TreeEnsemble | str | Path | None = None,
                     extents: Sequence[Region] | None = None) -> WordTampering:
    """Paint every region 1 (real) or 2 (tampered: probability > threshold, default the classifier's).
    `extents` (one per region): paint these instead, e.g. each word grown to the extent the labels give a
    word (`split_into_words(..., grow=True)`) while the classifier measures the word as found."""
    model = _classifier(classifier)
    threshold = model.threshold_probability if threshold is None else float(threshold)
    height, width = image.shape[:2]
    if extents is not None and len(extents) != len(regions):
        raise ValueError(f"{len(extents)} extents for {len(regions)} regions")
    measured = region_boxes(regions, (height, width))
    probabilities = score_words(image, measured, model)
    polygons = measured if extents is None else region_boxes(extents, (height, width))
    classes = paint_words((height, width), polygons, probabilities > threshold)
    return WordTampering(classes, polygons, probabilities, threshold, scored=measured)


def paint_words(shape: tuple[int, int], polygons: Sequence[np.ndarray], tampered: Sequence[bool]) -> np.ndarray:
    """The (H, W) uint8 class map: each polygon filled 2 where `tampered`, else 1 (real text); 0 elsewhere."""
    classes = np.zeros(shape, np.uint8)
    for flag in (False, True):  # tampered words on top where regions overlap
        shapes = [np.round(p).astype(np.int32) for p, t in zip(polygons, tampered) if bool(t) == flag]
        if shapes:
            cv2.fillPoly(classes, shapes, 2 if flag else 1)
    return classes


def regions_from_text_mask(mask: np.ndarray) -> list[np.ndarray]:
    """Word boxes (x1, y1, x2, y2) from a text mask: its components, joined along lines across gaps of
    about half a character height (letters -> words), tiny specks dropped."""
    mask = np.asarray(mask).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    heights = stats[1:count, cv2.CC_STAT_HEIGHT]
    keep = heights >= MIN_WORD_HEIGHT
    if not keep.any():
        return []
    letter_height = float(np.median(heights[keep]))
    gap = max(1, int(round(0.45 * letter_height)))
    joined = cv2.dilate(mask, np.ones((1, 2 * gap + 1), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    boxes = []
    for x, y, w, h, _ in stats[1:count]:
        x1, x2 = x + gap, x + w - 1 - gap  # undo the horizontal growth
        region = mask[y:y + h, max(x1, 0):x2 + 1]
        if h < MIN_WORD_HEIGHT or x2 < x1 or int(region.sum()) < MIN_WORD_PIXELS:
            continue
        boxes.append(np.array([x1, y, x2, y + h - 1], np.float32))
    return boxes


# A blank run of columns this share of the line's height (or wider) separates words. Measured on held-out
# synthetic forgeries through the word detector (docs/tampering.md): 0.1 / 0.15 / 0.2 / 0.25 / 0.3 / 0.4
# gave v1 tampered IoU 0.203 / 0.272 / 0.281 / 0.295 / 0.277 / 0.237 (the detector's quads are padded, so a
# space between words is about a quarter of their height).
WORD_GAP_SHARE = 0.25
# Each word grows by these shares of its line's height along the line (each end) and across it (each side).
# The detector's regions are tighter than a word's box as the labels draw it (the font's box of the drawn
# word): on synthetic training-split forgeries (seeds 900 / 901, never the held-out ones) a detector word
# matched to its label sat 0.16-0.18 x the height inside it at each end and 0.06-0.09 x above and below.
# Grown, the painted words cover the label's pixels: held-out tampered IoU through the detector v1 0.296 -> 0.337,
# real IoU 0.600 -> 0.650 (docs/tampering.md). The classifier still measures the word as found: measured on the
# grown boxes it flagged more genuine text of real photos (real-dev 0.43 % -> 1.37 % of its pixels).
WORD_GROWTH_ALONG = 0.17
WORD_GROWTH_ACROSS = 0.08


def split_into_words(image: np.ndarray, regions: Sequence[Region], *, grow: bool = False) -> list[np.ndarray]:
    """The word boxes of `split_into_words_and_extents`: as found, or grown (`grow`)."""
    words, extents = split_into_words_and_extents(image, regions)
    return extents if grow else words


def split_into_words_and_extents(image: np.ndarray, regions: Sequence[Region]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Line regions (a detector's quads often hold a whole line) -> word boxes (x1, y1, x2, y2).

    Each region's minimum-area rectangle is turned upright (an affine warp, so tilted and vertical lines
    split along their own direction), its ink found by Otsu (the minority side), and cut at blank column
    runs at least WORD_GAP_SHARE of the line's height wide; each piece goes back to the image as the
    axis-aligned box of its rotated rectangle (the convention of the tampering labels). A forged word is
    judged against its neighbours only when it is a region of its own. Returns (words, extents): each word
    as found, and grown by WORD_GROWTH_ALONG / WORD_GROWTH_ACROSS of its line's height and clipped to the
    image (the word's extent as the labels draw it), in one pass over the lines."""
    height, width = image.shape[:2]
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    words: list[np.ndarray] = []
    extents: list[np.ndarray] = []
    for polygon in region_boxes(regions, (height, width)):
        corners = cv2.boxPoints(cv2.minAreaRect(polygon))
        if np.linalg.norm(corners[1] - corners[0]) < np.linalg.norm(corners[2] - corners[1]):
            corners = np.roll(corners, -1, axis=0)  # corners[0] -> corners[1] is the line's long side
        if corners[1][0] < corners[0][0] or corners[1][0] == corners[0][0] and corners[1][1] < corners[0][1]:
            corners = np.roll(corners, 2, axis=0)  # ... and runs left to right (top to bottom): words in order
        length = int(round(np.linalg.norm(corners[1] - corners[0])))
        line_height = int(round(np.linalg.norm(corners[2] - corners[1])))
        if line_height < MIN_WORD_HEIGHT or length <= line_height:
            words.append(_box_of(polygon))
            extents.append(words[-1])
            continue
        upright = cv2.getAffineTransform(corners[:3], np.float32([[0, 0], [length - 1, 0], [length - 1, line_height - 1]]))
        crop = cv2.warpAffine(grey, upright, (length, line_height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        back = cv2.invertAffineTransform(upright)
        along, across = WORD_GROWTH_ALONG * line_height, WORD_GROWTH_ACROSS * line_height
        for left, right in _word_columns(crop):
            words.append(_image_box(back, left, right, 0, line_height - 1, (height, width)))
            extents.append(_image_box(back, left - along, right + along, -across, line_height - 1 + across, (height, width)))
    return words, extents


def _image_box(back: np.ndarray, left: float, right: float, top: float, bottom: float,
               shape: tuple[int, int]) -> np.ndarray:
    """The image-space box (x1, y1, x2, y2, clipped to `shape`) of an upright line crop's rectangle, mapped
    back by the affine `back`."""
    piece = np.float32([[left, top], [right, top], [right, bottom], [left, bottom]])
    x1, y1, x2, y2 = _box_of(piece @ back[:, :2].T + back[:, 2])
    return np.float32([max(x1, 0), max(y1, 0), min(x2, shape[1] - 1), min(y2, shape[0] - 1)])


def _word_columns(crop: np.ndarray) -> list[tuple[int, int]]:
    """Column ranges [left, right] of the words of an upright grey line crop (see `split_into_words`)."""
    line_height, length = crop.shape
    _, dark = cv2.threshold(crop, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    ink = dark if dark.sum() <= dark.size / 2 else 1 - dark
    # A column is blank when no ink crosses it; stray pixels of the neighbouring lines at the crop's top
    # and bottom edges should not bridge a gap.
    blank = ink[line_height // 8 : line_height - line_height // 8].sum(axis=0) <= 0
    gap = max(2, int(round(WORD_GAP_SHARE * line_height)))
    start, runs = None, []
    for x, is_blank in enumerate(np.append(blank, False)):
        if is_blank and start is None:
            start = x
        elif not is_blank and start is not None:
            if x - start >= gap and start > 0 and x < length:  # blank margins at the ends stay with their word
                runs.append((start, x))
            start = None
    pieces, left = [], 0
    for run_start, run_end in runs:
        if run_start > left:
            pieces.append((left, run_start - 1))
        left = run_end
    if left < length:
        pieces.append((left, length - 1))
    # Pieces keep the blank margins they have (the quad's padding at the ends): shrinking them to their ink
    # lost pixel IoU against word boxes.
    return [(a, b) for a, b in pieces if ink[:, a : b + 1].any()]


def _box_of(points: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) float32: the axis-aligned box of a polygon's points."""
    return np.array([*points.min(axis=0), *points.max(axis=0)], np.float32)


def _json_box(points: np.ndarray) -> list[int]:
    """`_box_of` rounded to whole pixels, as the word records give it (`features.pixel_box` floors and ceils for slicing)."""
    return [int(round(float(v))) for v in _box_of(points)]


def detect_tampered_words(image: np.ndarray, *, regions: Sequence[Region] | None = None, text_mask: np.ndarray | None = None,
                          threshold: float | None = None, classifier: TreeEnsemble | str | Path | None = None,
                          extents: Sequence[Region] | None = None) -> WordTampering:
    """What the predictor calls: word `regions` (a finder's polygons or boxes) or, without them, a
    `text_mask` (e.g. the model's segmentation mask) grouped into words -> class map + per-word scores
    (`extents`: what to paint per region, see `classify_regions`)."""
    if regions is None:
        if text_mask is None:
            raise ValueError("give the word regions or a text mask")
        regions = regions_from_text_mask(text_mask)
    return classify_regions(image, regions, threshold=threshold, classifier=classifier, extents=extents)
