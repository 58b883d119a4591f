"""Real-image benchmark: the model and the pipelines a user could run instead, on real photographs.

Synthetic test sets say whether training worked; they do not say whether a user's photo comes out
right. This module scores methods on folders in the real-dev layout (an image `NAME.jpg|png|jpeg` and a
sidecar `NAME.json` with word `polygons`, optional `label` = text-free image, optional `mask` +
`mask_type`, see ../shared/real-dev/README.md), with the same code for every method:

* **removal** (every image with annotations): PSNR / MSSIM against the text-free `label` where there is
  one (full resolution, the papers' formulas); **erasure** = the share of annotated words an OCR
  detector still finds after removal (the detection-based metric of scene-text-removal papers, lower
  is better; a word is found when a detected box overlaps its polygon with IoU >= `FOUND_IOU`);
  **change outside** = mean absolute change (grey levels) outside the grown word polygons, for images
  whose annotation is complete (a method should leave those pixels alone).
* **segmentation**: fgIoU / P / R / F over ink masks (`mask_type` "stroke", set-level as TextSeg);
  on box-annotated images, proxies: **box precision** = the share of predicted text pixels inside the
  grown polygons (complete annotations only), **box recall** = the share of words with at least
  `BOX_HIT_SHARE` of their polygon predicted as text.
* **tampering** (every image with word polygons): **false alarms** = the share of the pixels of genuine
  words (polygons without `"tampered": true`) classified as tampered text; where polygons are marked
  `"tampered": true`, **tampered recall** = the share of their pixels classified as tampered.

Oracle rows (they read the annotations: upper references that say where a method loses, not methods):
"annotated words + Telea" fills every annotated polygon as detector + Telea fills its boxes (a perfect
detector); "METHOD, inside the words" keeps a method's result inside the grown polygons and the input
outside, i.e. the method without its false positives. On real-dev the two split the model's removal gap
into false positives and mask shape (docs/results.md).

Competitors: doing nothing; an OCR detector's rectangles filled by OpenCV Telea (by default PP-OCRv4's
DB detector in box mode, the network RapidOCR ships, run by `upocr.detector`; RapidOCR itself with
`--detector rapidocr` where it is installed); every removal pipeline of `upocr.removal` (the word
detector's polygons + Telea among them); Otsu and Sauvola masks. The detector is also the erasure judge,
so "detector + Telea" is measured by the detector it was built from: an optimistic number for it, stated
in the report (the polygon pipelines share its network too).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from upocr.evaluate.baselines import detected_word_boxes
from upocr.evaluate.confusion import ConfusionMatrix, segmentation_scores
from upocr.evaluate.removal import RemovalMetrics
from upocr.inpaint import dilate, telea_inpaint
from upocr.io import IMAGE_SUFFIXES, read_image

FOUND_IOU = 0.5  # a detected box finds a word when their IoU reaches this (ICDAR's criterion)
BOX_HIT_SHARE = 0.05  # a word counts as segmented when this share of its polygon is predicted text
POLYGON_GROWTH = 0.01  # polygons grow by this share of the image diagonal for "outside" (halos, JPEG)
DETECTOR_FILL_GROWTH = 3  # px: detector boxes grow before Telea fills them (anti-aliased edges)
ORACLE_TAG = " (oracle: reads the annotations)"
CONSTRUCTED_TITLES = {  # per kind of constructed forgery (`upocr.evaluate.forensic.FORGERIES`)
    "copy-move": "copy-moves constructed from the real images: one field pasted over another, re-saved as JPEG",
    "retyped digits": "re-typed digits constructed from the real images: a field with digits erased and drawn "
                      "again with other digits in another font, re-saved as JPEG",
}

Detector = Callable[[np.ndarray], list[np.ndarray]]  # RGB uint8 (H, W, 3) -> word quads, each (4, 2)
RemovalMethod = Callable[[np.ndarray], np.ndarray]  # RGB -> RGB without text
SegmentationMethod = Callable[[np.ndarray], np.ndarray]  # RGB -> bool text mask
TamperingMethod = Callable[[np.ndarray], np.ndarray]  # RGB -> uint8 classes (0 background, 1 real, 2 tampered)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealSample:
    """One annotated real image. `kind` is its folder (removal-pairs, scene-boxes, ...); `source` the
    part of its name before the first '_' (scut, poster, ic15, ...): the image types results split by."""

    image: Path
    kind: str
    words: tuple[np.ndarray, ...]  # legible word polygons, float (N, 2) in pixels
    ignored: tuple[np.ndarray, ...]  # illegible ("###") polygons: neither counted nor penalised
    complete: bool
    label: Path | None = None
    mask: Path | None = None
    mask_type: str | None = None
    tampered: tuple[bool, ...] = ()  # per word: marked `"tampered": true` (constructed forgeries)
    texts: tuple[str, ...] = ()  # per word: its annotated `"text"` ("" when the sidecar gives none)

    def __post_init__(self) -> None:
        # One flag per word, as the scorers zip them with the words: none given means every word is genuine.
        if not self.tampered:
            object.__setattr__(self, "tampered", (False,) * len(self.words))
        elif len(self.tampered) != len(self.words):
            raise ValueError(f"{self.image}: {len(self.tampered)} tampered flags for {len(self.words)} words")

    @property
    def name(self) -> str:
        return self.image.stem

    @property
    def source(self) -> str:
        return self.name.split("_", 1)[0]


def read_real_samples(root: str | os.PathLike, *, limit: int | None = None,
                      on_note: Callable[[str], None] | None = None) -> list[RealSample]:
    """Every `NAME.json` + image pair under `root` (sorted), in the real-dev layout.

    A malformed sidecar raises ValueError "<sidecar>: <problem>" (the schema is checked: `polygons` a list of
    objects whose `points` are at least 3 finite [x, y] pairs; `image`, `label`, `mask`, `mask_type`
    strings; `complete`, `ignore`, `tampered` true/false). Files a sidecar names must lie inside `root`
    (a downloaded dataset must not make the benchmark read elsewhere). `on_note(line)` hears of each image
    that no sidecar annotates (skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    samples = []
    for sidecar in sorted(root.rglob("*.json")):
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{sidecar}: not a readable annotation file ({error})") from None
        if not isinstance(meta, dict) or "polygons" not in meta:
            continue  # another JSON file (e.g. a results file), not a sidecar
        samples.append(_read_sidecar(sidecar, meta, root))
    if not samples:
        raise ValueError(f"{root}: no annotated images (NAME.json sidecars with 'polygons') found")
    if on_note is not None:
        for image in _images_without_sidecar(root, samples):
            on_note(f"{image}: no {image.stem}.json sidecar beside it; skipped")
    return samples[:limit] if limit else samples


# Coordinates beyond this (pixels) are a broken file, not a photo (1e12 made a mask "too big" to allocate).
_MAX_COORDINATE = 1_000_000


def _read_sidecar(sidecar: Path, meta: dict[str, Any], root: Path) -> RealSample:
    """One sidecar's sample; ValueError "<sidecar>: <problem>" for anything off the schema."""

    def problem(text: str) -> ValueError:
        return ValueError(f"{sidecar}: {text}")

    for key in ("image", "label", "mask", "mask_type"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise problem(f'"{key}" must be a file name (a string), got {json.dumps(meta[key])}')
    if not isinstance(meta.get("complete", False), bool):
        raise problem(f'"complete" must be true or false, got {json.dumps(meta["complete"])}')
    image = _named_file(sidecar, meta["image"], root, "image", problem) if meta.get("image") else None
    if image is None or not image.is_file():
        candidates = [p for p in sidecar.parent.glob(sidecar.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES]
        if not candidates:
            raise problem("its image is missing")
        image = candidates[0]
    words, ignored, tampered, texts = [], [], [], []
    for polygon in _polygons(meta["polygons"], problem):
        points = polygon["points"]
        if polygon.get("ignore"):
            ignored.append(points)
        else:
            words.append(points)
            tampered.append(polygon.get("tampered", False))
            texts.append(polygon["text"] if isinstance(polygon.get("text"), str) else "")
    optional = {key: _named_file(sidecar, meta[key], root, key, problem) for key in ("label", "mask") if meta.get(key)}
    return RealSample(
        image=image,
        kind=sidecar.parent.name,
        words=tuple(words),
        ignored=tuple(ignored),
        complete=meta.get("complete", False),
        label=optional.get("label"),
        mask=optional.get("mask"),
        mask_type=meta.get("mask_type"),
        tampered=tuple(tampered),
        texts=tuple(texts),
    )


def _polygons(polygons: Any, problem: Callable[[str], ValueError]) -> list[dict[str, Any]]:
    """The sidecar's `polygons`, each with its `points` as float32 (N, 2); ValueError for a malformed one."""
    if not isinstance(polygons, list):
        raise problem(f'"polygons" must be a list of polygons, got {json.dumps(polygons)[:40]}')
    checked = []
    for index, polygon in enumerate(polygons):
        where = f"polygon {index + 1}"
        if not isinstance(polygon, dict) or "points" not in polygon:
            raise problem(f'{where} must be an object with "points", got {json.dumps(polygon)[:40]}')
        for flag in ("ignore", "tampered"):
            if not isinstance(polygon.get(flag, False), bool):
                raise problem(f'{where}: "{flag}" must be true or false, got {json.dumps(polygon[flag])}')
        points = polygon["points"]
        pairs = isinstance(points, list) and all(
            isinstance(point, list) and len(point) == 2
            and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in point)
            for point in points
        )
        if not pairs or len(points) < 3:
            raise problem(f"{where}: points must be at least 3 [x, y] number pairs, got {json.dumps(points)[:40]}")
        array = np.asarray(points, np.float64)
        if not np.isfinite(array).all() or np.abs(array).max() > _MAX_COORDINATE:
            raise problem(f"{where}: coordinates must be finite numbers within +-{_MAX_COORDINATE:,} pixels")
        checked.append({**polygon, "points": array.astype(np.float32)})
    return checked


def _named_file(sidecar: Path, name: str, root: Path, key: str, problem: Callable[[str], ValueError]) -> Path:
    """`name` relative to the sidecar's folder; refused when it leads outside `root`."""
    path = sidecar.parent / name
    try:
        inside = root.resolve() in path.resolve().parents
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise problem(f'"{key}" {json.dumps(name)} leads outside {root}')
    return path


def _images_without_sidecar(root: Path, samples: Sequence[RealSample]) -> list[Path]:
    """Image files under `root` that no sample uses as its image, label or mask."""
    used = {path.resolve() for sample in samples for path in (sample.image, sample.label, sample.mask) if path is not None}
    return [path for path in sorted(root.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
            and path.resolve() not in used]


def polygon_mask(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) mask of filled polygons."""
    mask = np.zeros(shape, np.uint8)
    for polygon in polygons:
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask.astype(bool)


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A 0/255 ground-truth mask as bool; it must match the image's size."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"{path}: not a readable mask image")
    if mask.shape != shape:
        raise ValueError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {shape[1]}x{shape[0]}")
    return mask > 127


# --------------------------------------------------------------------------------------------
# Detector-based pieces
# --------------------------------------------------------------------------------------------


def ppocr_detector(path: str | os.PathLike | None = None) -> Detector:
    """The bundled PP-OCRv4 DB detector (`upocr.detector`, the network RapidOCR ships) in box mode: word
    and line quads, as an OCR pipeline crops them. No extra package (and no GUI OpenCV) needed."""
    from upocr.detector import WordDetector

    detector = WordDetector(path, shape="box")
    return lambda image: detector.detect(image).polygons


def rapidocr_detector() -> Detector:
    """RapidOCR's text detector (DBNet, ONNX weights shipped in its wheel): RGB -> word/line quads."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise ImportError(
            "--detector rapidocr needs rapidocr_onnxruntime: pip install --no-deps rapidocr_onnxruntime pyclipper "
            "shapely six (or use the default --detector ppocr)"
        ) from None
    engine = RapidOCR()

    def detect(image: np.ndarray) -> list[np.ndarray]:
        boxes, _ = engine(np.ascontiguousarray(image[:, :, ::-1]), use_det=True, use_cls=False, use_rec=False)
        return [np.asarray(box, np.float32).reshape(-1, 2) for box in (boxes or [])]

    return detect


def stroke_detector(image: np.ndarray) -> list[np.ndarray]:
    """A dependency-free stand-in for an OCR detector: the classical stroke detector's word boxes
    (`upocr.evaluate.baselines.detected_word_boxes`) as quads. Far weaker than a real detector."""
    boxes = detected_word_boxes(image).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(boxes, connectivity=8)
    return [
        np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32) for x, y, w, h, _ in stats[1:count]
    ]


# `upocr evaluate real --detector`: the erasure judge and the rectangles competitor, made on demand.
REAL_DETECTORS: dict[str, Callable[[], Detector]] = {
    "ppocr": ppocr_detector,
    "rapidocr": rapidocr_detector,
    "strokes": lambda: stroke_detector,  # a plain function: nothing to open
}


def polygon_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two polygons, rasterised on their joint bounding box (exact enough at pixel scale)."""
    low = np.floor(np.minimum(a.min(0), b.min(0))).astype(int)
    high = np.ceil(np.maximum(a.max(0), b.max(0))).astype(int) + 1
    shape = (int(high[1] - low[1]), int(high[0] - low[0]))
    mask_a = polygon_mask([a - low], shape)
    mask_b = polygon_mask([b - low], shape)
    union = np.count_nonzero(mask_a | mask_b)
    return np.count_nonzero(mask_a & mask_b) / union if union else 0.0


def words_found(words: Sequence[np.ndarray], detections: Sequence[np.ndarray]) -> int:
    """How many words some detection finds (IoU >= FOUND_IOU; one detection may find one word only)."""
    used: set[int] = set()
    found = 0
    for word in words:
        best, best_iou = None, FOUND_IOU
        for i, box in enumerate(detections):
            if i in used:
                continue
            iou = polygon_iou(word, box)
            if iou >= best_iou:
                best, best_iou = i, iou
        if best is not None:
            used.add(best)
            found += 1
    return found


def detector_telea(detector: Detector) -> RemovalMethod:
    """The pipeline anyone can pip-install: OCR detector boxes, grown a little, filled by Telea."""

    def remove(image: np.ndarray) -> np.ndarray:
        boxes = polygon_mask(detector(image), image.shape[:2])
        return telea_inpaint(image, dilate(boxes, DETECTOR_FILL_GROWTH)) if boxes.any() else image.copy()

    return remove


def words_telea(image: np.ndarray, sample: RealSample) -> np.ndarray:
    """Oracle: the annotated polygons (legible and illegible), grown as detector boxes are, filled by Telea."""
    words = polygon_mask(sample.words + sample.ignored, image.shape[:2])
    return telea_inpaint(image, dilate(words, DETECTOR_FILL_GROWTH)) if words.any() else image.copy()


def inside_words(removed: np.ndarray, image: np.ndarray, sample: RealSample) -> np.ndarray:
    """Oracle: `removed` inside the grown polygons, the untouched input outside them."""
    return np.where(_grown_words(sample, image.shape[:2])[..., None], removed, image)


def predictor_removal(predictor) -> RemovalMethod:
    return lambda image: predictor.predict(image, "removal").image


def pipeline_methods(predictor, names: Sequence[str]) -> dict[str, RemovalMethod]:
    """One removal row per pipeline name (`upocr.removal.REMOVAL_PIPELINES`): the predictor with
    `removal=NAME`, labelled as the command line that runs it."""
    return {f"upocr --removal {name}": predictor_removal(predictor.with_options(removal=name)) for name in names}


def predictor_segmentation(predictor) -> SegmentationMethod:
    return lambda image: predictor.predict(image, "segmentation").mask


def finder_methods(predictor, names: Sequence[str]) -> dict[str, SegmentationMethod]:
    """One segmentation row per finder name (`upocr.removal.SEGMENTATION_FINDERS`), as `pipeline_methods`."""
    return {f"upocr --segmentation {name}": predictor_segmentation(predictor.with_options(segmentation=name)) for name in names}


def predictor_tampering(predictor) -> TamperingMethod:
    return lambda image: predictor.predict(image, "tampering").classes


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


@dataclass
class MethodScores:
    """Accumulated scores of one method over the benchmark (see the module docstring)."""

    removal: RemovalMetrics = field(default_factory=lambda: RemovalMetrics(pixels_per_image=None))
    removal_by_source: dict[str, RemovalMetrics] = field(default_factory=dict)
    words: int = 0
    words_found: int = 0
    outside_change: list[float] = field(default_factory=list)
    ink: ConfusionMatrix = field(default_factory=lambda: ConfusionMatrix(2))
    predicted_pixels: int = 0
    predicted_inside: int = 0
    words_hit: int = 0
    words_for_hits: int = 0
    genuine_pixels: int = 0
    genuine_flagged: int = 0
    tampered_pixels: int = 0
    tampered_flagged: int = 0
    tampered_matrix: ConfusionMatrix = field(default_factory=lambda: ConfusionMatrix(3))  # images with forgeries only
    flagged_share: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        removal = self.removal.compute() if self.removal.count else None
        by_source = {name: metrics.compute()["psnr"] for name, metrics in sorted(self.removal_by_source.items())}
        ink = segmentation_scores(self.ink) if self.ink.pixels else None
        return {
            "removal_psnr": None if removal is None else removal["psnr"],
            "removal_mssim": None if removal is None else removal["mssim"],
            "removal_pairs": 0 if removal is None else removal["count"],
            "removal_psnr_by_source": by_source,
            "erasure": self.words_found / self.words if self.words else None,
            "words": self.words,
            "outside_change": float(np.mean(self.outside_change)) if self.outside_change else None,
            "ink": ink,
            "box_precision": self.predicted_inside / self.predicted_pixels if self.predicted_pixels else None,
            "box_recall": self.words_hit / self.words_for_hits if self.words_for_hits else None,
            "false_alarms": self.genuine_flagged / self.genuine_pixels if self.genuine_pixels else None,
            "tampered_recall": self.tampered_flagged / self.tampered_pixels if self.tampered_pixels else None,
            "tampered_iou": float(self.tampered_matrix.iou()[2]) if self.tampered_pixels else None,
            "flagged_share": float(np.mean(self.flagged_share)) if self.flagged_share else None,
            "seconds_per_image": float(np.mean(self.seconds)) if self.seconds else None,
            "per_image": self.per_image,
        }


def _timed(function: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = function(image)
    return result, time.perf_counter() - start


def _grown_words(sample: RealSample, shape: tuple[int, int]) -> np.ndarray:
    grow = max(2, round(POLYGON_GROWTH * float(np.hypot(*shape))))
    return dilate(polygon_mask(sample.words + sample.ignored, shape), grow)


def score_removal(scores: MethodScores, sample: RealSample, image: np.ndarray, removed: np.ndarray,
                  detections_after: list[np.ndarray], label: np.ndarray | None) -> None:
    record = scores.per_image.setdefault(sample.name, {})
    if label is not None:
        result = scores.removal.update(removed, label)
        scores.removal_by_source.setdefault(sample.source, RemovalMetrics(pixels_per_image=None)).add(result)
        record["psnr"] = float("inf") if result is None else result.psnr
    if sample.words:
        found = words_found(sample.words, detections_after)
        scores.words += len(sample.words)
        scores.words_found += found
        record["erasure"] = found / len(sample.words)
    if sample.complete and (sample.words or sample.ignored):
        outside = ~_grown_words(sample, image.shape[:2])
        if outside.any():
            change = np.abs(removed.astype(np.int16) - image.astype(np.int16)).mean(axis=2)[outside].mean()
            scores.outside_change.append(float(change))
            record["outside_change"] = float(change)


def score_segmentation(scores: MethodScores, sample: RealSample, mask: np.ndarray, ink: np.ndarray | None) -> None:
    record = scores.per_image.setdefault(sample.name, {})
    if ink is not None:
        scores.ink.update(ink.astype(np.uint8), mask.astype(np.uint8))
        one = ConfusionMatrix(2)
        one.update(ink.astype(np.uint8), mask.astype(np.uint8))
        record["ink_fgiou"] = float(one.iou()[1])
    if sample.words:
        shape = mask.shape
        if sample.complete:
            scores.predicted_pixels += int(mask.sum())
            scores.predicted_inside += int((mask & _grown_words(sample, shape)).sum())
        for word in sample.words:
            area = polygon_mask([word], shape)
            if area.any():
                scores.words_for_hits += 1
                scores.words_hit += int(mask[area].mean() >= BOX_HIT_SHARE)


def annotated_classes(sample: RealSample, shape: tuple[int, int]) -> np.ndarray:
    """The annotation as a class map: 0 elsewhere, 1 genuine words, 2 words marked `"tampered"` (where a tampered
    polygon overlaps a genuine one, genuine)."""
    genuine = polygon_mask([w for w, t in zip(sample.words, sample.tampered) if not t], shape)
    truth = genuine.astype(np.uint8)
    truth[polygon_mask([w for w, t in zip(sample.words, sample.tampered) if t], shape) & ~genuine] = 2
    return truth


def score_tampering(scores: MethodScores, sample: RealSample, classes: np.ndarray) -> None:
    record = scores.per_image.setdefault(sample.name, {})
    flagged = classes == 2
    scores.flagged_share.append(float(flagged.mean()))
    record["flagged_share"] = float(flagged.mean())
    truth = annotated_classes(sample, classes.shape)
    genuine, forged = truth == 1, truth == 2
    scores.genuine_pixels += int(genuine.sum())
    scores.genuine_flagged += int((flagged & genuine).sum())
    scores.tampered_pixels += int(forged.sum())
    scores.tampered_flagged += int((flagged & forged).sum())
    if forged.any():  # the original's pixel metric over the annotation: 0 elsewhere, 1 genuine, 2 tampered words
        scores.tampered_matrix.update(truth, classes)
    if genuine.any():
        record["false_alarms"] = float(flagged[genuine].mean())


@dataclass
class RealBenchmark:
    """Scores of every method, plus the pictures' material (first images of each kind)."""

    removal: dict[str, MethodScores]
    segmentation: dict[str, MethodScores]
    tampering: dict[str, MethodScores]
    before_erasure: float | None
    pictures: list[list[np.ndarray]]
    picture_titles: list[str]
    errors: list[str]
    # Tampering methods on forgeries constructed from the samples, per kind of forgery
    # (`upocr.evaluate.forensic.FORGERIES`, `constructed_forgery_scores`).
    constructed: dict[str, dict[str, MethodScores]] = field(default_factory=dict)


def run_real_benchmark(
    samples: Sequence[RealSample],
    removal_methods: Mapping[str, RemovalMethod],
    segmentation_methods: Mapping[str, SegmentationMethod],
    detector: Detector,
    *,
    tampering_methods: Mapping[str, TamperingMethod] | None = None,
    oracles: Sequence[str] = (),
    picture_rows: int = 8,
    progress: bool = True,
) -> RealBenchmark:
    """Run and score every method on every sample. A sample that fails to read is reported in
    `errors` and skipped; a method that fails on a sample propagates (a bug, not bad input).
    `oracles`: removal methods that also get an "inside the words" oracle row; with any, the
    "annotated words + Telea" oracle row is added too (module docstring)."""
    inside = {name: f"{name}, inside the words{ORACLE_TAG}" for name in oracles}
    oracle_rows = [*inside.values(), f"annotated words + Telea{ORACLE_TAG}"] if oracles else []
    removal = {name: MethodScores() for name in ("input (no change)", *removal_methods, *oracle_rows)}
    segmentation = {name: MethodScores() for name in segmentation_methods}
    tampering_methods = tampering_methods or {}
    tampering = {name: MethodScores() for name in tampering_methods}
    words = found_before = 0
    pictures: list[list[np.ndarray]] = []
    errors: list[str] = []
    for sample in tqdm(samples, desc="real images", unit="image", disable=not progress):
        try:
            image = read_image(sample.image)
            label = read_image(sample.label) if sample.label is not None else None
            if label is not None and label.shape != image.shape:
                raise ValueError(f"label {sample.label.name} is {label.shape[1]}x{label.shape[0]}, image {image.shape[1]}x{image.shape[0]}")
            ink = read_mask(sample.mask, image.shape[:2]) if sample.mask is not None and sample.mask_type == "stroke" else None
        except (OSError, ValueError) as error:
            errors.append(f"{sample.image}: {error}")
            continue
        detections = detector(image)
        if sample.words:
            words += len(sample.words)
            found_before += words_found(sample.words, detections)
        row = [image]
        results = {"input (no change)": image}
        for name, method in removal_methods.items():
            results[name], seconds = _timed(method, image)
            removal[name].seconds.append(seconds)
            row.append(results[name])
            if name in inside:
                results[inside[name]] = inside_words(results[name], image, sample)
        if oracles:
            results[oracle_rows[-1]] = words_telea(image, sample)
        for name, removed in results.items():
            after = detections if name == "input (no change)" else detector(removed) if sample.words else []
            score_removal(removal[name], sample, image, removed, after, label)
        for name, scores in segmentation.items():
            mask, seconds = _timed(segmentation_methods[name], image)
            scores.seconds.append(seconds)
            score_segmentation(scores, sample, mask, ink)
            row.append(mask)
        if sample.words:
            for name, scores in tampering.items():
                classes, seconds = _timed(tampering_methods[name], image)
                scores.seconds.append(seconds)
                score_tampering(scores, sample, classes)
        if len(pictures) < picture_rows:
            pictures.append(row + ([label] if label is not None else [ink] if ink is not None else []))
    titles = ["input", *removal_methods, *(f"{name} mask" for name in segmentation_methods), "ground truth"]
    return RealBenchmark(removal, segmentation, tampering, found_before / words if words else None, pictures, titles, errors)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def real_report(result: RealBenchmark, *, title: str = "Real-image benchmark") -> tuple[str, dict[str, Any]]:
    """(markdown, json-able dict) of a benchmark's results."""
    removal = {name: scores.summary() for name, scores in result.removal.items()}
    segmentation = {name: scores.summary() for name, scores in result.segmentation.items()}
    sources = sorted({s for summary in removal.values() for s in summary["removal_psnr_by_source"]})
    lines = [f"## {title}", ""]
    lines += [
        "### Text removal",
        "",
        "| method | PSNR | MSSIM | " + " | ".join(f"PSNR {s}" for s in sources) + " | erasure (words still found) | change outside words | s/image |",
        "|---|---:|---:|" + "---:|" * len(sources) + "---:|---:|---:|",
    ]
    for name, summary in removal.items():
        by_source = [_fmt(summary["removal_psnr_by_source"].get(s), 2) for s in sources]
        lines.append(
            f"| {name} | {_fmt(summary['removal_psnr'], 2)} | {_fmt(summary['removal_mssim'], 4)} | "
            + " | ".join(by_source)
            + f" | {_fmt(summary['erasure'])} | {_fmt(summary['outside_change'], 2)} | {_fmt(summary['seconds_per_image'], 2)} |"
        )
    lines += [
        "",
        "### Text segmentation",
        "",
        "| method | ink fgIoU | ink P | ink R | ink F | box precision | box recall | s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, summary in segmentation.items():
        ink = summary["ink"] or {}
        lines.append(
            f"| {name} | {_fmt(ink.get('fg_iou'))} | {_fmt(ink.get('precision'))} | {_fmt(ink.get('recall'))} | {_fmt(ink.get('f_score'))} | "
            f"{_fmt(summary['box_precision'])} | {_fmt(summary['box_recall'])} | {_fmt(summary['seconds_per_image'], 2)} |"
        )
    tables = [("real images", result.tampering),
              *((CONSTRUCTED_TITLES.get(kind, kind), table) for kind, table in result.constructed.items())]
    for title, table in tables:
        if table:
            lines += [
                "",
                f"### Tampered text detection ({title})",
                "",
                "| method | false alarms (genuine text pixels flagged) | tampered recall | tampered IoU | image share flagged | s/image |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for name, scores in table.items():
                summary = scores.summary()
                lines.append(
                    f"| {name} | {_fmt(summary['false_alarms'], 4)} | {_fmt(summary['tampered_recall'])} | "
                    f"{_fmt(summary['tampered_iou'])} | {_fmt(summary['flagged_share'], 4)} | {_fmt(summary['seconds_per_image'], 2)} |"
                )
    lines += [
        "",
        f"Erasure: the share of annotated words the OCR detector finds after removal ({_fmt(result.before_erasure)} "
        "before); lower is better. It judges detector + Telea with its own detector, which flatters that baseline. "
        "PSNR/MSSIM at full resolution against the text-free labels; change outside: mean absolute grey-level "
        "change outside the grown word polygons (complete annotations). Box precision/recall: proxies from word "
        "polygons (the share of predicted text pixels inside them; the share of words with some text predicted).",
        "",
    ]
    tampering = {name: scores.summary() for name, scores in result.tampering.items()}
    constructed = {kind: {name: scores.summary() for name, scores in table.items()} for kind, table in result.constructed.items()}
    data = {"removal": removal, "segmentation": segmentation, "tampering": tampering, "constructed_forgeries": constructed,
            "erasure_before": result.before_erasure, "errors": result.errors}
    return "\n".join(lines), data
