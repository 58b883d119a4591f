"""Choose the text-segmentation threshold for a set of weights on a validation split and store it.

    python scripts/calibrate_threshold.py WEIGHTS_DIR --data-root DATA_ROOT [--split val] [--write]

The original thresholds the channel mean of the output at a fixed 0.4 ("tune this"). A weakly trained
model can be under-confident, so this runs the model once per TextSeg image of `--split` (never the
test split), accumulates one confusion matrix per candidate threshold over all pixels (as the metric
does), prints fgIoU per threshold and, with --write, saves the best with the weights (their inference
defaults' `segmentation_threshold`), which the Predictor, CLI and `evaluate model` then use by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from upocr.data.layouts import read_segmentation_label, segmentation_samples
from upocr.evaluate.confusion import ConfusionMatrix, segmentation_scores
from upocr.io import read_image
from upocr.model.checkpoint import load_model, save_pretrained
from upocr.predict import Predictor
from upocr.weights import TrainingRecord, training_record

CANDIDATES = np.round(np.arange(0.05, 0.501, 0.025), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="a save_pretrained folder")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--split", default="val", help="TextSeg split to calibrate on (default val; never test)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--write", action="store_true", help="store the best threshold with the weights")
    args = parser.parse_args(argv)
    if args.split == "test":
        parser.error("calibrating on the test split would leak it into the results; use val or train")
    model = load_model(args.weights)
    predictor = Predictor(model)
    matrices = {float(t): ConfusionMatrix(2) for t in CANDIDATES}
    samples = segmentation_samples(args.data_root, args.split)[: args.limit]
    for sample in tqdm(samples, desc="calibrating", unit="img", file=sys.stderr):
        score = predictor.predict(read_image(sample.image), "segmentation").output.mean(axis=0)
        label = read_segmentation_label(sample.label)  # 255 (ignore) falls outside [0, 2) and is dropped
        for threshold, matrix in matrices.items():
            matrix.update(label, (score > threshold).astype(np.int64))
    ious = {t: segmentation_scores(m)["fg_iou"] for t, m in matrices.items()}
    for threshold, iou in ious.items():
        print(f"threshold {threshold:.3f}  fgIoU {iou:.4f}")
    best = max(ious, key=lambda t: (np.nan_to_num(ious[t]), -abs(t - 0.4)))
    print(f"best threshold on {len(samples)} {args.split} images: {best:.3f} (fgIoU {ious[best]:.4f})")
    if args.write:
        import dataclasses

        model.inference = dataclasses.replace(model.inference, segmentation_threshold=best)
        record = training_record(args.weights) or TrainingRecord()
        record.segmentation_threshold_from = f"{args.split} split, {len(samples)} images, fgIoU {ious[best]:.4f}"
        save_pretrained(model, args.weights, training=record.to_dict())
        print(f"stored segmentation_threshold={best} in {args.weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
