"""Evaluation with the original UPOCR metrics (paper-exact, quirks included; see docs/evaluation.md).

Array-level metrics (usable during training):
    removal_image_scores, RemovalMetrics, removal_metrics, msssim_original, msssim_multiscale
    ConfusionMatrix, segmentation_scores, tampering_scores
Folder-level evaluation (the CLI's `upocr evaluate removal|segmentation|tampering`):
    evaluate_removal, evaluate_segmentation, evaluate_tampering
Model and baselines on the benchmark test splits (`upocr evaluate model|baselines`):
    upocr.evaluate.runner.evaluate_on_benchmarks, upocr.evaluate.baselines
Files read as the original reads them: upocr.evaluate.readers. FID: upocr.evaluate.fid (statistics) on
the features of upocr.evaluate.inception (the network).
"""

from upocr.evaluate.confusion import ConfusionMatrix, segmentation_scores, tampering_scores
from upocr.evaluate.pixel_tasks import evaluate_segmentation, evaluate_tampering
from upocr.evaluate.removal import (
    FolderEvaluation,
    RemovalMetrics,
    evaluate_removal,
    msssim_multiscale,
    msssim_original,
    removal_image_scores,
    removal_metrics,
)

__all__ = [
    "ConfusionMatrix",
    "FolderEvaluation",
    "RemovalMetrics",
    "evaluate_removal",
    "evaluate_segmentation",
    "evaluate_tampering",
    "msssim_multiscale",
    "msssim_original",
    "removal_image_scores",
    "removal_metrics",
    "segmentation_scores",
    "tampering_scores",
]
