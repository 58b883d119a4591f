"""Pixel confusion matrices for text segmentation and tampered text detection (original's way).

The original (`eval/segmentation.py`) accumulates ONE confusion matrix over every pixel of the whole
test set (rows = ground truth, columns = prediction); ground-truth values outside [0, num_classes)
(the ignore value) are dropped. Per class: IoU = TP/(TP+FP+FN), P = TP/(TP+FP), R = TP/(TP+FN),
F = 2PR/(P+R); 0/0 gives NaN. Segmentation reports class 1 (text); tampering reports class 1 (real
text) and class 2 (tampered text) and their `nanmean`s (mIoU, mF), background excluded.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """`num_classes` x `num_classes` pixel counts, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image (any shape, equal for both). gt values outside [0, num_classes) are ignored."""
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        keep = (gt >= 0) & (gt < self.num_classes)
        gt_kept = gt[keep].astype(np.int64)
        pred_kept = pred[keep].astype(np.int64)
        if pred_kept.size and (pred_kept.min() < 0 or pred_kept.max() >= self.num_classes):
            raise ValueError(f"prediction values must be classes 0..{self.num_classes - 1}")
        counts = np.bincount(self.num_classes * gt_kept + pred_kept, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    def reset(self) -> None:
        self.matrix[:] = 0

    @property
    def pixels(self) -> int:
        return int(self.matrix.sum())

    def _ratio(self, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return numerator.astype(np.float64) / denominator.astype(np.float64)

    def iou(self) -> np.ndarray:
        tp = np.diag(self.matrix)
        return self._ratio(tp, self.matrix.sum(axis=1) + self.matrix.sum(axis=0) - tp)

    def precision(self) -> np.ndarray:
        return self._ratio(np.diag(self.matrix), self.matrix.sum(axis=0))

    def recall(self) -> np.ndarray:
        return self._ratio(np.diag(self.matrix), self.matrix.sum(axis=1))

    def f_score(self) -> np.ndarray:
        p, r = self.precision(), self.recall()
        with np.errstate(divide="ignore", invalid="ignore"):
            return 2 * p * r / (p + r)

    def class_scores(self, index: int) -> dict:
        """{iou, precision, recall, f_score} of one class (floats, NaN where undefined)."""
        return {
            "iou": float(self.iou()[index]),
            "precision": float(self.precision()[index]),
            "recall": float(self.recall()[index]),
            "f_score": float(self.f_score()[index]),
        }

    def compute(self) -> dict:
        """The task's report: segmentation_scores for 2 classes, tampering_scores for 3."""
        if self.num_classes == 2:
            return segmentation_scores(self)
        if self.num_classes == 3:
            return tampering_scores(self)
        raise ValueError(f"no report defined for {self.num_classes} classes")


def segmentation_scores(matrix: ConfusionMatrix) -> dict:
    """{fg_iou, precision, recall, f_score} of the text class (1), plus the pixel count."""
    scores = matrix.class_scores(1)
    return {
        "fg_iou": scores["iou"],
        "precision": scores["precision"],
        "recall": scores["recall"],
        "f_score": scores["f_score"],
        "pixels": matrix.pixels,
    }


def tampering_scores(matrix: ConfusionMatrix) -> dict:
    """{real: {...}, tampered: {...}, miou, mf}: classes 1 and 2, means with NaNs skipped (nanmean)."""
    real, tampered = matrix.class_scores(1), matrix.class_scores(2)
    return {
        "real": real,
        "tampered": tampered,
        "miou": _nanmean([real["iou"], tampered["iou"]]),
        "mf": _nanmean([real["f_score"], tampered["f_score"]]),
        "pixels": matrix.pixels,
    }


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
