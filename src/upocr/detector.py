"""A pretrained word detector: PP-OCR's DBNet text detector (ONNX) with this project's pre/post-processing.

Why it is here: the bundled UPOCR weights were trained on synthetic text only, and on real photos the
detector's word regions, filled by Telea, remove text far better than the model's own mask (issue 22,
docs/results.md). The detector is one *finder* of the removal pipelines (`upocr.removal`).

Pre-processing follows RapidOCR's defaults for this network: the image (BGR, as PaddleOCR trains) is
shrunk so its longer side is at most `max_side` (2000: a 9000 x 9000 photo costs the same as a 2000 x
2000 one, memory bounded), then enlarged so its shorter side is at least `min_side` (736), each side
rounded to a multiple of 32, scaled to [-1, 1]. Post-processing is DB's, in *polygon* mode: the
probability map above `BINARY_THRESHOLD`, dilated 2 x 2, is split into contours; each contour,
simplified to 0.2 % of its perimeter, is kept when its mean probability reaches `REGION_THRESHOLD`, then
"unclipped" by DB's offset (area x `UNCLIP_RATIO` / perimeter, round joins: a dilation with a disk). The
polygons follow arched text and stay inside signs and banners, where the rectangles of box mode (also
offered) repaint the whole plate.

The bundled file (`weights/ppocr/`, Apache-2.0, see its NOTICE) is PP-OCRv4's mobile detector from the
`rapidocr_onnxruntime` wheel; any PP-OCR DB detector exported to ONNX works (`--detector-model PATH`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

BUNDLED_DETECTOR = Path(__file__).resolve().parent / "weights" / "ppocr" / "ch_PP-OCRv4_det_infer.onnx"

MAX_SIDE = 2000  # longer side at most this (RapidOCR's max_side_len): bounded memory on huge photos
MIN_SIDE = 736  # shorter side at least this (the detector's limit_side_len, limit_type "min")
BINARY_THRESHOLD = 0.3  # DB: pixels above this probability form the text bitmap
REGION_THRESHOLD = 0.5  # DB box_thresh: a region's mean probability must reach this
UNCLIP_RATIO = 1.6  # DB: regions grow by area x ratio / perimeter (they were trained shrunk)
MAX_REGIONS = 1000  # DB max_candidates
MIN_REGION_SIDE = 5  # px at the detector's scale: thinner unclipped regions are dropped (DB: min_size + 2)
POLYGON_EPSILON = 0.002  # approxPolyDP tolerance, a share of the contour's perimeter
OUTLINE_EPSILON = 1.0  # px at the detector's scale: the unclipped outline's tolerance (no visible change)

Shape = Literal["polygon", "box"]


@dataclass(frozen=True)
class WordRegions:
    """Text regions of one image: polygons (float32 (N, 2) x, y in image pixels) and their scores."""

    polygons: list[np.ndarray]
    scores: list[float]
    height: int
    width: int

    def mask(self, grow: int = 0) -> np.ndarray:
        """bool (H, W): the regions filled, grown by `grow` pixels (an elliptical dilation)."""
        from upocr.inpaint import dilate

        mask = np.zeros((self.height, self.width), np.uint8)
        if self.polygons:
            cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in self.polygons], 1)
        return dilate(mask, grow)

    def to_json(self) -> list[dict]:
        return [{"points": np.round(p, 1).tolist(), "score": round(float(s), 4)} for p, s in zip(self.polygons, self.scores)]


class WordDetector:
    """PP-OCR DB text detector on onnxruntime: `detect(rgb)` -> WordRegions.

    path: a DB detector .onnx (default: the bundled PP-OCRv4 mobile detector). shape: "polygon" (default,
    the unclipped contours) or "box" (their minimum-area rectangles, as OCR pipelines crop words)."""

    def __init__(self, path: str | os.PathLike | None = None, *, shape: Shape = "polygon",
                 max_side: int = MAX_SIDE, min_side: int = MIN_SIDE, threads: int | None = None) -> None:
        if shape not in ("polygon", "box"):
            raise ValueError(f"shape must be polygon or box, got {shape!r}")
        self.path = Path(path) if path is not None else BUNDLED_DETECTOR
        self.shape = shape
        self.max_side, self.min_side = int(max_side), int(min_side)
        self.session = _open_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    # ------------------------------------------------------------------ public API

    def detect(self, image: np.ndarray) -> WordRegions:
        """Word regions of an RGB uint8 (H, W, 3) image, in its own pixel coordinates."""
        probability = self.probability(image)
        height, width = image.shape[:2]
        scale_x, scale_y = width / probability.shape[1], height / probability.shape[0]
        polygons, scores = [], []
        for polygon, score in regions_from_probability(probability, shape=self.shape):
            polygon = polygon * np.array([scale_x, scale_y], np.float32)
            polygon[:, 0] = np.clip(polygon[:, 0], 0, width - 1)
            polygon[:, 1] = np.clip(polygon[:, 1], 0, height - 1)
            polygons.append(polygon)
            scores.append(score)
        return WordRegions(polygons, scores, height, width)

    def probability(self, image: np.ndarray) -> np.ndarray:
        """float32 (h, w): the detector's text probability at its working scale (`working_size`)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        work_h, work_w = working_size(height, width, self.max_side, self.min_side)
        interpolation = cv2.INTER_AREA if work_h * work_w < height * width else cv2.INTER_LINEAR
        small = cv2.resize(image[:, :, ::-1], (work_w, work_h), interpolation=interpolation)  # BGR, as trained
        batch = (small.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]  # (x / 255 - 0.5) / 0.5
        output = self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]
        if output.ndim != 4 or output.shape[:2] != (1, 1):
            raise ValueError(f"{self.path}: not a DB text detector (output shape {output.shape}, expected (1, 1, H, W))")
        return output[0, 0]


def working_size(height: int, width: int, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """The detector's input (h, w): longer side <= max_side, then shorter side >= min_side, multiples of 32."""
    ratio = min(1.0, max_side / max(height, width))
    if min(height, width) * ratio < min_side:
        ratio = min_side / min(height, width)
    return (max(32, int(round(height * ratio / 32)) * 32), max(32, int(round(width * ratio / 32)) * 32))


def regions_from_probability(probability: np.ndarray, *, shape: Shape = "polygon") -> list[tuple[np.ndarray, float]]:
    """DB post-processing on one probability map: [(polygon float32 (N, 2) at the map's scale, score)]."""
    bitmap = cv2.dilate((probability > BINARY_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    found = []
    for contour in contours[:MAX_REGIONS]:
        epsilon = POLYGON_EPSILON * cv2.arcLength(contour, True)
        points = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
        if len(points) < 4:
            continue
        score = mean_inside(probability, points)
        if score < REGION_THRESHOLD:
            continue
        grown = unclip(points)
        if grown is None:
            continue
        rectangle = cv2.minAreaRect(grown)
        if min(rectangle[1]) < MIN_REGION_SIDE:
            continue
        if shape == "box":
            grown = cv2.boxPoints(rectangle)
        found.append((grown.astype(np.float32), score))
    return found


def mean_inside(probability: np.ndarray, points: np.ndarray) -> float:
    """DB's "fast" score: the mean probability inside the polygon (within its bounding box)."""
    left, top = np.maximum(points.min(axis=0), 0).astype(int)
    right = min(int(points[:, 0].max()), probability.shape[1] - 1)
    bottom = min(int(points[:, 1].max()), probability.shape[0] - 1)
    if right < left or bottom < top:
        return 0.0
    mask = np.zeros((bottom - top + 1, right - left + 1), np.uint8)
    cv2.fillPoly(mask, [(points - [left, top]).astype(np.int32)], 1)
    return float(cv2.mean(probability[top : bottom + 1, left : right + 1], mask)[0])


def unclip(points: np.ndarray, ratio: float = UNCLIP_RATIO) -> np.ndarray | None:
    """The polygon offset outwards by area x ratio / perimeter with round joins, as DB unclips its
    shrunk regions: the filled polygon dilated by a disk of that radius, traced back to a polygon."""
    area, perimeter = cv2.contourArea(points.astype(np.float32)), cv2.arcLength(points.astype(np.float32), True)
    if perimeter <= 0 or area <= 0:
        return None
    distance = area * ratio / perimeter
    reach = int(math.ceil(distance)) + 2
    origin = points.min(axis=0) - reach
    size = points.max(axis=0) - origin + reach + 1
    canvas = np.zeros((int(size[1]), int(size[0])), np.uint8)
    cv2.fillPoly(canvas, [(points - origin).astype(np.int32)], 1)
    radius = max(1, int(round(distance)))
    canvas = cv2.dilate(canvas, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    contours, _ = cv2.findContours(canvas, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    outline = max(contours, key=cv2.contourArea)
    outline = cv2.approxPolyDP(outline, OUTLINE_EPSILON, True).reshape(-1, 2)  # pixel stairs -> straight edges
    return (outline + origin).astype(np.float32)


def _open_session(path: Path, threads: int | None):
    """An onnxruntime session for `path`, or a one-line error naming the file."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError("the word detector needs onnxruntime: pip install onnxruntime") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: detector model not found" + (" (reinstall upocr)" if path == BUNDLED_DETECTOR else ""))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings on stderr for every session
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types; one line naming the file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a readable ONNX detector ({first_line})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ValueError(f"{path}: not a DB text detector (expected one (N, 3, H, W) input)")
    return session
