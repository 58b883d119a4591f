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
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from upocr.data.layouts import TAMPERED_TEXT, read_tampering_boxes, tampering_samples
from upocr.forensics.context import CONTEXT_NAMES, context_features
from upocr.forensics.cnn import (DEFAULT_CROP_LAYOUT, DEFAULT_TRAINING_PRECISION, WIDTH, CropCommittee, CropLayout,
                                 CropNet, image_crops, log_odds, sigmoid, train_crop_net, training_precision)
from upocr.forensics.features import FEATURE_NAMES, FEATURES_VERSION, image_maps, pixel_box, region_boxes, word_features
from upocr.forensics.model import TreeEnsemble, average_ensembles, from_sklearn
from upocr.io import read_image
from upocr.utils import atomic_output


@dataclass
class WordTable:
    """Examples: features (N, F), labels (N,) 1 = tampered, the image index of each word, image names, each
    word's box (x1, y1, x2, y2) and whether a finder found it (else it is a ground-truth box)."""

    features: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray
    names: list[str]
    boxes: np.ndarray
    found: np.ndarray


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
    return labels_from_tampered_pixels(regions, tampered)


def labels_from_tampered_pixels(regions: Sequence[np.ndarray], tampered: np.ndarray) -> np.ndarray:
    """`found_region_labels` from a map of the tampered pixels (nonzero, (H, W)) instead of the boxes."""
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
    features, labels, owners, names, word_boxes, found_flags = [], [], [], [], [], []
    for index, sample in enumerate(tqdm(samples, desc="word features", unit="image", disable=not progress)):
        boxes = read_tampering_boxes(sample.gt)
        if not boxes:
            continue
        image = read_image(sample.image)
        maps = image_maps(image)  # once per image: its label words and its found words read the same maps
        features.append(word_features(image, [box[:4] for box in boxes], maps))
        labels.append(np.array([box[4] == TAMPERED_TEXT for box in boxes], np.int8))
        owners.append(np.full(len(boxes), len(names), np.int32))
        word_boxes.append(np.array([box[:4] for box in boxes], np.float32))
        found_flags.append(np.zeros(len(boxes), bool))
        if finder is not None and finder_every and index % finder_every == 0:
            regions = finder(image)
            found = found_region_labels(regions, boxes, image.shape[:2])
            keep = found >= 0
            if keep.any():
                kept = [r for r, k in zip(regions, keep) if k]
                features.append(word_features(image, kept, maps))
                labels.append(found[keep])
                owners.append(np.full(int(keep.sum()), len(names), np.int32))
                word_boxes.append(np.array([pixel_box(p) for p in region_boxes(kept, image.shape[:2])], np.float32))
                found_flags.append(np.ones(int(keep.sum()), bool))
        names.append(sample.name)
    return WordTable(np.concatenate(features), np.concatenate(labels), np.concatenate(owners), names,
                     np.concatenate(word_boxes), np.concatenate(found_flags))


def save_table(table: WordTable, path: str | os.PathLike) -> None:
    """Keep measured features (npz) to retrain without measuring again (`load_table`)."""
    with atomic_output(Path(path)) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, features=table.features, labels=table.labels, image_index=table.image_index,
                                names=np.array(table.names), feature_names=np.array(FEATURE_NAMES),
                                features_version=np.array(FEATURES_VERSION),
                                boxes=table.boxes, found=table.found)


def load_table(path: str | os.PathLike) -> WordTable:
    with np.load(path, allow_pickle=False) as data:
        version = int(data["features_version"]) if "features_version" in data else 1  # kept since version 2
        if tuple(str(n) for n in data["feature_names"]) != FEATURE_NAMES or "boxes" not in data:
            raise ValueError(f"{path}: features of another version; measure again")
        if version != FEATURES_VERSION:
            raise ValueError(f"{path}: features version {version}, this upocr measures version {FEATURES_VERSION}; "
                             "measure again")
        return WordTable(data["features"], data["labels"], data["image_index"], [str(n) for n in data["names"]],
                         data["boxes"], data["found"])


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


CONTEXT_FOLDS = 4  # the first look's out-of-fold probabilities for the second look's training words


def image_folds(names: Sequence[str], folds: int) -> np.ndarray:
    """Int per image in 0..folds-1 (a stable hash of the name, independent of `validation_images`)."""
    return np.array([int(hashlib.sha1((name + "/fold").encode()).hexdigest()[:8], 16) % folds for name in names])


def word_groups(table: WordTable) -> list[np.ndarray]:
    """The table's words as inference sees them together: per image, the ground-truth boxes and a finder's
    regions apart (two tilings of one page, each its own set of words)."""
    if table.labels.size == 0:
        return []
    key = table.image_index.astype(np.int64) * 2 + table.found
    order = np.argsort(key, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(key[order])) + 1)


def context_table(table: WordTable, probabilities: np.ndarray) -> np.ndarray:
    """(N, len(CONTEXT_NAMES)) context of every word among the words of its image found the same way."""
    out = np.zeros((len(probabilities), len(CONTEXT_NAMES)), np.float32)
    for members in word_groups(table):
        out[members] = context_features(probabilities[members], table.boxes[members])
    return out


def collect_crops(table: WordTable, roots: Sequence[str | os.PathLike], split: str = "train", *,
                  layout: CropLayout = DEFAULT_CROP_LAYOUT, path: str | os.PathLike | None = None,
                  progress: bool = True) -> np.ndarray:
    """(N, *layout.shape) float16 crops of the table's words for the crop CNN (`upocr.forensics.cnn`), each
    compared with the words found the same way in its image; the images are read again from `roots`.
    `path`: write them to this .npy file and return it memory-mapped (on disk instead of in memory: 37 KB per
    word for word crops, 86 KB for line crops, most of training's memory; the CNN reads them a batch at a time)."""
    paths = {sample.name: sample.image for root in roots for sample in tampering_samples(root, split)}
    shape = (table.labels.size, *layout.shape)
    crops = (np.zeros(shape, np.float16) if path is None
             else np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape))
    groups: dict[int, list[np.ndarray]] = {}
    for members in word_groups(table):
        groups.setdefault(int(table.image_index[members[0]]), []).append(members)
    for image_index, parts in tqdm(groups.items(), desc="word crops", unit="image", disable=not progress):
        name = table.names[image_index]
        if name not in paths:
            raise ValueError(f"{name}: an image of the features file is not under {', '.join(map(str, roots))}")
        maps = image_maps(read_image(paths[name]))
        for members in parts:
            crops[members] = image_crops(maps, table.boxes[members], layout)
    return crops


# The trees' size (early stopping: 30 rounds without gain on a tenth of the training words). Larger trees learn
# the synthetic forgeries better and real ones worse (docs/tampering-log.md, session 16): 509 rounds of 127 leaves at
# 0.05 raised validation recall (blended with the crop CNN) 45.5 -> 48.6 % and held-out v1 forgeries through the
# detector 0.378 -> 0.395 tampered IoU, left v2 at 0.23, and lowered real copy-moves 0.377 -> 0.324.
MAX_ITER = 300
LEARNING_RATE = 0.08
MAX_LEAF_NODES = 31


def fit(table: WordTable, *, validation_share: float = 0.2, false_alarm_rate: float = 0.01, max_iter: int = MAX_ITER,
        learning_rate: float = LEARNING_RATE, max_leaf_nodes: int = MAX_LEAF_NODES, seed: int = 0, context: bool = False,
        crops: np.ndarray | None = None, crop_layout: CropLayout = DEFAULT_CROP_LAYOUT, cnn_epochs: int = 6,
        cnn_width: int = WIDTH, cnn_precision: str = DEFAULT_TRAINING_PRECISION, members: int = 1,
        record: dict | None = None, progress: bool = True) -> TreeEnsemble:
    """Train on the table's training images, choose the threshold on its validation images, export.
    `context`: also train the second look (`upocr.forensics.context`) on the first look's out-of-fold
    probabilities; the threshold is then chosen on its probabilities. `crops` (`collect_crops`, cut by
    `crop_layout`): also train the crop CNN (`upocr.forensics.cnn`, `cnn_width` channels, `cnn_precision` "fp32",
    "bf16" or "auto": `train_crop_net`) for `cnn_epochs`; the threshold is then chosen on the blend. `members` > 1: a
    committee, that many classifiers (trees and CNN) trained alike from seeds `seed`, `seed` + 1, ..., their log-odds
    averaged; the threshold is chosen on the committee's."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        raise ImportError("training the tampering classifier needs scikit-learn: pip install 'upocr[train]'") from None
    if members < 1:
        raise ValueError(f"members must be 1 or more, not {members}")
    if members > 1 and context:
        raise ValueError("a committee (members > 1) has no second look: train it without context")
    precision = training_precision(cnn_precision)  # as resolved on this machine, for the record
    validation = validation_images(table.names, validation_share)[table.image_index]
    train = ~validation
    if not table.labels[train].any() or not table.labels[validation].any():
        raise ValueError("training and validation parts both need tampered words; generate more data")
    labels = table.labels[validation]

    def trees(features: np.ndarray, labels: np.ndarray, seed: int):
        model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=learning_rate,
                                               max_leaf_nodes=max_leaf_nodes, min_samples_leaf=40,
                                               l2_regularization=1.0, validation_fraction=0.1,
                                               early_stopping=len(labels) >= 1000,  # tiny sets: no held-back tenth
                                               n_iter_no_change=30, random_state=seed)
        return model.fit(features, labels)

    def second_look(first, probabilities: np.ndarray, seed: int):
        """The second look's trees, trained on the first look's out-of-fold probabilities."""
        first_look = np.zeros(len(table.labels))
        first_look[validation] = probabilities
        folds = image_folds(table.names, CONTEXT_FOLDS)[table.image_index]
        for fold in tqdm(range(CONTEXT_FOLDS), desc="out-of-fold first looks", unit="fold",
                         disable=not progress):
            held, rest = train & (folds == fold), train & (folds != fold)
            if not held.any():
                continue
            # (a fold whose rest has one class only, on tiny data, keeps the first look's own probabilities)
            model = (trees(table.features[rest], table.labels[rest], seed) if np.unique(table.labels[rest]).size == 2
                     else first)
            first_look[held] = model.predict_proba(table.features[held])[:, 1]
        both = np.hstack([table.features, context_table(table, first_look)])
        return trees(both[train], table.labels[train], seed), both[validation]

    def member(seed: int) -> _Member:
        """One classifier: trees (and a second look), a crop CNN; its validation probabilities and record."""
        first = trees(table.features[train], table.labels[train], seed)
        tree_probabilities = probabilities = first.predict_proba(table.features[validation])[:, 1]
        extra: dict = {}
        second = crop_net = logits = cnn_seconds = None
        if context:
            second, features = second_look(first, probabilities, seed)
            first_threshold = threshold_for_false_alarms(probabilities, labels, false_alarm_rate)
            extra = {"first_look": {"iterations": int(first.n_iter_),
                                    "validation": word_scores(probabilities, labels, first_threshold)},
                     "context_folds": CONTEXT_FOLDS}
            tree_probabilities = probabilities = second.predict_proba(features)[:, 1]
        if crops is not None:
            cnn_started = time.perf_counter()
            crop_net = train_crop_net(crops, table.labels, layout=crop_layout, rows=np.flatnonzero(train),
                                      epochs=cnn_epochs, width=cnn_width, seed=seed, precision=precision,
                                      progress=progress)
            logits = crop_net.logits(crops, rows=np.flatnonzero(validation))
            cnn_seconds = round(time.perf_counter() - cnn_started, 1)
            probabilities = crop_net.blend_logits(probabilities, logits)
        return _Member(first, second, crop_net, cnn_seconds, tree_probabilities, logits, probabilities, extra)

    if crops is not None and len(crops) != table.labels.size:
        raise ValueError(f"{len(crops)} crops for {table.labels.size} words")
    started = time.perf_counter()
    looks = [member(seed + k) for k in range(members)]
    found = table.found[validation]
    on_found = bool((found & (labels == 0)).any())
    scored = found if on_found else slice(None)

    def alone(probabilities: np.ndarray) -> dict:
        """Validation scores at the threshold these probabilities would get as a classifier of their own."""
        threshold = threshold_for_false_alarms(probabilities[scored], labels[scored], false_alarm_rate)
        return {"threshold": threshold, "validation_found_words":
                word_scores(probabilities[found], labels[found], threshold) if found.any() else None}

    extra = dict(looks[0].extra) if members == 1 else {
        "committee": [{"seed": seed + k, "iterations": int(look.first.n_iter_), **look.extra,
                       **({"cnn_seconds": look.cnn_seconds} if look.crop_net is not None else {}),
                       **alone(look.probabilities)} for k, look in enumerate(looks)]}
    tree_probabilities = _mean_of_log_odds([look.tree_probabilities for look in looks])
    probabilities = _mean_of_log_odds([look.probabilities for look in looks])
    crop_net = None
    if crops is not None:
        nets = tuple(look.crop_net for look in looks)
        crop_net = nets[0] if members == 1 else CropCommittee(nets)
        extra["trees_validation"] = word_scores(tree_probabilities, labels, threshold_for_false_alarms(
            tree_probabilities, labels, false_alarm_rate))
        network = sigmoid(np.mean([look.logits for look in looks], axis=0))
        extra["crop_net"] = {
            "epochs": cnn_epochs, "width": cnn_width, "precision": precision, "blend_weight": crop_net.blend_weight,
            "layout": crop_layout.name,
            "seconds": round(sum(look.cnn_seconds for look in looks), 1),
            "validation": word_scores(network, labels, threshold_for_false_alarms(network, labels, false_alarm_rate)),
        }
    seconds = time.perf_counter() - started
    # The threshold, on the final probabilities: for `false_alarm_rate` of the genuine validation words that
    # detect-tampering scores, i.e. a finder's words when the table has them (it never sees ground-truth boxes;
    # on the shipped data they were flagged more often at the all-words threshold: 0.65 % instead of 0.5 %).
    final = alone(probabilities)
    threshold = final["threshold"]
    record = {
        **(record or {}),
        "learner": "sklearn HistGradientBoostingClassifier",
        "iterations": int(sum((look.second or look.first).n_iter_ for look in looks)),
        "learning_rate": learning_rate, "max_leaf_nodes": max_leaf_nodes, "seed": seed, "members": members,
        "train_images": int(len(set(table.image_index[train].tolist()))),
        "validation_images": int(len(set(table.image_index[validation].tolist()))),
        "train_words": int(train.sum()), "train_tampered_words": int(table.labels[train].sum()),
        "target_false_alarm_rate": false_alarm_rate, "threshold": threshold,
        "threshold_words": "found" if on_found else "all",
        "validation": word_scores(probabilities, labels, threshold),
        "validation_found_words": final["validation_found_words"],
        "context": context, **extra, "fit_seconds": round(seconds, 1),
    }
    if members == 1:
        ensemble = from_sklearn(looks[0].first, FEATURE_NAMES, threshold, record)
        if looks[0].second is not None:
            ensemble.context = from_sklearn(looks[0].second, FEATURE_NAMES + CONTEXT_NAMES, threshold, {})
    else:
        ensemble = average_ensembles([from_sklearn(look.first, FEATURE_NAMES, threshold, {}) for look in looks],
                                     threshold_probability=threshold, record=record)
    ensemble.crop_net = crop_net
    return ensemble


class _Member(NamedTuple):
    """One classifier of `fit` (a committee has several): its models and its verdicts on the validation words."""

    first: Any  # the trees (scikit-learn)
    second: Any  # the second look's trees, or None
    crop_net: CropNet | None
    cnn_seconds: float | None  # the crop CNN's training and validation scoring
    tree_probabilities: np.ndarray
    logits: np.ndarray | None  # the crop CNN's
    probabilities: np.ndarray  # the blend
    extra: dict  # its part of the record


def _mean_of_log_odds(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """The probability whose log-odds are the mean of theirs (a committee's verdict)."""
    if len(probabilities) == 1:
        return probabilities[0]
    return sigmoid(log_odds(np.asarray(probabilities)).mean(axis=0))


def train_classifier(roots: Sequence[str | os.PathLike], out: str | os.PathLike, *, split: str = "train",
                     limit: int | None = None, progress: bool = True, features_file: str | os.PathLike | None = None,
                     finder: Finder | None = None, finder_every: int = 0, cnn_epochs: int = 0,
                     crop_layout: CropLayout = DEFAULT_CROP_LAYOUT, crops_file: str | os.PathLike | None = None,
                     **options) -> TreeEnsemble:
    """Features from every root, fit, save to `out`; returns the ensemble (its `record` says how).
    `features_file`: read the features from there when it exists, else measure and write them there.
    `cnn_epochs` > 0: also the crop CNN, from crops of the same words cut by `crop_layout` (read again from the
    images), held in memory or, with `crops_file`, in that file (memory-mapped; removed at the end, even after
    an error)."""
    if crops_file is not None and Path(crops_file).exists():
        raise ValueError(f"{crops_file}: exists; the crops file is scratch space (removed at the end): name a new one")
    started = time.perf_counter()
    if features_file is not None and Path(features_file).is_file():
        table = load_table(features_file)
    else:
        table = collect_words(roots, split, limit=limit, progress=progress, finder=finder, finder_every=finder_every)
        if features_file is not None:
            save_table(table, features_file)
    feature_seconds = time.perf_counter() - started
    record = {"data": [str(Path(r)) for r in roots], "split": split, "images": len(table.names),
              "features_version": FEATURES_VERSION,
              "words": int(table.labels.size), "tampered_words": int(table.labels.sum()),
              "feature_seconds": round(feature_seconds, 1),
              "found_regions_every": finder_every if finder is not None else 0}
    record.update(_synth_runs(roots))
    try:
        crops = (collect_crops(table, roots, split, layout=crop_layout, path=crops_file, progress=progress)
                 if cnn_epochs > 0 else None)
        ensemble = fit(table, record=record, progress=progress, crops=crops, crop_layout=crop_layout,
                       cnn_epochs=cnn_epochs, **options)
    finally:
        crops = None  # unmapped before the file goes
        if crops_file is not None:
            Path(crops_file).unlink(missing_ok=True)
    ensemble.record["total_seconds"] = round(time.perf_counter() - started, 1)
    ensemble.save(out)
    return ensemble


def _synth_runs(roots: Sequence[str | os.PathLike]) -> dict:
    """The `upocr synth` runs (seed, scenes, count, and the generator's version: the same command draws other
    scenes after a generator change) behind the data, from each root's manifest."""
    from upocr.data.synth.generate import read_manifest

    runs = []
    for root in roots:
        try:
            manifest = read_manifest(Path(root))
        except ValueError:
            continue
        runs += [{key: run.get(key) for key in ("task", "split", "seed", "count", "scenes", "size", "generator_version")}
                 for run in manifest["runs"] if run.get("task") == "tampering"]
    return {"synth_runs": runs} if runs else {}
