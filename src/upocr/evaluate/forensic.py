"""Scores of the per-word tampering classifier (`upocr.forensics`): held-out synthetic forgeries, real
photos' genuine text, and copy-moved fields constructed from real photos.

* Synthetic (Tampered-IC13 layout): the original's pixel confusion matrix (`ConfusionMatrix(3)`, ground
  truth = the boxes drawn by `read_tampering_label`), tampered IoU and mIoU, plus word-level AUC.
  Word regions come from a finder: `gt` (the ground-truth boxes: the classifier alone) or `mask` (the
  model's text mask grouped into words: the whole pipeline).
* Real (real-dev layout): false alarms = share of genuine word-polygon pixels classified tampered
  (as `upocr.evaluate.real.score_tampering` counts them).
* Constructed copy-move (`copy_move_forgery`): one annotated field of a real photo copied over another
  field of about its height (the target first erased with Telea, as a clone tool would), saved again as
  JPEG; tampered IoU over the annotated polygons (genuine 1, the pasted field 2).

Competitors of the per-word classifier in `upocr evaluate real` (the same 0 / 1 / 2 class maps):
* `ela_anomaly_boxes`: deeptrace-ela (pip install deeptrace-ela, MIT), an error level analysis tool offered for
  documents whose numbers were changed: its anomaly boxes (ELA at JPEG 95 over mean + 3.5 standard deviations,
  cleaned, the ten strongest) filled as tampered, with its own defaults;
* `ela_word_outliers`: the classical rule an analyst applies to an ELA picture, on the words the classifier
  scores: a word is tampered when its mean error level (JPEG 95) stands out from the image's other words
  (robust z-score over `ELA_OUTLIER_Z`). It says what the learned decision adds over ELA with the same finder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from upocr.data.layouts import read_tampering_boxes, read_tampering_edits, tampering_classes, tampering_samples
from upocr.data.synth.tampering import jpeg_roundtrip
from upocr.evaluate.confusion import ConfusionMatrix
from upocr.evaluate.real import MethodScores, RealSample, annotated_classes, score_tampering
from upocr.forensics.detect import (WordTampering, classify_regions, paint_words, regions_from_text_mask,
                                    split_into_words, split_into_words_and_extents)
from upocr.forensics.features import pixel_box, region_boxes
from upocr.forensics.model import TreeEnsemble
from upocr.forensics.train import labels_from_tampered_pixels, roc_auc
from upocr.io import read_image

Finder = Callable[[np.ndarray], list]  # RGB image -> word regions


def text_mask_finder(predictor) -> Finder:
    """Regions from the model's text segmentation, grouped into words."""
    return lambda image: regions_from_text_mask(predictor.predict(image, "segmentation").mask)


def model_text_words(predictor, image: np.ndarray) -> list[np.ndarray]:
    """Regions from the model's tampering output: its text (real or tampered) blobs, split into words."""
    classes = predictor.predict(image, "tampering").classes
    count, _, stats, _ = cv2.connectedComponentsWithStats((classes > 0).astype(np.uint8), connectivity=8)
    blobs = [np.array([x, y, x + w - 1, y + h - 1], np.float32) for x, y, w, h, _ in stats[1:count]]
    return split_into_words(image, blobs)


HEIGHT_BINS = (0, 18, 26, 40, 70)  # lower edges (pixels) of the found words' height bins of `WordHeights`


@dataclass
class WordHeights:
    """A path's found words by height (each word as the classifier measured it): per bin of `HEIGHT_BINS`, the
    forged words (half their box in forged pixels, as `found_region_labels` counts) and the genuine ones (under a
    tenth), how many of each the path flagged, and the forged pixels under the bin's painted words (a pixel under
    words of two bins counts in the taller one's). On synthetic forgeries a few big words hold most of the forged
    pixels, and the decision is weakest on them (docs/tampering-log.md, session 39)."""

    # per bin: forged words, forged flagged, genuine words, genuine flagged, forged pixels under its painted words
    counts: np.ndarray = field(default_factory=lambda: np.zeros((len(HEIGHT_BINS), 5), np.int64))
    forged_pixels: int = 0  # all forged pixels of the images, found or not

    def update(self, truth: np.ndarray, decided: WordTampering) -> None:
        """Add one image: its class map `truth` (2 = forged) and the path's decisions on its words."""
        forged = truth == 2
        self.forged_pixels += int(forged.sum())
        height, width = forged.shape
        measured = decided.measured
        labels = labels_from_tampered_pixels(measured, forged)  # 1 forged, 0 genuine, -1 half of each
        painted = []  # (bin, painted extent)
        for polygon, extent, probability, label in zip(measured, decided.polygons, decided.probabilities, labels):
            x1, y1, x2, y2 = pixel_box(polygon)
            tall = min(y2, height - 1) - max(y1, 0) + 1
            if tall < 1:
                continue
            row = int(np.searchsorted(HEIGHT_BINS, tall, side="right")) - 1
            if label >= 0:  # forged words count in columns 0-1, genuine ones in 2-3
                column = 0 if label == 1 else 2
                self.counts[row, column:column + 2] += (1, int(probability > decided.threshold))
            painted.append((row, extent))
        under = np.full((height, width), len(HEIGHT_BINS), np.uint8)  # the bin whose words cover each pixel
        for row, extent in sorted(painted, key=lambda item: item[0]):  # the taller word's bin where they overlap
            cv2.fillPoly(under, [np.round(extent).astype(np.int32)], row)
        self.counts[:, 4] += np.bincount(under[forged], minlength=len(HEIGHT_BINS) + 1)[:len(HEIGHT_BINS)]

    def summary(self) -> list[dict]:
        edges = [*HEIGHT_BINS[1:], None]
        return [{"height": f"{low}-{high}" if high else f">= {low}", "forged_words": int(f), "forged_flagged": int(ff),
                 "genuine_words": int(g), "genuine_flagged": int(gf),
                 "forged_pixel_share": pixels / self.forged_pixels if self.forged_pixels else float("nan")}
                for low, high, (f, ff, g, gf, pixels) in zip(HEIGHT_BINS, edges, self.counts)]


BIG_FORGERY = HEIGHT_BINS[3]  # px: a forged box this tall or taller counts as big in `ForgedBoxes` (40)


def edit_facets(word: dict, record: dict) -> list[tuple[str, str]]:
    """The (facet, value) groups a forged box belongs to, from its record and its file's (`read_tampering_edits`)."""
    facets = [("kind", word["kind"])]
    if word["kind"] == "retype":
        facets += [("retype: old word", word["erased"]), ("retype: font", word["font"])]
        if "blur" in word:  # (absent where the new word fell outside the image)
            facets += [("retype: blur against the scene's", word["blur"]),
                       ("retype: the scene's blur", word.get("scene_blur", "not recorded")),
                       ("retype: own noise", "added" if word["noise"] else "none")]
    else:
        facets.append(("paste: edge", word["edge"]))
    facets += [("file: after the edits", "re-processed" if record["after_edits"] else "left alone"),
               ("file: saved", "lossless" if record["saved"] == "lossless" else "jpeg")]
    return facets


@dataclass
class ForgedBoxes:
    """The forged boxes of synthetic forgeries by what was done to them (the records `upocr synth` writes beside the
    boxes) and by height: per group, the boxes and their forged pixels, how many of those pixels a path painted
    tampered, and the pixels of the boxes it painted any of (so a miss splits into boxes never flagged and the part
    of a flagged box left unpainted). Says which forgeries a detector misses: e.g. big retyped words made blurrier
    than the scene (docs/tampering-log.md, session 40)."""

    # (facet, value) -> [boxes, forged pixels, pixels painted tampered, pixels of the boxes painted at all] for boxes
    # under BIG_FORGERY px, then the same for the big ones
    groups: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    forged_pixels: int = 0  # all forged pixels of the images scored, with a record or not
    examples: int = 0  # big forged boxes the path left mostly unpainted, kept per kind for `missed_sheet`
    missed: dict[str, list[np.ndarray]] = field(default_factory=dict)  # kind -> crops, the box drawn in red

    def update(self, truth: np.ndarray, boxes: Sequence[tuple[int, int, int, int, int]], record: dict | None,
               classes: np.ndarray, image: np.ndarray | None = None) -> None:
        """Add one image: its class map `truth`, its gt boxes, their record (None: counted in the total only) and the
        path's class map `classes`; `image` (RGB): to keep crops of its missed big forgeries (`examples`)."""
        forged = truth == 2
        self.forged_pixels += int(forged.sum())
        if record is None:
            return
        unclaimed = forged.copy()  # a pixel under two forged boxes (a v1 retype grown over its neighbour) counts once
        for (x1, y1, x2, y2, label), word in zip(boxes, record["words"]):
            if label != 2 or word is None:
                continue
            inside = (slice(max(y1, 0), y2 + 1), slice(max(x1, 0), x2 + 1))
            mine = unclaimed[inside].copy()
            unclaimed[inside] = False
            pixels = int(mine.sum())
            painted = int((mine & (classes[inside] == 2)).sum())
            big = y2 - y1 + 1 >= BIG_FORGERY
            for facet in edit_facets(word, record):
                counts = self.groups.setdefault(facet, np.zeros(8, np.int64))
                counts[4 * big:4 * big + 4] += (1, pixels, painted, pixels if painted else 0)
            if self.examples and image is not None and big and painted < pixels / 2:
                self._keep_missed(image, (x1, y1, x2, y2), word)

    def _keep_missed(self, image: np.ndarray, box: tuple[int, int, int, int], word: dict) -> None:
        kind = word["kind"] + (f", {word['blur']}" if "blur" in word else "")
        kept = self.missed.setdefault(kind, [])
        if len(kept) >= self.examples:
            return
        x1, y1, x2, y2 = box
        margin = (y2 - y1 + 1) // 2
        top, left = max(0, y1 - margin), max(0, x1 - margin)
        # a copy, not ascontiguousarray: a full-width slice is already contiguous, and the box would be drawn into
        # `image` itself (and show in the next crop of the same image)
        crop = image[top:y2 + margin + 1, left:x2 + margin + 1].copy()
        cv2.rectangle(crop, (x1 - left, y1 - top), (x2 - left, y2 - top), (255, 0, 0), max(1, (y2 - y1) // 30))
        kept.append(crop)

    def missed_sheet(self, height: int = 96) -> np.ndarray | None:
        """A picture of the kept misses (forged boxes BIG_FORGERY px or taller, under half of them painted tampered): a
        column per kind of edit, titled with it, the forged box in red; None if none were kept."""
        from upocr.visualize import image_grid

        kinds = sorted(kind for kind, crops in self.missed.items() if crops)
        if not kinds:
            return None
        blank = np.full((height, height, 3), 255, np.uint8)
        rows = [[self.missed[kind][r] if r < len(self.missed[kind]) else blank for kind in kinds]
                for r in range(max(len(self.missed[kind]) for kind in kinds))]
        return image_grid(rows, kinds, height=height)

    def summary(self) -> list[dict]:
        rows = []
        for (facet, value), counts in sorted(self.groups.items()):
            boxes, pixels, painted, touched, big_boxes, big_pixels, big_painted, big_touched = (int(c) for c in counts)
            total = max(pixels + big_pixels, 1)
            share = (pixels + big_pixels) / self.forged_pixels if self.forged_pixels else float("nan")
            rows.append({"facet": facet, "value": value, "boxes": boxes, "big_boxes": big_boxes,
                         "pixel_share": share, "big_pixel_share": big_pixels / total,
                         "recall": (painted + big_painted) / total,
                         # of the group's forged pixels, those in boxes painted at all; of those, the painted share
                         "flagged_box_share": (touched + big_touched) / total,
                         "flagged_box_coverage": (painted + big_painted) / max(touched + big_touched, 1),
                         "recall_small": painted / pixels if pixels else float("nan"),
                         "recall_big": big_painted / big_pixels if big_pixels else float("nan")})
        return rows


@dataclass
class ForensicScores:
    matrix: ConfusionMatrix = field(default_factory=lambda: ConfusionMatrix(3))
    probabilities: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images: int = 0
    heights: WordHeights | None = None  # the path's own decisions by word height (`pipeline_sweep`)
    forgeries: ForgedBoxes | None = None  # its forged pixels by kind of forgery, where the set has records

    def summary(self) -> dict:
        scores = self.matrix.compute()
        probabilities = np.concatenate(self.probabilities) if self.probabilities else np.zeros(0)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0)
        summary = {
            "images": self.images, "tampered_iou": scores["tampered"]["iou"], "real_iou": scores["real"]["iou"],
            "miou": scores["miou"], "tampered_precision": scores["tampered"]["precision"],
            "tampered_recall": scores["tampered"]["recall"],
            "word_auc": roc_auc(probabilities, labels) if labels.size else float("nan"),
            "seconds_per_image": float(np.mean(self.seconds)) if self.seconds else float("nan"),
        }
        if self.heights is not None:
            summary["by_height"] = self.heights.summary()
        if self.forgeries is not None:
            summary["by_edit"] = self.forgeries.summary()
        return summary


def synthetic_scores(root: str | Path, split: str, classifier: TreeEnsemble, *, threshold: float | None = None,
                     finder: Finder | None = None, limit: int | None = None, progress: bool = True) -> ForensicScores:
    """Score `split` of a Tampered-IC13-layout root; `finder` None = the ground-truth boxes."""
    scores = ForensicScores()
    samples = tampering_samples(root, split)[:limit] if limit else tampering_samples(root, split)
    for sample in tqdm(samples, desc=f"tampering {Path(root).name}", unit="image", disable=not progress):
        image = read_image(sample.image)
        boxes = read_tampering_boxes(sample.gt)
        gt = tampering_classes(boxes, image.shape[:2])
        started = time.perf_counter()
        regions = [box[:4] for box in boxes] if finder is None else finder(image)
        result = classify_regions(image, regions, threshold=threshold, classifier=classifier)
        scores.seconds.append(time.perf_counter() - started)
        scores.matrix.update(gt, result.classes)
        scores.images += 1
        if finder is None:
            scores.probabilities.append(result.probabilities)
            scores.labels.append(np.array([box[4] == 2 for box in boxes], np.int8))
    return scores


def real_false_alarms(samples: Sequence[RealSample], classifier: TreeEnsemble, *, threshold: float | None = None,
                      finder: Finder | None = None, progress: bool = True) -> tuple[MethodScores, int, int]:
    """Genuine-text false alarms on real photos; `finder` None = the annotated polygons. Returns the
    pixel scores and, with the annotated polygons, (genuine words flagged, genuine words)."""
    scores = MethodScores()
    words_flagged = words = 0
    for sample in tqdm(samples, desc="real images", unit="image", disable=not progress):
        if not sample.words:
            continue
        image = read_image(sample.image)
        started = time.perf_counter()
        regions = list(sample.words) if finder is None else finder(image)
        result = classify_regions(image, regions, threshold=threshold, classifier=classifier)
        scores.seconds.append(time.perf_counter() - started)
        score_tampering(scores, sample, result.classes)
        if finder is None:
            genuine = ~np.array(sample.tampered, bool)
            words += int(genuine.sum())
            words_flagged += int((result.probabilities[genuine] > result.threshold).sum())
    return scores, words_flagged, words


def copy_move_forgery(image: np.ndarray, words: Sequence[np.ndarray], rng: np.random.Generator,
                      ) -> tuple[np.ndarray, list[np.ndarray], list[bool]] | None:
    """Copy one field over another of about its height; (forged image, polygons, tampered flags) or None
    when no pair of fields fits. The covered field leaves the annotation; the pasted one is tampered."""
    height, width = image.shape[:2]
    boxes = [pixel_box(w) for w in words]
    heights = np.array([b[3] - b[1] + 1 for b in boxes])
    pairs = [(a, b) for a in range(len(words)) for b in range(len(words))
             if a != b and heights[a] >= 6 and abs(heights[a] - heights[b]) <= 0.25 * heights[b]]
    if not pairs:
        return None
    source, target = pairs[int(rng.integers(len(pairs)))]
    sx1, sy1, sx2, sy2 = boxes[source]
    tx1, ty1, tx2, ty2 = boxes[target]
    patch = image[max(sy1, 0):sy2 + 1, max(sx1, 0):sx2 + 1]
    ph, pw = patch.shape[:2]
    top = int(np.clip(round((ty1 + ty2) / 2 - ph / 2), 0, height - ph))
    left = int(np.clip(tx1, 0, width - pw))
    forged = erased_field(image, words[target])
    forged[top:top + ph, left:left + pw] = patch
    pasted = np.array([[left, top], [left + pw - 1, top], [left + pw - 1, top + ph - 1], [left, top + ph - 1]], np.float32)
    forged = jpeg_roundtrip(forged, int(rng.integers(75, 96)))
    return (forged, *annotation_after(words, target, pasted))


def erased_field(image: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """A copy of `image` with one field erased as a clone tool would: its polygon, grown 2 px, filled by Telea."""
    erase = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(erase, [np.round(polygon).astype(np.int32)], 255)
    erase = cv2.dilate(erase, np.ones((5, 5), np.uint8))
    return cv2.inpaint(np.ascontiguousarray(image), erase, 3, cv2.INPAINT_TELEA)


def annotation_after(words: Sequence[np.ndarray], target: int, forged: np.ndarray) -> tuple[list[np.ndarray], list[bool]]:
    """(polygons, tampered flags) after an edit of field `target`: it leaves the annotation, the `forged`
    polygon joins it as tampered (fields the forged one overlaps lose those pixels)."""
    kept = [w for i, w in enumerate(words) if i != target]
    return [*kept, forged], [False] * len(kept) + [True]


@dataclass
class CopyMoveScores:
    matrix: ConfusionMatrix = field(default_factory=lambda: ConfusionMatrix(3))
    forgeries: int = 0
    pasted_probabilities: list[float] = field(default_factory=list)
    genuine_probabilities: list[float] = field(default_factory=list)
    threshold: float = float("nan")

    def summary(self) -> dict:
        scores = self.matrix.compute()
        pasted = np.array(self.pasted_probabilities)
        genuine = np.array(self.genuine_probabilities)
        return {
            "forgeries": self.forgeries, "tampered_iou": scores["tampered"]["iou"], "miou": scores["miou"],
            "pasted_fields_flagged": float((pasted > self.threshold).mean()) if pasted.size else float("nan"),
            "genuine_fields_flagged": float((genuine > self.threshold).mean()) if genuine.size else float("nan"),
            "word_auc": roc_auc(np.concatenate([pasted, genuine]),
                                np.concatenate([np.ones(pasted.size), np.zeros(genuine.size)])),
        }


def retyped_digits_forgery(image: np.ndarray, words: Sequence[np.ndarray], texts: Sequence[str], rng: np.random.Generator,
                           ) -> tuple[np.ndarray, list[np.ndarray], list[bool]] | None:
    """Re-type the digits of one annotated field (an amount, a date): the field erased with Telea, its text
    drawn again with every digit changed, in one of the synthetic test split's fonts, in the field's ink colour
    and at its ink's height, then the file re-saved as JPEG. (forged image, polygons, tampered flags) or None
    when no field holds digits."""
    from PIL import Image, ImageDraw

    from upocr.data.synth.fonts import fonts_for_split, load_font

    height, width = image.shape[:2]
    boxes = [pixel_box(w) for w in words]
    numeric = [i for i, (text, (x1, y1, x2, y2)) in enumerate(zip(texts, boxes))
               if any(ch.isdigit() for ch in text) and y2 - y1 >= 8 and x2 - x1 > y2 - y1]
    if not numeric:
        return None
    target = numeric[int(rng.integers(len(numeric)))]
    x1, y1, x2, y2 = np.clip(boxes[target], 0, [width - 1, height - 1, width - 1, height - 1])
    crop = image[y1:y2 + 1, x1:x2 + 1]
    _, dark = cv2.threshold(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    ink = dark.astype(bool) if dark.sum() <= dark.size / 2 else ~dark.astype(bool)
    rows, columns = np.nonzero(ink)
    if rows.size == 0:
        return None
    pixels = crop[ink].astype(np.float32)
    strength = np.abs(pixels.mean(axis=1) - crop[~ink].astype(np.float32).mean()) if (~ink).any() else pixels.mean(axis=1)
    colour = tuple(int(c) for c in pixels[strength >= np.median(strength)].mean(axis=0))  # the strokes' cores, not their rims
    text = "".join(str((int(ch) + int(rng.integers(1, 10))) % 10) if ch.isdigit() else ch for ch in texts[target])
    font_path = fonts_for_split("test")[int(rng.integers(len(fonts_for_split("test"))))].path
    ink_height = int(rows.max() - rows.min() + 1)
    size = max(6, ink_height)
    for _ in range(3):  # fit the drawn text's ink height to the field's
        left, top, right, bottom = load_font(font_path, size).getbbox(text)
        size = max(6, int(round(size * ink_height / max(1, bottom - top))))
    font = load_font(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    forged = erased_field(image, words[target])
    origin = (int(x1 + columns.min() - left), int(y1 + rows.min() - top))
    canvas = Image.fromarray(forged)
    ImageDraw.Draw(canvas).text(origin, text, font=font, fill=colour)
    forged = jpeg_roundtrip(np.asarray(canvas), int(rng.integers(75, 96)))
    dx1, dy1 = origin[0] + left, origin[1] + top
    dx2, dy2 = origin[0] + right, origin[1] + bottom
    bx1, by1 = max(0, min(x1, dx1)), max(0, min(y1, dy1))
    bx2, by2 = min(width - 1, max(x2, dx2)), min(height - 1, max(y2, dy2))
    retyped = np.array([[bx1, by1], [bx2, by1], [bx2, by2], [bx1, by2]], np.float32)
    return (forged, *annotation_after(words, target, retyped))


Forgery = Callable[[np.ndarray, RealSample, np.random.Generator], "tuple[np.ndarray, list[np.ndarray], list[bool]] | None"]
# The forgeries `upocr evaluate real` constructs from real images: name -> how.
FORGERIES: dict[str, Forgery] = {
    "copy-move": lambda image, sample, rng: copy_move_forgery(image, sample.words, rng),
    "retyped digits": lambda image, sample, rng: retyped_digits_forgery(image, sample.words, sample.texts, rng),
}


def constructed_forgeries(samples: Sequence[RealSample], *, trials: int, seed: int = 0, progress: bool = True,
                          kind: str = "copy-move") -> Iterator[tuple[RealSample, np.ndarray]]:
    """Up to `trials` forgeries of `kind` (`FORGERIES`) per real image with 2+ words: (the sample with the edited
    annotation, the forged word `"tampered"`, and the forged image). Reproducible: each draws from (seed, image, trial)."""
    forge = FORGERIES[kind]
    for index, sample in enumerate(tqdm(samples, desc=kind, unit="image", disable=not progress)):
        if len(sample.words) < 2:
            continue
        try:
            image = read_image(sample.image)
        except (OSError, ValueError):
            continue  # the benchmark reports unreadable images once, with the other methods
        for trial in range(trials):
            made = forge(image, sample, np.random.default_rng([seed, index, trial]))
            if made is None:
                break
            forged, polygons, tampered = made
            yield replace(sample, words=tuple(polygons), tampered=tuple(tampered), ignored=(), texts=()), forged


# --------------------------------------------------------------------------------------------
# Competitors (`upocr evaluate real`)
# --------------------------------------------------------------------------------------------

ELA_QUALITY = 95  # the JPEG quality both ELA competitors re-save at (deeptrace-ela's default)
ELA_OUTLIER_Z = 3.5  # a word is an outlier this many robust standard deviations above the image's median word
ELA_MIN_WORDS = 3  # fewer words: no median to stand out from, nothing flagged
ELA_MIN_SPREAD = 0.01  # grey levels: a numerical floor for the spread (a page of identical words has none)


def ela_anomaly_boxes() -> Callable[[np.ndarray], np.ndarray]:
    """deeptrace-ela's anomaly boxes (its defaults) filled 2 (tampered); it does not say where real text is."""
    try:
        from deeptrace_ela import analyze_ela
    except ImportError:
        raise ImportError("the deeptrace-ela competitor needs deeptrace-ela: pip install deeptrace-ela") from None
    from PIL import Image

    def classify(image: np.ndarray) -> np.ndarray:
        classes = np.zeros(image.shape[:2], np.uint8)
        for box in analyze_ela(Image.fromarray(image)).anomalies:
            classes[box.y:box.y + box.h, box.x:box.x + box.w] = 2
        return classes

    return classify


def ela_word_outliers(words: Callable[[np.ndarray], tuple[list[np.ndarray], list[np.ndarray]]],
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """`words`: RGB -> (word regions, extents to paint), e.g. `detector_words`. A word is tampered when its
    mean error level at JPEG `ELA_QUALITY` (grey levels, over its box) lies more than `ELA_OUTLIER_Z` robust
    standard deviations (1.4826 x the median absolute deviation) above the median of the image's words."""

    def classify(image: np.ndarray) -> np.ndarray:
        regions, extents = words(image)
        height, width = image.shape[:2]
        error = cv2.cvtColor(cv2.absdiff(image, jpeg_roundtrip(image, ELA_QUALITY)), cv2.COLOR_RGB2GRAY)
        levels = []
        for polygon in region_boxes(regions, (height, width)):
            x1, y1, x2, y2 = pixel_box(polygon)
            levels.append(float(error[y1:y2 + 1, x1:x2 + 1].mean()))
        levels = np.asarray(levels)
        tampered = np.zeros(len(levels), bool)
        if len(levels) >= ELA_MIN_WORDS:
            median = np.median(levels)
            spread = 1.4826 * np.median(np.abs(levels - median))
            tampered = levels > median + ELA_OUTLIER_Z * max(spread, ELA_MIN_SPREAD)
        return paint_words((height, width), region_boxes(extents, (height, width)), tampered)

    return classify


def detector_words(detector) -> Callable[[np.ndarray], tuple[list[np.ndarray], list[np.ndarray]]]:
    """RGB -> (words, extents): a `upocr.detector.WordDetector`'s regions split into words, as `detect-tampering
    --tampering words` finds and paints them (`split_into_words_and_extents`); e.g. `Predictor.word_detector`."""
    return lambda image: split_into_words_and_extents(image, detector.detect(image).polygons)


PICTURE_MARGIN = 2.0  # a forgery's picture reaches this many times the forged field's height around it


def constructed_forgery_picture(samples: Sequence[RealSample], methods: Mapping[str, Callable[[np.ndarray], np.ndarray]],
                                *, kinds: Sequence[str] = tuple(FORGERIES), per_kind: int = 3, seed: int = 0,
                                height: int = 160) -> np.ndarray:
    """A grid to look at: for each kind of constructed forgery its first `per_kind` forgeries (the first of each
    image, as `constructed_forgery_scores` makes them), each cut around the forged field: the forgery, the
    truth and each method's class map drawn over it (real text green, tampered red)."""
    from itertools import islice

    from upocr.tasks import Task
    from upocr.visualize import image_grid, overlay_classes

    colours = Task.TAMPERED_TEXT_DETECTION.spec.colours
    rows = []
    for kind in kinds:
        for sample, forged in islice(constructed_forgeries(samples, trials=1, seed=seed, progress=False, kind=kind),
                                     per_kind):
            field = next(word for word, tampered in zip(sample.words, sample.tampered) if tampered)
            x1, y1, x2, y2 = pixel_box(field)
            reach = max(24, int(PICTURE_MARGIN * (y2 - y1 + 1)))
            window = (slice(max(0, y1 - reach), y2 + reach + 1), slice(max(0, x1 - reach), x2 + reach + 1))
            maps = [annotated_classes(sample, forged.shape[:2]), *(method(forged) for method in methods.values())]
            rows.append([forged[window], *(overlay_classes(forged[window], classes[window], colours=colours)
                                           for classes in maps)])
    if not rows:
        raise ValueError("no forgery could be constructed from these images (each needs two words or more)")
    return image_grid(rows, ["forgery", "truth", *methods], height=height)


def constructed_forgery_scores(samples: Sequence[RealSample], methods: Mapping[str, Callable[[np.ndarray], np.ndarray]], *,
                               kind: str = "copy-move", trials: int = 2, seed: int = 0, progress: bool = True,
                               ) -> dict[str, MethodScores]:
    """Every tampering method (RGB -> 0 / 1 / 2 classes, e.g. the predictor's) on forgeries of `kind` constructed
    from the real images, scored as `upocr evaluate real` scores annotated forgeries (tampered recall and IoU,
    false alarms on the genuine words)."""
    scores = {name: MethodScores() for name in methods}
    for sample, forged in constructed_forgeries(samples, trials=trials, seed=seed, progress=progress, kind=kind):
        for name, method in methods.items():
            started = time.perf_counter()
            classes = method(forged)
            scores[name].seconds.append(time.perf_counter() - started)
            score_tampering(scores[name], sample, classes)
    return scores


def copy_move_scores(samples: Sequence[RealSample], classifier: TreeEnsemble, *, threshold: float | None = None,
                     trials: int = 5, seed: int = 0, progress: bool = True) -> CopyMoveScores:
    """`trials` constructed copy-moves per real image, scored over the annotated polygons (oracle finder)."""
    scores = CopyMoveScores(threshold=classifier.threshold_probability if threshold is None else float(threshold))
    for sample, forged in constructed_forgeries(samples, trials=trials, seed=seed, progress=progress):
        gt = annotated_classes(sample, forged.shape[:2])  # the truth `score_tampering` scores against
        result = classify_regions(forged, list(sample.words), threshold=scores.threshold, classifier=classifier)
        scores.matrix.update(gt, result.classes)
        scores.forgeries += 1
        for probability, flag in zip(result.probabilities, sample.tampered):
            (scores.pasted_probabilities if flag else scores.genuine_probabilities).append(float(probability))
    return scores


def pipeline_sweep(root: str | Path, split: str, predictor, thresholds: Sequence[float] = (), *,
                   limit: int | None = None, missed_examples: int = 0,
                   progress: bool = True) -> dict[float | None, ForensicScores]:
    """The whole `detect-tampering` path (`predictor.predict(image, "tampering")`, e.g. with
    `Predictor(tampering="words")`) on a Tampered-IC13-layout split. Under None: the predictor's own class maps;
    under each of `thresholds`: its words decided again at that threshold (`WordTampering.at_threshold`), from the
    same pass, so an operating curve costs one run of the path (a predictor without per-word decisions, e.g.
    `tampering="model"`, has only None). With per-word decisions the None row also has them by word height
    (`ForensicScores.heights`); where the set has `upocr synth`'s records, it has its forged pixels by kind of
    forgery (`ForensicScores.forgeries`, keeping `missed_examples` crops of big misses per kind)."""
    sweep: dict[float | None, ForensicScores] = {None: ForensicScores()}
    samples = tampering_samples(root, split)[:limit] if limit else tampering_samples(root, split)
    if any(sample.edits is not None for sample in samples):
        sweep[None].forgeries = ForgedBoxes(examples=missed_examples)
    for sample in tqdm(samples, desc=f"pipeline {Path(root).name}", unit="image", disable=not progress):
        image = read_image(sample.image)
        started = time.perf_counter()
        prediction = predictor.predict(image, "tampering")
        sweep[None].seconds.append(time.perf_counter() - started)
        boxes = read_tampering_boxes(sample.gt)
        truth = tampering_classes(boxes, image.shape[:2])
        if prediction.word_tampering is not None:
            sweep[None].heights = sweep[None].heights or WordHeights()
            sweep[None].heights.update(truth, prediction.word_tampering)
        if sweep[None].forgeries is not None:
            record = read_tampering_edits(sample.edits, len(boxes)) if sample.edits is not None else None
            sweep[None].forgeries.update(truth, boxes, record, prediction.classes, image)
        for threshold, classes in _decisions(prediction, thresholds):
            scores = sweep.setdefault(threshold, ForensicScores())
            scores.matrix.update(truth, classes)
            scores.images += 1
    return sweep


def pipeline_scores(root: str | Path, split: str, predictor, *, limit: int | None = None,
                    progress: bool = True) -> ForensicScores:
    """The predictor's own decisions of `pipeline_sweep`."""
    return pipeline_sweep(root, split, predictor, limit=limit, progress=progress)[None]


def pipeline_false_alarm_sweep(samples: Sequence[RealSample], predictor, thresholds: Sequence[float] = (), *,
                               progress: bool = True) -> dict[float | None, MethodScores]:
    """Genuine-text false alarms of the whole `detect-tampering` path on real photos: under None the predictor's
    own class maps, under each of `thresholds` its words repainted at that threshold (as `pipeline_sweep`)."""
    sweep: dict[float | None, MethodScores] = {None: MethodScores()}
    for sample in tqdm(samples, desc="pipeline real", unit="image", disable=not progress):
        if sample.words:
            image = read_image(sample.image)
            started = time.perf_counter()
            prediction = predictor.predict(image, "tampering")
            sweep[None].seconds.append(time.perf_counter() - started)
            for threshold, classes in _decisions(prediction, thresholds):
                score_tampering(sweep.setdefault(threshold, MethodScores()), sample, classes)
    return sweep


def pipeline_false_alarms(samples: Sequence[RealSample], predictor, *, progress: bool = True) -> MethodScores:
    """The predictor's own decisions of `pipeline_false_alarm_sweep`."""
    return pipeline_false_alarm_sweep(samples, predictor, progress=progress)[None]


def _decisions(prediction, thresholds: Sequence[float]) -> Iterator[tuple[float | None, np.ndarray]]:
    """(None, the prediction's class map), then (threshold, its words' class map at it) for each threshold."""
    yield None, prediction.classes
    if prediction.word_tampering is not None:
        for threshold in thresholds:
            yield float(threshold), prediction.word_tampering.at_threshold(threshold).classes
