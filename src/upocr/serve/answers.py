"""What a prediction answers: the task's pictures as PNG, and its text regions as polygons.

The predictor gives pixel maps (a text mask, a class map); programs calling the API often want words.
`text_regions` finds them the way `upocr.evaluate.baselines.detected_word_boxes` groups strokes: letters
closed into words horizontally (over gaps below 0.4 of the letters' height), one polygon (the outline of each word blob, simplified) per word; for
tampering each word carries the share of its text pixels classed tampered (its tampering score).
Removal pipelines that find text with the word detector (`upocr.detector`) give its polygons and scores;
the others' results are images without a mask, so they have no regions.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from upocr.predict import Prediction

# PNG zlib level for answers: level 1 is several times faster than PIL's default 6 and the files are
# only slightly larger; the answer goes over the loopback interface anyway.
PNG_COMPRESS_LEVEL = 1
# Letters closer than this share of their typical height join one word (`word_gap`).
WORD_GAP = 0.4
# Regions with fewer text pixels are noise, not words; more regions than this are not listed.
MIN_REGION_PIXELS = 6
MAX_REGIONS = 2000
# Polygon simplification (cv2.approxPolyDP), in pixels of the picture the regions are found in.
POLYGON_TOLERANCE = 1.0
TAMPERED_CLASS_NAME = "tampered text"  # a class map with this class gets per-word scores


def png_bytes(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def png_base64(picture: np.ndarray) -> str:
    return base64.b64encode(png_bytes(picture)).decode("ascii")


def hex_colour(colour: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def text_regions(prediction: Prediction, scale: tuple[float, float] = (1.0, 1.0)) -> list[dict[str, Any]] | None:
    """Words of a segmentation or tampering result: [{"polygon": [[x, y], ...], "box": [x, y, w, h],
    "pixels", and for tampering "tampered_score" in [0, 1] and "label"}], largest first, in the upload's
    pixel coordinates (`scale`: (x, y) factors from the result's pixels to the upload's, for previews).
    None for removal (its result is an image, not a map of text)."""
    spec = prediction.task.spec
    if prediction.regions is not None:  # the word detector's own polygons (removal's word finders)
        return detected_regions(prediction.regions, scale)
    if spec.result_channels is not None:
        return None  # an image (removal) without word regions, not a map of text
    classes = np.asarray(prediction.result).astype(np.uint8)
    text = classes > 0
    tampered_value = spec.classes.index(TAMPERED_CLASS_NAME) if TAMPERED_CLASS_NAME in spec.classes else None
    strokes = text.astype(np.uint8)
    gap = word_gap(strokes)
    # Odd kernel sides: OpenCV's closing with an even side shifts the result by a pixel.
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (gap | 1, max(3, gap // 3) | 1))
    words = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(words, connectivity=8)
    order = sorted(range(1, count), key=lambda k: -stats[k, cv2.CC_STAT_AREA])
    regions = []
    sx, sy = scale
    for k in order:
        x, y, w, h, _area = (int(v) for v in stats[k])
        word = labels[y : y + h, x : x + w] == k
        word_text = word & text[y : y + h, x : x + w]
        pixels = int(np.count_nonzero(word_text))
        if pixels < MIN_REGION_PIXELS:
            continue
        contours, _ = cv2.findContours(word.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = cv2.approxPolyDP(max(contours, key=cv2.contourArea), POLYGON_TOLERANCE, True).reshape(-1, 2)
        region: dict[str, Any] = {
            "polygon": [[round((x + px) * sx, 1), round((y + py) * sy, 1)] for px, py in outline.tolist()],
            "box": [round(x * sx, 1), round(y * sy, 1), round(w * sx, 1), round(h * sy, 1)],
            "pixels": round(pixels * sx * sy),
        }
        if tampered_value is not None:
            tampered = int(np.count_nonzero(word_text & (classes[y : y + h, x : x + w] == tampered_value)))
            region["tampered_score"] = round(tampered / pixels, 4)
            region["label"] = "tampered text" if 2 * tampered > pixels else "real text"
        regions.append(region)
        if len(regions) >= MAX_REGIONS:
            break
    return regions


def detected_regions(regions: Any, scale: tuple[float, float]) -> list[dict[str, Any]]:
    """`upocr.detector.WordRegions` in the answer's form (with the detector's score), in upload pixels."""
    sx, sy = scale
    found = []
    for polygon, score in zip(regions.polygons, regions.scores):
        points = np.asarray(polygon, np.float64) * (sx, sy)
        low, high = points.min(0), points.max(0)
        found.append({
            "polygon": np.round(points, 1).tolist(),
            "box": [round(low[0], 1), round(low[1], 1), round(high[0] - low[0], 1), round(high[1] - low[1], 1)],
            "pixels": int(round(cv2.contourArea(points.astype(np.float32)))),
            "score": round(float(score), 4),
        })
    return found[:MAX_REGIONS]


def word_gap(strokes: np.ndarray) -> int:
    """Pixels between letters that still join them into one word: `WORD_GAP` of the letters' typical
    height (the median over text pixels, so that specks and dots do not count). Letters are 0.05-0.15 em
    apart, words 0.25 em or more, and letters 0.5-0.7 em high."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(strokes, connectivity=8)
    heights, areas = stats[1:count, cv2.CC_STAT_HEIGHT], stats[1:count, cv2.CC_STAT_AREA]
    if not heights.size:
        return 3
    order = np.argsort(heights)
    middle = np.searchsorted(np.cumsum(areas[order]), areas.sum() / 2)
    return max(3, round(WORD_GAP * float(heights[order][middle])))


def describe_result(image: np.ndarray, prediction: Prediction, *, pictures: bool = True,
                    scale: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
    """One task's answer: its pictures (each also offered as a download; the one to look at first, then
    the mask or class map as `upocr segment-text` / `detect-tampering` write it), legend and regions."""
    spec = prediction.task.spec
    result = prediction.result
    answer: dict[str, Any] = {
        "task": spec.short,
        "title": spec.title,
        "legend": [{"label": name, "colour": hex_colour(colour)} for name, colour in spec.legend()],
        "images": [
            {"kind": output.kind, "label": output.label, "filename": f"{spec.short}_{output.kind}.png",
             "png": png_base64(output.draw(image, result))}
            for output in spec.pictures
        ] if pictures else [],
        "regions": text_regions(prediction, scale),
    }
    if spec.classes and spec.result_channels is None:
        values = np.asarray(result).astype(np.uint8)
        answer["text_fraction"] = round(float(np.count_nonzero(values)) / max(1, values.size), 6)
    return answer


def picture_of(image: np.ndarray, prediction: Prediction, kind: str | None) -> tuple[bytes, str]:
    """(PNG bytes, file name) of one picture of a task's result: `kind` (None: the result file itself)."""
    spec = prediction.task.spec
    kinds = {output.kind: output for output in spec.pictures}
    output = spec.result_file if kind is None else kinds.get(kind)
    if output is None:
        raise ValueError(f"{spec.short} has no picture {kind!r}; choose one of: {', '.join(kinds)}")
    return png_bytes(output.draw(image, prediction.result)), f"{spec.short}_{output.kind}.png"
