"""The word classifier: a gradient-boosted tree ensemble stored as plain arrays (npz) and evaluated in numpy.

No pickle: the file holds the flattened trees (one row per node: feature, threshold, where missing
values go, children, leaf value), the feature names the trees were trained on, the decision threshold
and the training record (JSON text). `np.load(..., allow_pickle=False)` reads it.

Probability = sigmoid(baseline + sum of the leaf values reached), as scikit-learn's
HistGradientBoostingClassifier computes it for two classes (tested to agree with it). A file may also
carry a second look (`context_` arrays, `upocr.forensics.context`) and a crop CNN (`crop_net_` arrays,
`upocr.forensics.cnn`) whose log-odds are averaged with the trees', or a committee of them (`crop_net_`,
`crop_net1_`, ... arrays; `upocr train-tampering --members`, its trees the members' trees averaged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from upocr.forensics.cnn import CROP_LAYOUTS, WORD_CROP, CropCommittee, CropNet, sigmoid
from upocr.utils import atomic_output

FORMAT = "upocr-tampering-trees-1"  # one ensemble
FORMAT_WITH_CONTEXT = "upocr-tampering-trees-2"  # ... and a second one that also reads the context (`context_` arrays)
FORMAT_WITH_CROP_NET = "upocr-tampering-trees-3"  # ... either, and a crop CNN (`crop_net_` arrays) of word crops
FORMAT_WITH_CROP_LAYOUT = "upocr-tampering-trees-4"  # ... the crop CNN's crop layout named (`crop_net_layout`)
FORMAT_WITH_COMMITTEE = "upocr-tampering-trees-5"  # ... several crop CNNs (`crop_net_members`; `crop_net1_`, ...)
FORMATS = (FORMAT, FORMAT_WITH_CONTEXT, FORMAT_WITH_CROP_NET, FORMAT_WITH_CROP_LAYOUT, FORMAT_WITH_COMMITTEE)
CROP_NET_PREFIX = "crop_net_"
COMMITTEE_SIZE = CROP_NET_PREFIX + "members"
NODE_ARRAYS = ("feature", "threshold", "missing_left", "left", "right", "leaf", "value", "roots")
DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[1] / "weights" / "tampering-words.npz"


def crop_net_prefix(member: int) -> str:
    """Where a committee's `member`-th crop CNN's arrays are named: the first as a single CNN's (`crop_net_`)."""
    return CROP_NET_PREFIX if member == 0 else f"crop_net{member}_"


class ClassifierError(ValueError):
    """A classifier file that cannot be used (one line naming the file)."""


@dataclass
class TreeEnsemble:
    """Flattened binary trees. Node arrays are parallel; `left`/`right` index into them (absolute)."""

    feature: np.ndarray  # int32 per node (-1 at leaves)
    threshold: np.ndarray  # float64: go left when x <= threshold
    missing_left: np.ndarray  # bool: where NaN goes
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    leaf: np.ndarray  # bool
    value: np.ndarray  # float64 leaf values (raw score units)
    roots: np.ndarray  # int32 root node of each tree
    baseline: float
    feature_names: tuple[str, ...]
    threshold_probability: float = 0.5  # the decision threshold chosen on validation data
    record: dict[str, Any] = field(default_factory=dict)
    # The second look (`upocr.forensics.context`): trees over the features followed by the context of this
    # ensemble's probabilities; when present, its probability is the word's, and the threshold applies to it.
    context: TreeEnsemble | None = None
    # The crop CNN (`upocr.forensics.cnn`): when present, the word's probability blends its log-odds with the
    # trees' (the threshold applies to the blend).
    crop_net: CropNet | CropCommittee | None = None

    @property
    def depth(self) -> int:
        return int(self.record.get("max_depth_reached", 0)) or 64

    def raw_score(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) log-odds."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise ValueError(f"expected (N, {len(self.feature_names)}) features, got {features.shape}")
        count = features.shape[0]
        if count == 0 or len(self.roots) == 0:
            return np.full(count, self.baseline)
        node = np.broadcast_to(self.roots, (count, len(self.roots))).copy()
        rows = np.arange(count)[:, None]
        for _ in range(self.depth + 1):
            at_leaf = self.leaf[node]
            if at_leaf.all():
                break
            x = features[rows, np.maximum(self.feature[node], 0)]
            go_left = np.where(np.isnan(x), self.missing_left[node], x <= self.threshold[node])
            node = np.where(at_leaf, node, np.where(go_left, self.left[node], self.right[node]))
        return self.baseline + self.value[node].sum(axis=1)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) probability that each word is tampered."""
        return sigmoid(self.raw_score(features))

    def _arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in NODE_ARRAYS}
        arrays.update(baseline=np.array(self.baseline), feature_names=np.array(self.feature_names),
                      record=np.array(json.dumps(self.record, sort_keys=True)))
        return {prefix + name: value for name, value in arrays.items()}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        kind = (FORMAT_WITH_COMMITTEE if isinstance(self.crop_net, CropCommittee)
                else FORMAT_WITH_CROP_LAYOUT if self.crop_net is not None
                else FORMAT_WITH_CONTEXT if self.context is not None else FORMAT)
        arrays = {**self._arrays(), "format": np.array(kind), "threshold_probability": np.array(self.threshold_probability)}
        if self.context is not None:
            arrays.update(self.context._arrays("context_"))
        if self.crop_net is not None:
            nets = self.crop_net.nets if isinstance(self.crop_net, CropCommittee) else (self.crop_net,)
            for member, net in enumerate(nets):
                prefix = crop_net_prefix(member)
                arrays.update({f"{prefix}w_{name}": value for name, value in net.weights.items()})
                arrays.update({f"{prefix}mean": net.mean, f"{prefix}std": net.std})
            arrays.update({f"{CROP_NET_PREFIX}blend_weight": np.array(self.crop_net.blend_weight),
                           f"{CROP_NET_PREFIX}layout": np.array(self.crop_net.layout.name)})
            if len(nets) > 1:
                arrays[COMMITTEE_SIZE] = np.array(len(nets))
        with atomic_output(path) as temporary:
            with open(temporary, "wb") as handle:
                np.savez_compressed(handle, **arrays)
        return path


def load_classifier(path: str | Path | None = None) -> TreeEnsemble:
    """Read a classifier file (default: the bundled one). ClassifierError when unusable."""
    path = Path(path) if path is not None else DEFAULT_CLASSIFIER
    try:
        with np.load(path, allow_pickle=False) as data:
            kind = str(data["format"])
            if kind not in FORMATS:
                raise ClassifierError(f"{path}: not a {FORMAT} file (format {kind!r})")
            ensemble = _read_ensemble(data, "", path)
            ensemble.threshold_probability = float(data["threshold_probability"])
            if "context_feature" in data.files:
                ensemble.context = _read_ensemble(data, "context_", path)
            if kind in (FORMAT_WITH_CROP_NET, FORMAT_WITH_CROP_LAYOUT):
                ensemble.crop_net = _read_crop_net(data, path, kind)
            elif kind == FORMAT_WITH_COMMITTEE:
                size = int(data[COMMITTEE_SIZE])
                if size < 2:
                    raise ClassifierError(f"{path}: a committee of {size} crop CNNs")
                ensemble.crop_net = CropCommittee(tuple(_read_crop_net(data, path, kind, crop_net_prefix(member))
                                                        for member in range(size)))
    except FileNotFoundError:
        raise ClassifierError(f"{path}: no such file") from None
    except ClassifierError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise ClassifierError(f"{path}: not a readable tampering classifier ({error})") from None
    return ensemble


def _read_ensemble(data: Any, prefix: str, path: Path) -> TreeEnsemble:
    """One ensemble's arrays (names after `prefix`), checked: every index inside its arrays."""
    ensemble = TreeEnsemble(
        feature=data[prefix + "feature"].astype(np.int32), threshold=data[prefix + "threshold"].astype(np.float64),
        missing_left=data[prefix + "missing_left"].astype(bool), left=data[prefix + "left"].astype(np.int32),
        right=data[prefix + "right"].astype(np.int32), leaf=data[prefix + "leaf"].astype(bool),
        value=data[prefix + "value"].astype(np.float64), roots=data[prefix + "roots"].astype(np.int32),
        baseline=float(data[prefix + "baseline"]), feature_names=tuple(str(n) for n in data[prefix + "feature_names"]),
        record=json.loads(str(data[prefix + "record"])),
    )
    nodes = len(ensemble.feature)
    if not all(len(a) == nodes for a in (ensemble.threshold, ensemble.missing_left, ensemble.left, ensemble.right,
                                          ensemble.leaf, ensemble.value)):
        raise ClassifierError(f"{path}: node arrays differ in length")
    inner = ~ensemble.leaf
    if nodes and (ensemble.roots.max(initial=0) >= nodes or (inner.any() and (
            ensemble.left[inner].max() >= nodes or ensemble.right[inner].max() >= nodes
            or ensemble.feature[inner].max() >= len(ensemble.feature_names)))):
        raise ClassifierError(f"{path}: tree indices out of range")
    return ensemble


def _read_crop_net(data: Any, path: Path, kind: str, prefix: str = CROP_NET_PREFIX) -> CropNet:
    """A crop CNN's arrays (names after `prefix`; the layout and blend weight are the file's), checked by building
    the network from them. Format 3 files cut word crops."""
    layout = WORD_CROP
    if kind in (FORMAT_WITH_CROP_LAYOUT, FORMAT_WITH_COMMITTEE):
        name = str(data[f"{CROP_NET_PREFIX}layout"])
        if name not in CROP_LAYOUTS:
            raise ClassifierError(f"{path}: unknown crop layout {name!r} (this upocr knows {', '.join(CROP_LAYOUTS)})")
        layout = CROP_LAYOUTS[name]
    start = f"{prefix}w_"
    weights = {name[len(start):]: data[name] for name in data.files if name.startswith(start)}
    net = CropNet(weights, data[f"{prefix}mean"].astype(np.float32),
                  data[f"{prefix}std"].astype(np.float32), float(data[f"{CROP_NET_PREFIX}blend_weight"]),
                  layout=layout)
    try:
        net.module()
    except (RuntimeError, KeyError) as error:
        raise ClassifierError(f"{path}: crop CNN weights do not fit the network ({str(error).splitlines()[0]})") from None
    channels = len(layout.channels)
    if net.mean.shape != (channels,) or net.std.shape != (channels,):
        raise ClassifierError(f"{path}: crop CNN input scaling has {net.mean.shape} values, not {channels}")
    return net


def average_ensembles(ensembles: list[TreeEnsemble], *, threshold_probability: float,
                      record: dict[str, Any]) -> TreeEnsemble:
    """One ensemble whose log-odds are the mean of the `ensembles`' (a committee's trees, `--members`): their
    trees side by side, each leaf value divided by their number, the baselines averaged. Same features only."""
    if not ensembles:
        raise ValueError("no ensembles to average")
    if len({e.feature_names for e in ensembles}) != 1 or any(e.context is not None for e in ensembles):
        raise ValueError("only ensembles of the same features and without a second look can be averaged")
    share = 1.0 / len(ensembles)
    offsets = np.cumsum([0] + [len(e.feature) for e in ensembles[:-1]])

    def joined(name: str, shifted: bool = False) -> np.ndarray:
        parts = [getattr(e, name) + (offset if shifted else 0) for e, offset in zip(ensembles, offsets)]
        if shifted and name != "roots":  # leaves keep child index 0
            parts = [np.where(e.leaf, 0, part) for e, part in zip(ensembles, parts)]
        return np.concatenate(parts).astype(getattr(ensembles[0], name).dtype)

    depth = max(e.depth for e in ensembles)
    return TreeEnsemble(
        feature=joined("feature"), threshold=joined("threshold"), missing_left=joined("missing_left"),
        left=joined("left", shifted=True), right=joined("right", shifted=True), leaf=joined("leaf"),
        value=joined("value") * share, roots=joined("roots", shifted=True),
        baseline=float(np.mean([e.baseline for e in ensembles])), feature_names=ensembles[0].feature_names,
        threshold_probability=float(threshold_probability), record={**record, "max_depth_reached": depth},
    )


def from_sklearn(model, feature_names: tuple[str, ...], threshold_probability: float, record: dict[str, Any]) -> TreeEnsemble:
    """Flatten a fitted binary HistGradientBoostingClassifier (numeric features only)."""
    if getattr(model, "n_trees_per_iteration_", 1) != 1:
        raise ValueError("only two-class models can be exported")
    feature, threshold, missing_left, left, right, leaf, value, roots = ([] for _ in range(8))
    offset = 0
    depth = 0
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        if np.any(nodes["is_categorical"]):
            raise ValueError("categorical splits are not supported by the exported format")
        roots.append(offset)
        is_leaf = nodes["is_leaf"].astype(bool)
        feature.append(np.where(is_leaf, -1, nodes["feature_idx"]).astype(np.int32))
        threshold.append(nodes["num_threshold"].astype(np.float64))
        missing_left.append(nodes["missing_go_to_left"].astype(bool))
        left.append(np.where(is_leaf, 0, nodes["left"] + offset).astype(np.int32))
        right.append(np.where(is_leaf, 0, nodes["right"] + offset).astype(np.int32))
        leaf.append(is_leaf)
        value.append(np.where(is_leaf, nodes["value"], 0.0).astype(np.float64))
        depth = max(depth, int(nodes["depth"].max()))
        offset += len(nodes)
    record = {**record, "max_depth_reached": depth}
    return TreeEnsemble(
        feature=np.concatenate(feature), threshold=np.concatenate(threshold), missing_left=np.concatenate(missing_left),
        left=np.concatenate(left), right=np.concatenate(right), leaf=np.concatenate(leaf), value=np.concatenate(value),
        roots=np.asarray(roots, np.int32), baseline=float(np.ravel(model._baseline_prediction)[0]),
        feature_names=tuple(feature_names), threshold_probability=float(threshold_probability), record=record,
    )
