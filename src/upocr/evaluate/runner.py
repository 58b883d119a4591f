"""`upocr evaluate model` / `baselines`: run the model (and classical baselines) on each task's test split,
write their predictions as files, and score every method with the same file-based metric code.

Model predictions follow the original's evaluation path: every image is read as the original reads it
(PIL `.convert('RGB')`), resized to size x size bicubic and run once (`upocr.predict.Predictor` in resize
mode). Text removal keeps the size x size output (clamp, *255, truncate; no resize back, no blending
with the input) as a PNG; segmentation and tampering outputs are resized back bilinearly to the image
size and decoded (channel mean > threshold; argmax) into a 0/255 mask / {0,1,2} class map.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from upocr.evaluate import baselines as baseline_methods
from upocr.evaluate.fid import fid_for_folders
from upocr.evaluate.confusion import ConfusionMatrix
from upocr.evaluate.pixel_tasks import (
    evaluate_segmentation_pairs,
    evaluate_tampering_pairs,
    segmentation_pair_reader,
    tampering_pair_reader,
)
from upocr.evaluate.removal import (
    REMOVAL_SIZE,
    FolderEvaluation,
    evaluate_removal_pairs,
    prepare_removal_pair,
)
from upocr.evaluate.readers import read_plain, read_rgb_as_original
from upocr.evaluate.report import markdown_report
from upocr.io import ImageError, write_image
from upocr.removal import REMOVAL_PIPELINES, SEGMENTATION_FINDERS
from upocr.tasks import SEGMENTATION_THRESHOLD, Task, decode_removal, encode_segmentation_target
from upocr.visualize import image_grid

MODEL_METHOD = "model"
# Text removal only: one more row per removal pipeline of the Predictor (upocr.removal: "words-telea",
# "telea-fill", ...), each what `upocr remove-text --removal NAME` writes; none uses ground truth.
MODEL_REMOVAL_METHODS = {name: f"model+{name}" for name in REMOVAL_PIPELINES if name != "raw"}
# Tampering only: one more row, `detect-tampering --tampering words` (upocr.forensics), beside the model's own.
# Text segmentation likewise: one row per segmentation finder but the model's own mask (`--segmentation NAME`).
MODEL_SEGMENTATION_METHODS = {name: f"model+{name}" for name in SEGMENTATION_FINDERS if name != "model"}
TAMPERING_WORDS_METHOD = "words+forensics"
RANKING_PIPELINE = "telea-fill"  # the sample pictures rank images by the model's own mask, Telea-filled
SPLIT = "test"


@dataclass
class MethodResult:
    task: Task
    method: str
    evaluation: FolderEvaluation
    pairs: list[tuple[Path, Path]]  # (prediction, ground truth) files that were scored


@dataclass
class EvaluationReport:
    results: list[MethodResult] = field(default_factory=list)
    picture: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def by_task(self) -> dict[Task, dict[str, dict]]:
        table: dict[Task, dict[str, dict]] = {}
        for result in self.results:
            table.setdefault(result.task, {})[result.method] = result.evaluation.metrics
        return table

    @property
    def errors(self) -> list[str]:
        # Once each: a bad input image fails every method alike (D22).
        return list(dict.fromkeys(e for r in self.results for e in r.evaluation.errors))

    def markdown(self) -> str:
        return markdown_report(self.by_task())

    def to_json(self) -> dict:
        tasks: dict[str, dict] = {}
        for result in self.results:
            tasks.setdefault(result.task.short, {})[result.method] = result.evaluation.to_json()
        return {"settings": self.settings, "tasks": tasks, "picture": self.picture}


def split_samples(task: Task, data_root: str | os.PathLike, *, limit: int | None = None) -> list:
    """The task's test split from the benchmark layout (`upocr.data.layouts`), first `limit` by name."""
    from upocr.data.layouts import task_samples

    samples = list(task_samples(task, data_root, SPLIT))
    return samples[:limit] if limit is not None else samples


def score(task: Task, pairs: list[tuple[Path, Path]], *, progress: bool = True) -> FolderEvaluation:
    """The task's metrics over (prediction, ground truth) file pairs; masks/class maps as written here."""
    return _SCORERS[task](pairs, progress=progress)


# Each task's metrics over (prediction, ground truth) file pairs, predictions as `TaskSpec.store` writes them.
_SCORERS: dict[Task, Callable[..., FolderEvaluation]] = {
    Task.TEXT_REMOVAL: evaluate_removal_pairs,
    Task.TEXT_SEGMENTATION: evaluate_segmentation_pairs,
    Task.TAMPERED_TEXT_DETECTION: partial(evaluate_tampering_pairs, pred_format="classes"),
}


def write_model_predictions(
    predictor, task: Task, samples: Sequence, out_dir: Path, *, full_resolution: bool = False, progress: bool = True
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Run the predictor on every sample; write what the evaluation reads. Returns (pairs, errors).

    full_resolution (text removal): write the predictor's full-resolution `.image` (its `removal` mode)
    instead of the raw output, which is scored at size x size as the original saves it."""
    pairs: list[tuple[Path, Path]] = []
    errors: list[str] = []
    if task == Task.TEXT_REMOVAL and not full_resolution and getattr(predictor, "removal", "raw") != "raw":
        predictor = predictor.with_options(removal="raw")  # `.output` must be the full-resolution removal output
    for sample in tqdm(samples, desc=f"{task.short}: model", unit="img", disable=not progress, file=sys.stderr):
        try:
            image = read_rgb_as_original(sample.image)
            if task == Task.TEXT_REMOVAL and not full_resolution:
                # Resize here (the original's test transform) so the output stays size x size, as it saves it.
                pixels = np.asarray(image.resize((predictor.size, predictor.size), Image.Resampling.BICUBIC))
                # decode_removal of the raw output (not `.image`, which may blend in input pixels).
                result = decode_removal(torch.from_numpy(predictor.predict(pixels, task).output)).numpy()
            else:
                result = predictor.predict(np.asarray(image), task).result
        except (ImageError, ValueError) as error:
            errors.append(str(error))
            continue
        path = baseline_methods.prediction_path(out_dir, task, sample.name)
        write_image(path, task.spec.store(result))
        pairs.append((path, baseline_methods.ground_truth_path(sample, task)))
    return pairs, errors


def _run_method(task: Task, method: str, pairs: list, errors: list[str], pred_dir: Path, *, fid_weights, progress: bool) -> MethodResult:
    evaluation = score(task, pairs, progress=progress) if pairs else FolderEvaluation(metrics={"count": 0}, errors=[], warnings=[])
    evaluation.errors[:0] = errors
    if task == Task.TEXT_REMOVAL:
        gt_dir = pairs[0][1].parent if pairs else pred_dir
        evaluation.metrics.update(fid_for_folders(gt_dir, pred_dir, weights=fid_weights, progress=progress))
    return MethodResult(task=task, method=method, evaluation=evaluation, pairs=pairs)


def evaluate_on_benchmarks(
    data_root: str | os.PathLike,
    *,
    predictor=None,
    tasks: Sequence[Task | str] | None = None,
    baselines: bool = True,
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    picture: str | os.PathLike | None = None,
    picture_samples: int = 3,
    fid_weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Score the model (when `predictor` is given) and/or the classical baselines on each task's test split.

    Predictions go to `out_dir/<task>/<method>/` (a temporary folder, removed afterwards, when None).
    `picture`: a PNG with `picture_samples` examples per task (input | each method | ground truth).
    """
    from upocr.data.layouts import available_tasks

    task_list = [Task.parse(t) for t in tasks] if tasks else available_tasks(data_root)
    if not task_list:
        raise FileNotFoundError(f"{data_root}: no benchmark test data found (see docs/evaluation.md for the layouts)")
    if predictor is None and not baselines:
        raise ValueError("nothing to evaluate: give a model or ask for baselines")
    temporary = out_dir is None
    root = Path(tempfile.mkdtemp(prefix="upocr-eval-")) if temporary else Path(out_dir)
    report = EvaluationReport(settings={"data_root": str(data_root), "split": SPLIT, "limit": limit,
                                        "size": getattr(predictor, "size", REMOVAL_SIZE),
                                        "segmentation_threshold": getattr(predictor, "threshold", SEGMENTATION_THRESHOLD)})
    try:
        samples_by_task = {}
        for task in task_list:
            samples = split_samples(task, data_root, limit=limit)
            samples_by_task[task] = samples
            if predictor is not None:
                pred_dir = root / task.short / MODEL_METHOD
                pairs, errors = write_model_predictions(predictor, task, samples, pred_dir, progress=progress)
                report.results.append(_run_method(task, MODEL_METHOD, pairs, errors, pred_dir, fid_weights=fid_weights, progress=progress))
                if task == Task.TEXT_REMOVAL and getattr(predictor, "removal", None) is not None:
                    for mode, method in MODEL_REMOVAL_METHODS.items():
                        pred_dir = root / task.short / method
                        pairs, errors = write_model_predictions(predictor.with_options(removal=mode), task, samples, pred_dir,
                                                                full_resolution=True, progress=progress)
                        report.results.append(_run_method(task, method, pairs, errors, pred_dir, fid_weights=fid_weights, progress=progress))
                if task == Task.TEXT_SEGMENTATION and getattr(predictor, "segmentation", None) is not None:
                    for finder, method in MODEL_SEGMENTATION_METHODS.items():
                        pred_dir = root / task.short / method
                        pairs, errors = write_model_predictions(predictor.with_options(segmentation=finder), task, samples,
                                                                pred_dir, progress=progress)
                        report.results.append(_run_method(task, method, pairs, errors, pred_dir, fid_weights=fid_weights, progress=progress))
                if task == Task.TAMPERED_TEXT_DETECTION and getattr(predictor, "tampering", None) is not None:
                    pred_dir = root / task.short / TAMPERING_WORDS_METHOD  # the per-word forensic classifier
                    pairs, errors = write_model_predictions(predictor.with_options(tampering="words"), task, samples,
                                                            pred_dir, progress=progress)
                    report.results.append(_run_method(task, TAMPERING_WORDS_METHOD, pairs, errors, pred_dir,
                                                      fid_weights=fid_weights, progress=progress))
            if baselines:
                for baseline in baseline_methods.baselines_for(task):
                    pred_dir = root / task.short / baseline.name
                    pairs, errors = baseline_methods.run_baseline(baseline, samples, pred_dir, progress=progress)
                    report.results.append(_run_method(task, baseline.name, pairs, errors, pred_dir, fid_weights=fid_weights, progress=progress))
        if picture is not None:
            report.picture = write_samples_picture(picture, report, samples_by_task, count=picture_samples)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    return report


# --------------------------------------------------------------------------------------------
# Picture: input | each method | ground truth, a few samples per task
# --------------------------------------------------------------------------------------------


def _removal_ground_truth_picture(sample, image: np.ndarray) -> np.ndarray:
    return np.asarray(read_rgb_as_original(sample.label))


def _segmentation_ground_truth_picture(sample, image: np.ndarray) -> np.ndarray:
    """White text on black, ignored pixels grey: the image the model is trained to output."""
    from upocr.data.layouts import read_segmentation_label

    target = encode_segmentation_target(read_segmentation_label(sample.label))
    return (target.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _tampering_ground_truth_picture(sample, image: np.ndarray) -> np.ndarray:
    from upocr.data.layouts import read_tampering_label

    return _overlay(Task.TAMPERED_TEXT_DETECTION, image, read_tampering_label(sample.gt, size=image.shape[:2]))


# Each task's ground truth as a picture for the samples picture: (sample, its image) -> RGB.
_GROUND_TRUTH_PICTURES: dict[Task, Callable[[Any, np.ndarray], np.ndarray]] = {
    Task.TEXT_REMOVAL: _removal_ground_truth_picture,
    Task.TEXT_SEGMENTATION: _segmentation_ground_truth_picture,
    Task.TAMPERED_TEXT_DETECTION: _tampering_ground_truth_picture,
}


def _prediction_as_it_is(path: Path, image: np.ndarray) -> np.ndarray:
    return read_plain(path)


def _tampering_prediction_picture(path: Path, image: np.ndarray) -> np.ndarray:
    """Class values 0, 1, 2 are invisible as a picture: drawn over the image."""
    return _overlay(Task.TAMPERED_TEXT_DETECTION, image, read_plain(path))


# Each task's prediction file as a picture: (file, the input image) -> RGB or grey.
_PREDICTION_PICTURES: dict[Task, Callable[[Path, np.ndarray], np.ndarray]] = {
    Task.TEXT_REMOVAL: _prediction_as_it_is,
    Task.TEXT_SEGMENTATION: _prediction_as_it_is,
    Task.TAMPERED_TEXT_DETECTION: _tampering_prediction_picture,
}


def _overlay(task: Task, image: np.ndarray, result: np.ndarray) -> np.ndarray:
    overlay = task.spec.overlay
    assert overlay is not None, f"{task.title} has no overlay"
    return overlay.draw(image, result)


def _removal_psnr(pred_path: Path, gt_path: Path) -> float:
    """PSNR (dB) at the metric's 512x512; inf for identical images."""
    pred, gt = prepare_removal_pair(read_rgb_as_original(pred_path), read_rgb_as_original(gt_path))
    mse = float(np.mean((pred.astype(np.float64) / 255 - gt.astype(np.float64) / 255) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def _mean_text_iou(matrix: ConfusionMatrix, classes: tuple[int, ...]) -> float:
    """Mean IoU over the text classes in the ground truth or the prediction; 1 with neither."""
    ious = matrix.iou()[list(classes)]  # NaN: a class neither in the ground truth nor predicted
    return float(np.nanmean(ious)) if not np.isnan(ious).all() else 1.0


def _segmentation_iou(pred_path: Path, gt_path: Path) -> float:
    matrix = ConfusionMatrix(2)
    matrix.update(*segmentation_pair_reader()(gt_path, pred_path))
    return _mean_text_iou(matrix, (1,))


def _tampering_iou(pred_path: Path, gt_path: Path) -> float:
    matrix = ConfusionMatrix(3)
    matrix.update(*tampering_pair_reader(pred_format="classes")(gt_path, pred_path))
    return _mean_text_iou(matrix, (1, 2))


# Each task's score of one (prediction, ground truth) file pair, higher is better.
_PER_IMAGE_SCORES: dict[Task, Callable[[Path, Path], float]] = {
    Task.TEXT_REMOVAL: _removal_psnr,
    Task.TEXT_SEGMENTATION: _segmentation_iou,
    Task.TAMPERED_TEXT_DETECTION: _tampering_iou,
}


def per_image_score(task: Task, pred_path: Path, gt_path: Path) -> float:
    """One image's score, higher is better (to rank the picture's rows): removal PSNR (dB, at the metric's
    512x512), segmentation text IoU, tampering mean IoU over the text classes in the ground truth or the
    prediction. An image with nothing to find and nothing found scores 1 (IoU) / inf (PSNR)."""
    return _PER_IMAGE_SCORES[task](pred_path, gt_path)


def successes_and_failures(task: Task, report: EvaluationReport, samples: Sequence, count: int) -> list:
    """`count` samples from the model's best to its worst test image (evenly spaced in the ranking, so
    the middle rows are typical); the first `count` samples when the model was not evaluated."""
    results = {r.method: r for r in report.results if r.task == task}
    model = results.get(MODEL_REMOVAL_METHODS[RANKING_PIPELINE]) or results.get(MODEL_METHOD)
    if model is None or count < 1:
        return list(samples[:count])
    by_gt = {baseline_methods.ground_truth_path(s, task): s for s in samples}
    ranked = []
    for pred, gt in model.pairs:
        if gt not in by_gt:
            continue
        try:
            ranked.append((per_image_score(task, pred, gt), str(gt), by_gt[gt]))
        except (ImageError, ValueError, OSError):
            continue
    ranked.sort(key=lambda item: (-item[0], item[1]))
    if not ranked:
        return list(samples[:count])
    picks = sorted({round(i * (len(ranked) - 1) / max(count - 1, 1)) for i in range(count)})
    return [ranked[i][2] for i in picks]


def write_samples_picture(path: str | os.PathLike, report: EvaluationReport, samples_by_task: dict, *, count: int) -> Path:
    """Input | each method | ground truth, `count` rows per task from the model's best to its worst image
    (`successes_and_failures`). Tampering: real text green, tampered red over the image."""
    grids = []
    for task, samples in samples_by_task.items():
        methods = [r for r in report.results if r.task == task]
        rows = []
        for sample in successes_and_failures(task, report, samples, count):
            try:
                image = np.asarray(read_rgb_as_original(sample.image))
                row = [image]
                for result in methods:
                    by_gt = {gt: pred for pred, gt in result.pairs}
                    pred = by_gt.get(baseline_methods.ground_truth_path(sample, task))
                    row.append(_PREDICTION_PICTURES[task](pred, image) if pred is not None else np.full((8, 8, 3), 255, np.uint8))
                row.append(_GROUND_TRUTH_PICTURES[task](sample, image))
            except (ImageError, ValueError, OSError):
                continue
            rows.append(row)
        if rows:
            titles = [f"{task.short}: input", *(r.method for r in methods), "ground truth"]
            grids.append(image_grid(rows, titles, height=192))
    if not grids:
        raise ValueError("no samples could be drawn")
    width = max(g.shape[1] for g in grids)
    stacked = np.concatenate([np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0)), constant_values=255) for g in grids])
    return write_image(path, stacked)
