"""Classical baselines: floors every table must beat, scored by the same metric code as the model.

Each baseline turns a test sample into a prediction of the same kind the model's evaluation writes
(a 512x512 text-free PNG, a 0/255 text mask, a {0,1,2} class map), so `upocr evaluate` treats them
exactly like the model. The choices below are documented in docs/evaluation.md.

* removal / telea-oracle-mask: OpenCV Telea inpainting inside the ground-truth text mask, dilated by
  `ORACLE_DILATION` pixels (the mask's polygons hug the glyphs; anti-aliased edges and JPEG ringing lie
  just outside). Uses ground truth, so it is an optimistic classical result, not a fair detector.
* removal / telea-detector-mask: the same inpainting inside a mask from a simple detector: the larger of
  morphological black-hat and top-hat (thin dark or bright strokes) thresholded with Otsu (and at least
  `DETECTOR_MIN_CONTRAST`), dilated by `DETECTOR_DILATION` pixels.
* segmentation / otsu: global Otsu threshold of the grey image; the side with fewer pixels is text.
* segmentation / sauvola: Sauvola local threshold (window `SAUVOLA_WINDOW`, k `SAUVOLA_K`, R 128) for
  dark text; on the inverted image when the Otsu minority side (the text polarity) is the bright one.
* tampering / all-real: every ground-truth text box labelled real. Text location comes from the ground
  truth (an oracle on where text is), so the floor measures only the real-vs-tampered decision.
* tampering / detector-boxes-real: no ground truth: the removal detector's stroke mask, closed along
  the line (`WORD_GAP`) into words, each word's bounding box filled and labelled real (the
  Tampered-IC13 labels are filled word boxes). The classical pipeline a user could actually run.

Baselines whose name contains "oracle" or that read ground truth (all-real) are references, not
methods: `ORACLE_BASELINES` lists them so reports can say so.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image
from skimage.filters import threshold_otsu, threshold_sauvola
from tqdm import tqdm

from upocr.evaluate.readers import image_size, read_rgb_as_original
from upocr.evaluate.removal import REMOVAL_SIZE
from upocr.inpaint import dilate, telea_inpaint
from upocr.io import ImageError, write_image
from upocr.tasks import Task

ORACLE_DILATION = 2  # px at 512x512
DETECTOR_KERNEL = 15  # px: black/top-hat structuring element, wider than typical strokes at 512x512
DETECTOR_MIN_CONTRAST = 20  # grey levels: weaker hat responses are never text
DETECTOR_DILATION = 3  # px
SAUVOLA_WINDOW = 25
SAUVOLA_K = 0.2
WORD_GAP = 0.04  # closing width along the line, as a fraction of the shorter image side: letters -> words


# --------------------------------------------------------------------------------------------
# Image-level baselines (arrays in, arrays out)
# --------------------------------------------------------------------------------------------


def detect_text_strokes(image: np.ndarray) -> np.ndarray:
    """A simple text detector: thin dark or bright strokes (black-hat / top-hat) above an Otsu threshold."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (DETECTOR_KERNEL, DETECTOR_KERNEL))
    response = np.maximum(
        cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel), cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, kernel)
    )
    if response.max() == response.min():
        return np.zeros(grey.shape, bool)
    threshold = max(float(threshold_otsu(response)), DETECTOR_MIN_CONTRAST)
    return dilate(response > threshold, DETECTOR_DILATION)


def text_is_bright(grey: np.ndarray) -> bool:
    """Text polarity of a grey image: the side of the global Otsu split with fewer pixels is text
    (text usually covers the smaller part of an image)."""
    if grey.max() == grey.min():
        return False
    bright = grey > threshold_otsu(grey)
    return int(bright.sum()) < bright.size - int(bright.sum())


def otsu_text_mask(image: np.ndarray) -> np.ndarray:
    """Global Otsu threshold; the minority side is text."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if grey.max() == grey.min():
        return np.zeros(grey.shape, bool)
    bright = grey > threshold_otsu(grey)
    return bright if text_is_bright(grey) else ~bright


def sauvola_text_mask(image: np.ndarray) -> np.ndarray:
    """Sauvola local threshold for dark text, applied to the inverted image when text is bright
    (polarity from `text_is_bright`)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if text_is_bright(grey):
        grey = 255 - grey
    window = max(3, min(SAUVOLA_WINDOW, *(s - 1 + s % 2 for s in grey.shape)))  # odd, no larger than the image
    # r = 128: the dynamic range of the standard deviation for 8-bit images (Sauvola's R); skimage's
    # default derives it from the dtype, which is wrong for float input.
    return grey < threshold_sauvola(grey, window_size=window, k=SAUVOLA_K, r=128)


def detected_word_boxes(image: np.ndarray) -> np.ndarray:
    """Bool mask of filled word boxes: `detect_text_strokes`, closed horizontally so letters merge
    into words, then each connected component's bounding box filled."""
    strokes = detect_text_strokes(image).astype(np.uint8)
    gap = max(3, round(WORD_GAP * min(strokes.shape)))
    words = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (gap, max(3, gap // 3))))
    count, _, stats, _ = cv2.connectedComponentsWithStats(words, connectivity=8)
    boxes = np.zeros(strokes.shape, bool)
    for x, y, w, h, _area in stats[1:count]:
        boxes[y : y + h, x : x + w] = True
    return boxes


def all_real_classes(gt_classes: np.ndarray) -> np.ndarray:
    """Every ground-truth text pixel (real or tampered) labelled real (1); the rest background."""
    return (np.asarray(gt_classes) > 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Split-level runners: write predictions where the evaluation expects them
# --------------------------------------------------------------------------------------------


def _resized_512(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))


def telea_oracle_mask_removal(sample, size: int = REMOVAL_SIZE) -> np.ndarray:
    """Telea inside the ground-truth text mask (grown), at size x size (what the model's evaluation writes)."""
    from upocr.data.layouts import read_removal_mask

    image = _resized_512(read_rgb_as_original(sample.image), size)
    non_text = read_removal_mask(sample.mask)  # 1 non-text, 0 text
    text = np.asarray(Image.fromarray((non_text == 0).astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 0
    return telea_inpaint(image, dilate(text, ORACLE_DILATION))


def telea_detector_mask_removal(sample, size: int = REMOVAL_SIZE) -> np.ndarray:
    """Telea inside the stroke detector's mask, at size x size."""
    image = _resized_512(read_rgb_as_original(sample.image), size)
    return telea_inpaint(image, detect_text_strokes(image))


def otsu_segmentation(sample) -> np.ndarray:
    return otsu_text_mask(np.asarray(read_rgb_as_original(sample.image)))


def sauvola_segmentation(sample) -> np.ndarray:
    return sauvola_text_mask(np.asarray(read_rgb_as_original(sample.image)))


def all_real_tampering(sample) -> np.ndarray:
    """The ground truth's text, every pixel of it labelled real, at the image's size."""
    from upocr.data.layouts import read_tampering_label

    return all_real_classes(read_tampering_label(sample.gt, size=image_size(sample.image)))


def detector_boxes_real_tampering(sample) -> np.ndarray:
    return detected_word_boxes(np.asarray(read_rgb_as_original(sample.image))).astype(np.uint8)


@dataclass(frozen=True)
class Baseline:
    """A classical method for one task. `predict(sample)` gives what the model's evaluation writes for the
    sample: a text-free image at REMOVAL_SIZE, a bool text mask or a {0,1,2} class map at the image's size."""

    task: Task
    name: str
    description: str
    predict: Callable[[Any], np.ndarray]


BASELINES: tuple[Baseline, ...] = (
    Baseline(Task.TEXT_REMOVAL, "telea-oracle-mask", f"Telea inpainting in the ground-truth text mask (+{ORACLE_DILATION} px)",
             telea_oracle_mask_removal),
    Baseline(Task.TEXT_REMOVAL, "telea-detector-mask", "Telea inpainting in a black/top-hat + Otsu stroke mask",
             telea_detector_mask_removal),
    Baseline(Task.TEXT_SEGMENTATION, "otsu", "global Otsu threshold, minority side = text", otsu_segmentation),
    Baseline(Task.TEXT_SEGMENTATION, "sauvola", f"Sauvola threshold (window {SAUVOLA_WINDOW}, k {SAUVOLA_K}), polarity from Otsu's minority side",
             sauvola_segmentation),
    Baseline(Task.TAMPERED_TEXT_DETECTION, "all-real", "all ground-truth text labelled real", all_real_tampering),
    Baseline(Task.TAMPERED_TEXT_DETECTION, "detector-boxes-real", "stroke detector closed into word boxes, all labelled real",
             detector_boxes_real_tampering),
)
# Baselines that read the ground truth: upper references for a classical pipeline, not methods.
ORACLE_BASELINES = frozenset({"telea-oracle-mask", "all-real"})


def baselines_for(task: Task) -> list[Baseline]:
    return [b for b in BASELINES if b.task == task]


def prediction_path(out_dir: Path, task: Task, name: str) -> Path:
    """Where a prediction file for sample `name` goes (the names the folder evaluation looks for)."""
    return out_dir / f"{name}{task.spec.result_file.suffix}"


def run_baseline(baseline: Baseline, samples: list, out_dir: str | os.PathLike, *, progress: bool = True) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Write the baseline's prediction for every sample into `out_dir`.

    Returns ((prediction, ground truth) pairs, errors); a sample that cannot be read is reported and
    skipped, the others are still written.
    """
    out_dir = Path(out_dir)
    pairs: list[tuple[Path, Path]] = []
    errors: list[str] = []
    for sample in tqdm(samples, desc=f"{baseline.task.short}: {baseline.name}", unit="img", disable=not progress, file=sys.stderr):
        try:
            prediction = baseline.predict(sample)
        except (ImageError, ValueError, OSError) as error:
            errors.append(str(error))
            continue
        path = prediction_path(out_dir, baseline.task, sample.name)
        write_image(path, baseline.task.spec.store(prediction))
        pairs.append((path, ground_truth_path(sample, baseline.task)))
    return pairs, errors


# The field of each task's layout sample (`upocr.data.layouts`) that holds the file the metrics read.
GROUND_TRUTH_FIELDS: dict[Task, str] = {
    Task.TEXT_REMOVAL: "label",
    Task.TEXT_SEGMENTATION: "label",
    Task.TAMPERED_TEXT_DETECTION: "gt",
}


def ground_truth_path(sample, task: Task) -> Path:
    """The ground-truth file the metrics read for a sample (removal/segmentation `label`, tampering `gt`)."""
    return Path(getattr(sample, GROUND_TRUTH_FIELDS[task]))
