"""Training the word classifier from Tampered-IC13-layout data (`upocr synth` forgeries).

Every word box of every training image becomes one example (features from `features.word_features`,
label tampered or not). Images, not words, are split into training and validation (a word's
features depend on its image's other words). A HistGradientBoostingClassifier (scikit-learn, needed
only here) learns on the training part; the decision threshold is the validation probability that
flags `false_alarm_rate` of the genuine validation words; the trees are exported to npz.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from upocr.data.layouts import TAMPERED_TEXT, read_tampering_boxes, tampering_samples
from upocr.forensics.features import FEATURE_NAMES, word_features
from upocr.forensics.model import TreeEnsemble, from_sklearn
from upocr.io import read_image
from upocr.utils import atomic_output


@dataclass
class WordTable:
    """Examples: features (N, F), labels (N,) 1 = tampered, the image index of each word, image names."""

    features: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray
    names: list[str]


FOUND_INSIDE = 0.5  # a found region is tampered when this share of it lies in tampered boxes
FOUND_OUTSIDE = 0.1  # ... and genuine below this share; in between it is left out (half a forgery)

Finder = Callable[[np.ndarray], list]


def found_region_labels(regions: Sequence[np.ndarray], boxes: Sequence[tuple[int, int, int, int, int]],
                        shape: tuple[int, int]) -> np.ndarray:
    """Per found region: 1 tampered, 0 genuine (also regions on no word: the pipeline should not flag
    them), -1 ambiguous, from the share of its box that lies in tampered ground-truth boxes."""
    tampered = np.zeros(shape, np.uint8)
    for x1, y1, x2, y2, label in boxes:
        if label == TAMPERED_TEXT:
            tampered[max(y1, 0):y2 + 1, max(x1, 0):x2 + 1] = 1
    labels = []
    for region in regions:
        points = np.asarray(region, np.float32).reshape(-1, 2)
        x1, y1 = np.clip(np.floor(points.min(0)).astype(int), 0, None)
        x2, y2 = np.ceil(points.max(0)).astype(int)
        share = float(tampered[y1:y2 + 1, x1:x2 + 1].mean()) if y2 >= y1 and x2 >= x1 else 0.0
        labels.append(1 if share >= FOUND_INSIDE else 0 if share < FOUND_OUTSIDE else -1)
    return np.array(labels, np.int8)


def collect_words(roots: Sequence[str | os.PathLike], split: str = "train", *, limit: int | None = None,
                  progress: bool = True, finder: Finder | None = None, finder_every: int = 0) -> WordTable:
    """Features and labels of every GT word box of the `split` images under each root; with `finder`,
    every `finder_every`-th image also adds the regions the finder returns (labelled by
    `found_region_labels`), so the trees also learn the regions they will be given at inference."""
    samples = [sample for root in roots for sample in tampering_samples(root, split)]
    if limit:
        samples = samples[:limit]
    if not samples:
        raise ValueError(f"no {split} tampering images under {', '.join(str(r) for r in roots)}")
    features, labels, owners, names = [], [], [], []
    for index, sample in enumerate(tqdm(samples, desc="word features", unit="image", disable=not progress)):
        boxes = read_tampering_boxes(sample.gt)
        if not boxes:
            continue
        image = read_image(sample.image)
        features.append(word_features(image, [box[:4] for box in boxes]))
        labels.append(np.array([box[4] == TAMPERED_TEXT for box in boxes], np.int8))
        owners.append(np.full(len(boxes), len(names), np.int32))
        if finder is not None and finder_every and index % finder_every == 0:
            regions = finder(image)
            found = found_region_labels(regions, boxes, image.shape[:2])
            keep = found >= 0
            if keep.any():
                features.append(word_features(image, [r for r, k in zip(regions, keep) if k]))
                labels.append(found[keep])
                owners.append(np.full(int(keep.sum()), len(names), np.int32))
        names.append(sample.name)
    return WordTable(np.concatenate(features), np.concatenate(labels), np.concatenate(owners), names)


def save_table(table: WordTable, path: str | os.PathLike) -> None:
    """Keep measured features (npz) to retrain without measuring again (`load_table`)."""
    with atomic_output(Path(path)) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, features=table.features, labels=table.labels, image_index=table.image_index,
                                names=np.array(table.names), feature_names=np.array(FEATURE_NAMES))


def load_table(path: str | os.PathLike) -> WordTable:
    with np.load(path, allow_pickle=False) as data:
        if tuple(str(n) for n in data["feature_names"]) != FEATURE_NAMES:
            raise ValueError(f"{path}: features of another version; measure again")
        return WordTable(data["features"], data["labels"], data["image_index"], [str(n) for n in data["names"]])


def validation_images(names: Sequence[str], share: float) -> np.ndarray:
    """Bool per image: in the validation part (a stable hash of the name, so reruns agree)."""
    return np.array([int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share for name in names])


def threshold_for_false_alarms(probabilities: np.ndarray, labels: np.ndarray, rate: float) -> float:
    """The smallest threshold flagging at most `rate` of the genuine words (flag = probability > threshold)."""
    genuine = np.sort(probabilities[labels == 0])
    if genuine.size == 0:
        return 0.5
    allowed = int(np.floor(rate * genuine.size))
    return float(genuine[genuine.size - allowed - 1]) if allowed < genuine.size else 0.0


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half), without scikit-learn."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    order = np.argsort(np.concatenate([positive, negative]), kind="mergesort")
    ranks = np.empty(order.size)
    values = np.concatenate([positive, negative])[order]
    # average ranks over ties
    _, first, counts = np.unique(values, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    return float((ranks[:positive.size].sum() - positive.size * (positive.size + 1) / 2) / (positive.size * negative.size))


def word_scores(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    flagged = probabilities > threshold
    genuine, tampered = labels == 0, labels == 1
    return {
        "words": int(labels.size), "tampered_words": int(tampered.sum()),
        "auc": roc_auc(probabilities, labels),
        "false_alarm_rate": float(flagged[genuine].mean()) if genuine.any() else float("nan"),
        "recall": float(flagged[tampered].mean()) if tampered.any() else float("nan"),
    }


def fit(table: WordTable, *, validation_share: float = 0.2, false_alarm_rate: float = 0.01, max_iter: int = 300,
        learning_rate: float = 0.08, max_leaf_nodes: int = 31, seed: int = 0, record: dict | None = None) -> TreeEnsemble:
    """Train on the table's training images, choose the threshold on its validation images, export."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        raise ImportError("training the tampering classifier needs scikit-learn: pip install 'upocr[train]'") from None
    validation = validation_images(table.names, validation_share)[table.image_index]
    train = ~validation
    if not table.labels[train].any() or not table.labels[validation].any():
        raise ValueError("training and validation parts both need tampered words; generate more data")
    started = time.perf_counter()
    model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                                           min_samples_leaf=40, l2_regularization=1.0, early_stopping=True,
                                           validation_fraction=0.1, n_iter_no_change=30, random_state=seed)
    model.fit(table.features[train], table.labels[train])
    seconds = time.perf_counter() - started
    probabilities = model.predict_proba(table.features[validation])[:, 1]
    threshold = threshold_for_false_alarms(probabilities, table.labels[validation], false_alarm_rate)
    validation_scores = word_scores(probabilities, table.labels[validation], threshold)
    record = {
        **(record or {}),
        "learner": "sklearn HistGradientBoostingClassifier", "iterations": int(model.n_iter_),
        "learning_rate": learning_rate, "max_leaf_nodes": max_leaf_nodes, "seed": seed,
        "train_images": int(len(set(table.image_index[train].tolist()))),
        "validation_images": int(len(set(table.image_index[validation].tolist()))),
        "train_words": int(train.sum()), "train_tampered_words": int(table.labels[train].sum()),
        "target_false_alarm_rate": false_alarm_rate, "threshold": threshold, "validation": validation_scores,
        "fit_seconds": round(seconds, 1),
    }
    return from_sklearn(model, FEATURE_NAMES, threshold, record)


def train_classifier(roots: Sequence[str | os.PathLike], out: str | os.PathLike, *, split: str = "train",
                     limit: int | None = None, progress: bool = True, features_file: str | os.PathLike | None = None,
                     finder: Finder | None = None, finder_every: int = 0, **options) -> TreeEnsemble:
    """Features from every root, fit, save to `out`; returns the ensemble (its `record` says how).
    `features_file`: read the features from there when it exists, else measure and write them there."""
    started = time.perf_counter()
    if features_file is not None and Path(features_file).is_file():
        table = load_table(features_file)
    else:
        table = collect_words(roots, split, limit=limit, progress=progress, finder=finder, finder_every=finder_every)
        if features_file is not None:
            save_table(table, features_file)
    feature_seconds = time.perf_counter() - started
    record = {"data": [str(Path(r)) for r in roots], "split": split, "images": len(table.names),
              "words": int(table.labels.size), "tampered_words": int(table.labels.sum()),
              "feature_seconds": round(feature_seconds, 1),
              "found_regions_every": finder_every if finder is not None else 0}
    record.update(_synth_runs(roots))
    ensemble = fit(table, record=record, **options)
    ensemble.record["total_seconds"] = round(time.perf_counter() - started, 1)
    ensemble.save(out)
    return ensemble


def _synth_runs(roots: Sequence[str | os.PathLike]) -> dict:
    """The `upocr synth` runs (seed, scenes, count) behind the data, from each root's manifest."""
    from upocr.data.synth.generate import read_manifest

    runs = []
    for root in roots:
        try:
            manifest = read_manifest(Path(root))
        except ValueError:
            continue
        runs += [{key: run.get(key) for key in ("task", "split", "seed", "count", "scenes", "size")}
                 for run in manifest["runs"] if run.get("task") == "tampering"]
    return {"synth_runs": runs} if runs else {}
