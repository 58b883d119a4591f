"""Folder-based evaluation of text segmentation and tampered text detection.

Predictions are paired with ground truths by name (the ground truth's stem, optionally followed by a
suffix such as `_mask` or `_classes` that upocr writes), read as masks / class maps or as the model's
raw output images, brought to the ground truth's size the original's way, and added to one confusion
matrix over all pixels of the set (`upocr.evaluate.confusion`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from upocr.evaluate.confusion import ConfusionMatrix
from upocr.evaluate.removal import LISTED_NOTES, FolderEvaluation, aspect_mismatch, summarise
from upocr.evaluate.readers import check_textseg_label, image_size, read_plain, segmentation_prediction, tampering_prediction
from upocr.io import ImageError, list_images
from upocr.tasks import Task

# Prediction names tried for a ground truth named <key>, in this order: <key><suffix>.<image suffix>;
# first the result file upocr writes (<key>_mask.png, <key>_classes.png).
SEGMENTATION_PRED_SUFFIXES = (Task.TEXT_SEGMENTATION.spec.result_file.name_suffix, "", "_maskfg", "_output", "_raw")
TAMPERING_PRED_SUFFIXES = (Task.TAMPERED_TEXT_DETECTION.spec.result_file.name_suffix, "", "_output", "_raw")
TEXTSEG_LABEL_SUFFIX = "_maskfg"


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------


def index_by_stem(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files under `folder` (recursive) by file stem; the first in sorted order wins."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    index: dict[str, Path] = {}
    for path in list_images([folder]):
        index.setdefault(path.stem, path)
    return index


def find_prediction(index: dict[str, Path], key: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        if key + suffix in index:
            return index[key + suffix]
    return None


def segmentation_ground_truths(gt_dir: str | os.PathLike, split: str = "test") -> dict[str, Path]:
    """Labels by sample name. A TextSeg `semantic_label` folder: `<name>_maskfg.png` -> name (its other
    files are ignored), only the names of `split` when `split.json` lies beside the folder (the label
    folder also holds the train labels); any other folder: every image by stem."""
    from upocr.data.layouts import _read_split_json

    files = index_by_stem(gt_dir)
    textseg = {stem[: -len(TEXTSEG_LABEL_SUFFIX)]: path for stem, path in files.items() if stem.endswith(TEXTSEG_LABEL_SUFFIX)}
    split_file = Path(gt_dir).parent / "split.json"
    if textseg and split_file.is_file():
        names = set(_read_split_json(split_file).get(split, []))
        textseg = {name: path for name, path in textseg.items() if name in names}
        if not textseg:
            raise FileNotFoundError(f"{gt_dir}: no label of the {split!r} split listed in {split_file}")
    return textseg or files


def tampering_ground_truths(gt_dir: str | os.PathLike) -> dict[str, Path]:
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"{gt_dir}: no such folder")
    return {path.stem: path for path in sorted(gt_dir.rglob("*.txt")) if not path.name.startswith(".")}


def sibling_image_folder(gt_dir: str | os.PathLike) -> Path | None:
    """Tampered-IC13 keeps images in `<split>_img` beside `<split>_gt`; None when there is none."""
    gt_dir = Path(gt_dir)
    if gt_dir.name.endswith("_gt"):
        candidate = gt_dir.with_name(gt_dir.name[: -len("_gt")] + "_img")
        if candidate.is_dir():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# Folder evaluation
# --------------------------------------------------------------------------------------------


def match_predictions(
    keys_to_gt: dict[str, Path], pred_index: dict[str, Path], suffixes: tuple[str, ...]
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(prediction, ground truth) pairs by name, and warnings about files left out on either side."""
    warnings: list[str] = []
    matched = [(key, gt, find_prediction(pred_index, key, suffixes)) for key, gt in sorted(keys_to_gt.items())]
    missing = [key for key, _, pred in matched if pred is None]
    pairs = [(pred, gt) for _, gt, pred in matched if pred is not None]
    if not pairs:
        raise FileNotFoundError(
            f"no prediction matches any ground truth ({len(keys_to_gt)} ground truths, {len(pred_index)} "
            f"prediction images; names tried: <name>{{{','.join(suffixes)}}}.png)"
        )
    if missing:
        shown = ", ".join(missing[:LISTED_NOTES]) + (", ..." if len(missing) > LISTED_NOTES else "")
        warnings.append(f"{len(missing)} of {len(keys_to_gt)} ground truths have no prediction and are not evaluated: {shown}")
    used = {pred for pred, _ in pairs}
    unused = [path for path in pred_index.values() if path not in used]
    if unused:
        warnings.append(f"{len(unused)} prediction images match no ground truth and are ignored, e.g. {unused[0]}")
    return pairs, warnings


def _missing_count(keys_to_gt: dict[str, Path], pairs: list[tuple[Path, Path]]) -> int:
    return len(keys_to_gt) - len(pairs)


def _confusion_over_pairs(
    pairs: list[tuple[Path, Path]],
    *,
    num_classes: int,
    read_pair: Callable[[Path, Path], tuple[np.ndarray, np.ndarray]],
    description: str,
    progress: bool,
) -> FolderEvaluation:
    """One confusion matrix over every (prediction, ground truth) pair; unreadable pairs -> errors;
    predictions whose aspect ratio differs from their ground truth's -> one warning."""
    matrix = ConfusionMatrix(num_classes)
    errors: list[str] = []
    distorted: list[str] = []
    count = 0
    for pred_path, gt_path in tqdm(pairs, desc=description, unit="img", disable=not progress, file=sys.stderr):
        try:
            pred_size = image_size(pred_path)
            gt, pred = read_pair(gt_path, pred_path)
            matrix.update(gt, pred)
        except (ImageError, ValueError) as error:
            message = str(error)
            errors.append(message if str(pred_path) in message or str(gt_path) in message else f"{pred_path}: {message}")
            continue
        count += 1
        if note := aspect_mismatch(pred_path, pred_size, gt.shape[:2]):
            distorted.append(note)
    metrics = matrix.compute()
    metrics["count"] = count
    warnings = summarise(distorted, "predictions differ in aspect ratio from their ground truth (resized anyway)")
    return FolderEvaluation(metrics=metrics, errors=errors, warnings=warnings)


def segmentation_pair_reader(
    *, threshold: float | None = None, gt_format: str = "textseg"
) -> Callable[[Path, Path], tuple[np.ndarray, np.ndarray]]:
    """(gt path, pred path) -> (gt labels {0,1,255}, prediction {0,1}) at the label's size."""
    from upocr.data.layouts import read_segmentation_label

    if gt_format not in ("textseg", "binary"):
        raise ValueError(f"unknown ground-truth format {gt_format!r}; expected textseg or binary")

    def read_pair(gt_path: Path, pred_path: Path) -> tuple[np.ndarray, np.ndarray]:
        if gt_format == "textseg":
            check_textseg_label(gt_path)
            gt = read_segmentation_label(gt_path)
        else:
            values = read_plain(gt_path)
            gt = ((values if values.ndim == 2 else values.mean(axis=2)) > 127).astype(np.uint8)
        return gt, segmentation_prediction(pred_path, gt.shape[:2], threshold)

    return read_pair


def tampering_pair_reader(
    *, images: dict[str, Path] | None = None, pred_format: str = "auto", channel_order: str = "rgb"
) -> Callable[[Path, Path], tuple[np.ndarray, np.ndarray]]:
    """(gt .txt path, pred path) -> (classes drawn at the image's size, predicted classes)."""
    from upocr.data.layouts import read_tampering_label

    images = images or {}

    def read_pair(gt_path: Path, pred_path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = images.get(gt_path.stem)
        size = image_size(image) if image is not None else read_plain(pred_path).shape[:2]
        gt = read_tampering_label(gt_path, size=size)
        return gt, tampering_prediction(pred_path, size, pred_format=pred_format, channel_order=channel_order)

    return read_pair


def evaluate_segmentation_pairs(
    pairs: list[tuple[Path, Path]], *, threshold: float | None = None, gt_format: str = "textseg", progress: bool = True
) -> FolderEvaluation:
    """Segmentation metrics over explicit (prediction, ground truth) file pairs."""
    return _confusion_over_pairs(
        pairs,
        num_classes=2,
        read_pair=segmentation_pair_reader(threshold=threshold, gt_format=gt_format),
        description="segmentation metrics",
        progress=progress,
    )


def evaluate_tampering_pairs(
    pairs: list[tuple[Path, Path]],
    *,
    images: dict[str, Path] | None = None,
    pred_format: str = "auto",
    channel_order: str = "rgb",
    progress: bool = True,
) -> FolderEvaluation:
    """Tampering metrics over explicit (prediction, ground truth .txt) pairs; `images` by stem give sizes."""
    return _confusion_over_pairs(
        pairs,
        num_classes=3,
        read_pair=tampering_pair_reader(images=images, pred_format=pred_format, channel_order=channel_order),
        description="tampering metrics",
        progress=progress,
    )


def evaluate_segmentation(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    threshold: float | None = None,
    gt_format: str = "textseg",
    progress: bool = True,
) -> FolderEvaluation:
    """Text segmentation: fgIoU, P, R, F of the text class over all pixels of the set.

    pred_dir: 0/255 masks (threshold None) or raw output images (with `threshold`, e.g. 0.4).
    gt_dir: TextSeg labels (`gt_format='textseg'`: 100 text, 200 word effect -> background, 255 ignored;
    read by `upocr.data.layouts.read_segmentation_label`; a `semantic_label` folder works as is) or
    0/255 masks (`gt_format='binary'`).
    """
    ground_truths = segmentation_ground_truths(gt_dir)
    pairs, warnings = match_predictions(ground_truths, index_by_stem(pred_dir), SEGMENTATION_PRED_SUFFIXES)
    result = evaluate_segmentation_pairs(pairs, threshold=threshold, gt_format=gt_format, progress=progress)
    result.warnings[:0] = warnings
    result.missing = _missing_count(ground_truths, pairs)
    return result


def evaluate_tampering(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    pred_format: str = "auto",
    channel_order: str = "rgb",
    progress: bool = True,
) -> FolderEvaluation:
    """Tampered text detection: per-class IoU/P/R/F of real and tampered text, mIoU, mF (nanmean).

    Ground-truth boxes (`<stem>.txt`) are drawn (`upocr.data.layouts.read_tampering_label`) at the size
    of the matching image in `image_dir` (default: the sibling `<split>_img` folder), as the original
    does; without an image the prediction's size is used.
    """
    image_dir = Path(image_dir) if image_dir is not None else sibling_image_folder(gt_dir)
    images = index_by_stem(image_dir) if image_dir is not None else {}
    ground_truths = tampering_ground_truths(gt_dir)
    pairs, warnings = match_predictions(ground_truths, index_by_stem(pred_dir), TAMPERING_PRED_SUFFIXES)
    result = evaluate_tampering_pairs(pairs, images=images, pred_format=pred_format, channel_order=channel_order, progress=progress)
    result.warnings[:0] = warnings
    result.missing = _missing_count(ground_truths, pairs)
    without_image = sorted(key for key in ground_truths if key not in images)
    if images and without_image:
        result.warnings += summarise(without_image, f"ground truths have no image in {image_dir} (boxes drawn at the prediction's size)")
    if not images:
        result.warnings.append("no image folder found: ground-truth boxes drawn at each prediction's size")
    return result
