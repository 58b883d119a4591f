"""The crop CNN: a small convolutional network that looks at each word's forensic maps as a picture.

The trees (`model.py`) read summaries of a word (mean error levels over its edges, its background, a
ring around it); the CNN reads the maps themselves around the word, so it can see where inside the
word and its surroundings the traces lie (a pasted patch's seam, a refilled background under a retyped
word, glyph edges that save differently from the paper). Its log-odds are averaged with the trees'.

Input per word: a crop of the maps around it, cut by a `CropLayout`, six channels (CROP_CHANNELS): the grey
levels (standardised per crop: the word's shape and contrast) and log(1 + map) of the error levels at four
JPEG qualities and of the noise residual (`features.image_maps`). Two layouts:
* `WORD_CROP` (session 15, files of format 3): the word's box grown by 0.3 x its height on every side,
  stretched to 32 x 96;
* `LINE_CROP` (session 19, the default): the same height, but at least 6 x that wide at one scale (32 x 192),
  so the crop also shows the word's line neighbours (a retyped word beside the words it was made to match),
  and a seventh channel marking the word's box in it.
Like the trees' features, each word is compared with the others of its image: every map channel has
the level of the word's peers subtracted (`compare_within_image`: the median crop mean of the other words
of about its height), so a crisp screenshot and a blurred photo start from the same level. (Without this,
on the validation words of the shipped training data, recall at 0.5 % false alarms was 0.28 after 4
epochs; against all the image's words, 0.37.)

Weights travel inside the classifier's npz as plain arrays (`crop_net_` names), like the trees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from upocr.forensics.features import ELA_QUALITIES, ImageMaps, leave_one_out_median, median_of_others, size_peers
from upocr.utils import cpu_has_native_bf16

CROP_CHANNELS = ("grey", *(f"log_ela{q}" for q in ELA_QUALITIES), "log_residual")
WORD_MASK_CHANNEL = "word"  # the line layout's seventh channel: 1 inside the word's box


def log_odds(probability: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), float64, p kept off 0 and 1 (how the trees' and the networks' verdicts are averaged)."""
    p = np.clip(np.asarray(probability, np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def sigmoid(values: np.ndarray) -> np.ndarray:
    """The probability of these log-odds (the inverse of `log_odds`)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(values)))


@dataclass(frozen=True)
class CropLayout:
    """How a word's crop is cut from its image's maps."""

    name: str
    size: tuple[int, int]  # (h, w) of every crop
    margin: float = 0.3  # the crop reaches this share of the word's height above and below its box (and beside it)
    min_aspect: float = 0.0  # ... and is at least this many times its own height wide, centred on the word
    # True: the window keeps its shape where it leaves the image (the image is mirrored in), so every word is
    # seen at one scale; False: it is clipped to the image and stretched to `size` (session 15's crops).
    keep_scale: bool = False
    word_mask: bool = False  # a last channel marking the word's box inside the crop

    @property
    def channels(self) -> tuple[str, ...]:
        return CROP_CHANNELS + ((WORD_MASK_CHANNEL,) if self.word_mask else ())

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, h, w) of one crop."""
        return (len(self.channels), *self.size)


WORD_CROP = CropLayout("word", (32, 96))
# 1.6 x the word's height tall, >= 9.6 x it wide: a word and about two neighbours on each side. On the same
# 75,963 training words (session 18's prototype): CNN alone 46.0 % recall at 0.5 % false alarms vs 41.1 %,
# blended with the trees 52.9 % vs 49.8 %, at 3x the training time.
LINE_CROP = CropLayout("line", (32, 192), min_aspect=6.0, keep_scale=True, word_mask=True)
CROP_LAYOUTS = {layout.name: layout for layout in (WORD_CROP, LINE_CROP)}
DEFAULT_CROP_LAYOUT = LINE_CROP
# Windows over this many times the crop's height (words over 320 px) that leave the image are shrunk before they
# are mirrored (`word_crops`).
SHRINK_BEFORE_MIRRORING = 16
WIDTH = 16  # channels of the first convolution (then 2x, 4x)
BLEND_WEIGHT = 0.5  # the CNN's share of the averaged log-odds (0.3 / 0.5 / 0.7: validation recall 0.460 / 0.462 / 0.452)
NEGATIVES_PER_POSITIVE = 3  # genuine words drawn per tampered word in each epoch


def _conv(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs),
                         nn.ReLU(inplace=True))


class WordCropCNN(nn.Module):
    """(N, channels, h, w) crops -> (N,) log-odds that each word is tampered (about 70k weights; mean and max
    over the crop, so any crop size)."""

    def __init__(self, *, channels: int = len(CROP_CHANNELS), width: int = WIDTH):
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, width), nn.MaxPool2d(2),
            _conv(width, 2 * width), _conv(2 * width, 2 * width), nn.MaxPool2d(2),
            _conv(2 * width, 4 * width), nn.MaxPool2d(2),
            _conv(4 * width, 4 * width),
        )
        # Mean and max over the crop: a forgery may cover the whole crop or a few letters of it.
        self.head = nn.Linear(8 * width, 1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        features = self.body(crops)
        return self.head(torch.cat([features.mean((2, 3)), features.amax((2, 3))], 1)).squeeze(1)


def fold_batch_norms(net: WordCropCNN) -> WordCropCNN:
    """`net` (in eval mode) with each convolution's batch norm folded into its weights and a bias, in place: the
    same function (to 1e-5 on the shipped file's logits) without a pass over every feature map per layer."""
    for block in net.body:
        if isinstance(block, nn.Sequential) and isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return net


def word_crops(maps: ImageMaps, boxes: np.ndarray, layout: CropLayout = DEFAULT_CROP_LAYOUT, *,
               dtype: type = np.float16) -> np.ndarray:
    """(N, *layout.shape) crops (of `dtype`) of the N word boxes (x1, y1, x2, y2, inclusive pixels) of one image,
    not yet compared within the image (`compare_within_image`). A box without area (or, clipped, outside the
    image) gives zeros."""
    # Two (H, W, 3) stacks, so each word is two resizes (OpenCV resizes up to 4 channels at once; its log
    # and merge are several times faster than numpy's on a whole photo).
    logs = [cv2.log(plane + 1.0) for plane in (*(maps.ela[q] for q in ELA_QUALITIES), maps.residual)]
    stacks = (cv2.merge([maps.grey, *logs[:2]]), cv2.merge(logs[2:]))
    height, width = maps.grey.shape
    crop_height, crop_width = layout.size
    crops = np.zeros((len(boxes), *layout.shape), dtype)
    for index, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        if x2 < x1 or y2 < y1:
            continue
        margin = layout.margin * (y2 - y1 + 1)
        left, right = np.floor(x1 - margin), np.ceil(x2 + margin) + 1
        top, bottom = np.floor(y1 - margin), np.ceil(y2 + margin) + 1
        widen = max(0.0, layout.min_aspect * (bottom - top) - (right - left))
        left, right = int(left - widen // 2), int(right + widen - widen // 2)
        top, bottom = int(top), int(bottom)
        if not layout.keep_scale:
            left, right, top, bottom = max(0, left), min(width, right), max(0, top), min(height, bottom)
        if right - left < 2 or bottom - top < 2:
            continue
        inside = (max(0, top), min(height, bottom), max(0, left), min(width, right))
        if inside[1] <= inside[0] or inside[3] <= inside[2]:
            continue
        pads = (inside[0] - top, bottom - inside[1], inside[2] - left, right - inside[3])
        if any(pads) and bottom - top > SHRINK_BEFORE_MIRRORING * crop_height:
            # A huge window (a headline at the image's edge) would be mirrored at full size (hundreds of MB for
            # a 700-pixel word) to be shrunk to 32 x 192: shrink the part inside the image, mirror at crop scale.
            parts = [_shrunk_then_mirrored(stack[inside[0]:inside[1], inside[2]:inside[3]], pads,
                                           (bottom - top, right - left), layout.size) for stack in stacks]
        else:
            # Averaging when shrinking keeps a map's level (its energy per pixel); small words are enlarged.
            interpolation = cv2.INTER_AREA if bottom - top > crop_height else cv2.INTER_LINEAR
            windows = [stack[inside[0]:inside[1], inside[2]:inside[3]] for stack in stacks]
            if any(pads):
                windows = [cv2.copyMakeBorder(window, *pads, cv2.BORDER_REFLECT) for window in windows]
            parts = [cv2.resize(window, (crop_width, crop_height), interpolation=interpolation) for window in windows]
        crops[index, 0:3] = parts[0].transpose(2, 0, 1)
        crops[index, 3:6] = parts[1].transpose(2, 0, 1)
        grey = parts[0][..., 0]
        crops[index, 0] = (grey - grey.mean()) / (grey.std() + 8.0)  # + 8 grey levels: a blank crop stays flat
        if layout.word_mask:
            x_scale, y_scale = crop_width / (right - left), crop_height / (bottom - top)
            crops[index, -1, max(0, int((y1 - top) * y_scale)):int(np.ceil((y2 + 1 - top) * y_scale)),
                  max(0, int((x1 - left) * x_scale)):int(np.ceil((x2 + 1 - left) * x_scale))] = 1.0
    return crops


def _shrunk_then_mirrored(inside: np.ndarray, pads: tuple[int, int, int, int], window: tuple[int, int],
                          size: tuple[int, int]) -> np.ndarray:
    """`inside` (the part of a (h, w) `window` within the image, `pads` = its rows / columns outside: top,
    bottom, left, right) shrunk to its share of `size` by area, the rest mirrored at that scale."""
    (height, width), (crop_height, crop_width) = window, size
    inner_height = min(crop_height, max(1, round(inside.shape[0] * crop_height / height)))
    inner_width = min(crop_width, max(1, round(inside.shape[1] * crop_width / width)))
    top = min(crop_height - inner_height, round(pads[0] * crop_height / height))
    left = min(crop_width - inner_width, round(pads[2] * crop_width / width))
    small = cv2.resize(inside, (inner_width, inner_height), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(small, top, crop_height - inner_height - top, left, crop_width - inner_width - left,
                              cv2.BORDER_REFLECT)


def compare_within_image(crops: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Subtract from each map channel (all but grey and the word mask) of each word's crop the level of its
    peers, in place; returns `crops`. Peers: the image's other words of about its height (`heights` in pixels,
    as the trees' size features: a headline saves differently from small print), else all its other words; a
    word alone is compared with itself. Level: the median of their crop means."""
    if len(crops) == 0:
        return crops
    maps = slice(1, len(CROP_CHANNELS))
    levels = crops[:, maps].mean(axis=(2, 3), dtype=np.float32)
    log_height = np.log(np.maximum(np.asarray(heights, np.float64), 1))
    reference = leave_one_out_median(levels, size_peers(log_height))
    others = median_of_others(levels) if len(crops) > 1 else levels
    reference = np.where(np.isnan(reference), others, reference)
    crops[:, maps] -= reference[:, :, None, None].astype(crops.dtype)
    return crops


class _BlendsWithTrees:
    """What a crop CNN and a committee of them share: their log-odds averaged with the trees'."""

    blend_weight: float

    def logits(self, crops: np.ndarray, *, rows: np.ndarray | None = None, batch: int = 64) -> np.ndarray:
        raise NotImplementedError

    def blend(self, tree_probability: np.ndarray, crops: np.ndarray) -> np.ndarray:
        """The word's probability from the trees' and the CNN's view of its crops (`blend_logits`)."""
        return self.blend_logits(tree_probability, self.logits(crops))

    def blend_logits(self, tree_probability: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Sigmoid of the weighted mean of the trees' log-odds and the CNN's `logits`."""
        trees = log_odds(tree_probability)
        return sigmoid((1 - self.blend_weight) * trees + self.blend_weight * np.asarray(logits))


@dataclass
class CropNet(_BlendsWithTrees):
    """A trained WordCropCNN with the input scaling it was trained with, as plain arrays."""

    weights: dict[str, np.ndarray]  # the module's state dict
    mean: np.ndarray  # (channels,) per-channel input mean of the training crops
    std: np.ndarray  # (channels,)
    blend_weight: float = BLEND_WEIGHT
    layout: CropLayout = DEFAULT_CROP_LAYOUT  # how its crops are cut (`word_crops`)
    _net: WordCropCNN | None = field(default=None, init=False, repr=False, compare=False)  # built on first use

    def module(self) -> WordCropCNN:
        """The network for inference, built from the weights once (loading a file builds it: that checks them),
        its batch norms folded into the convolutions before them (`fold_batch_norms`). Channels-last runs its
        convolutions about 1.5x faster on CPU (same math)."""
        if self._net is None:
            net = WordCropCNN(channels=len(self.layout.channels), width=int(self.weights["body.0.0.weight"].shape[0]))
            net.load_state_dict({name: torch.from_numpy(np.array(value)) for name, value in self.weights.items()})
            self._net = fold_batch_norms(net.eval()).to(memory_format=torch.channels_last)
        return self._net

    def logits(self, crops: np.ndarray, *, rows: np.ndarray | None = None, batch: int = 64) -> np.ndarray:
        """(N, *layout.shape) compared crops -> (N,) float64 log-odds; `rows`: of these rows only (read a batch
        at a time, as `train_crop_net` reads them). 558 line crops on 2 cores (AMD EPYC, session 23), batch
        norms folded: 0.26-0.30 s in batches of 64, 0.38-0.47 s in batches of 128 or 256 (unfolded, 128: 0.57 s)."""
        _check_crops(crops, self.layout)
        rows = None if rows is None else np.asarray(rows)
        count = len(crops) if rows is None else len(rows)
        if count == 0:
            return np.zeros(0, np.float64)
        net = self.module()
        mean = torch.from_numpy(self.mean.astype(np.float32)).view(1, -1, 1, 1)
        std = torch.from_numpy(self.std.astype(np.float32)).view(1, -1, 1, 1)
        out = []
        with torch.inference_mode():
            for start in range(0, count, batch):
                part = slice(start, start + batch) if rows is None else rows[start:start + batch]
                # float16 -> float32 by torch: the same values, about 4x faster than numpy's conversion.
                chunk = torch.from_numpy(np.asarray(crops[part])).float()
                out.append(net(((chunk - mean) / std).contiguous(memory_format=torch.channels_last)))
        return torch.cat(out).double().numpy()


@dataclass
class CropCommittee(_BlendsWithTrees):
    """Crop CNNs trained alike from different seeds (`upocr train-tampering --members`): a word's log-odds are
    the mean of theirs. One network's verdict on real photos depends on its seed (two seeds of the documented
    command flagged 0.22 and 1.28 % of real-dev's genuine text); the mean of two depends on it less."""

    nets: tuple[CropNet, ...]

    def __post_init__(self) -> None:
        if len(self.nets) < 2:
            raise ValueError("a committee needs two crop CNNs or more")
        if len({(net.layout, net.blend_weight) for net in self.nets}) != 1:
            raise ValueError("a committee's crop CNNs must share their crop layout and blend weight")

    @property
    def layout(self) -> CropLayout:
        return self.nets[0].layout

    @property
    def blend_weight(self) -> float:  # type: ignore[override]
        return self.nets[0].blend_weight

    def logits(self, crops: np.ndarray, *, rows: np.ndarray | None = None, batch: int = 64) -> np.ndarray:
        """The mean of the members' `CropNet.logits`."""
        return np.mean([net.logits(crops, rows=rows, batch=batch) for net in self.nets], axis=0)


def _check_crops(crops: np.ndarray, layout: CropLayout) -> None:
    if tuple(crops.shape[1:]) != layout.shape:
        raise ValueError(f"crops of shape {tuple(crops.shape[1:])} for the {layout.name} layout's {layout.shape}")


TRAINING_PRECISIONS = ("fp32", "bf16", "auto")  # `train_crop_net`'s arithmetic, the default first
DEFAULT_TRAINING_PRECISION = TRAINING_PRECISIONS[0]


def training_precision(precision: str = DEFAULT_TRAINING_PRECISION) -> str:
    """"bf16" or "fp32": what `train_crop_net` computes in for `precision` ("auto": bf16 where the CPU computes it
    natively, with AVX512-BF16 or AMX, else fp32). Natively, bf16 trains the crop CNN in about half fp32's time
    with the same validation AUC, but one committee so trained flagged more real text (docs/tampering.md,
    "Training"), so fp32 stays the default; emulated, bf16 is many times slower."""
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"precision must be {', '.join(TRAINING_PRECISIONS[:-1])} or {TRAINING_PRECISIONS[-1]}, "
                         f"not {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return precision


def train_crop_net(crops: np.ndarray, labels: np.ndarray, *, layout: CropLayout = DEFAULT_CROP_LAYOUT,
                   rows: np.ndarray | None = None, epochs: int = 6, batch: int = 256, learning_rate: float = 3e-3,
                   width: int = WIDTH, seed: int = 0, precision: str = DEFAULT_TRAINING_PRECISION,
                   progress: bool = True) -> CropNet:
    """Train on (N, *layout.shape) compared crops (cut by `layout`) with labels 1 = tampered. Each epoch sees
    every tampered word and NEGATIVES_PER_POSITIVE times as many genuine ones, drawn anew (genuine words are ten
    times as many), mirrored left-right at random; one-cycle learning rate, AdamW; `width`: the first convolution's
    channels (then 2x, 4x; the cost per word grows with its square). `rows` (increasing): train on these rows
    only. The crops are read batch by batch where they lie, never copied whole, so they may be a memory-mapped
    file (`upocr.forensics.train.collect_crops`); `crops[rows]` would hold a second copy of most of them.
    `precision`: the arithmetic of the forward pass, "fp32" (default, as the bundled file was trained), "bf16"
    (autocast; the weights stay fp32 and are scored in fp32) or "auto" (bf16 where the CPU computes it natively;
    `training_precision`)."""
    _check_crops(crops, layout)
    bf16 = training_precision(precision) == "bf16"
    rows = np.arange(len(crops)) if rows is None else np.asarray(rows)
    labels = np.asarray(labels)[rows].astype(np.float32)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("the crop CNN needs tampered and genuine training words")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sample = np.asarray(crops[rows[rng.choice(len(rows), min(len(rows), 5000), replace=False)]], np.float32)
    mean, std = sample.mean(axis=(0, 2, 3)), sample.std(axis=(0, 2, 3)) + 1e-3
    scale_mean = torch.from_numpy(mean).view(1, -1, 1, 1)
    scale_std = torch.from_numpy(std).view(1, -1, 1, 1)
    per_epoch = positives.size + min(negatives.size, NEGATIVES_PER_POSITIVE * positives.size)
    steps = max(1, -(-per_epoch // batch))
    # channels_last: oneDNN's convolutions (forward and backward) run about 1.6 x as fast on CPU in that layout
    # (benchmarks/bench_crop_cnn_training.py); the same arithmetic, so the same network up to float rounding.
    net = WordCropCNN(channels=len(layout.channels), width=width).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * steps)
    net.train()
    bar = tqdm(total=epochs * steps, desc="crop CNN", unit="batch", disable=not progress)
    for _ in range(epochs):
        drawn = rng.choice(negatives, per_epoch - positives.size, replace=False)
        order = rng.permutation(np.concatenate([positives, drawn]))
        for step in range(steps):
            members = np.sort(order[step * batch:(step + 1) * batch])
            if members.size == 0:
                continue
            inputs = (torch.from_numpy(np.asarray(crops[rows[members]], np.float32)) - scale_mean) / scale_std
            if rng.random() < 0.5:
                inputs = inputs.flip(3)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(inputs)
            loss = F.binary_cross_entropy_with_logits(logits.float(), torch.from_numpy(labels[members]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    weights = {name: value.detach().numpy().copy() for name, value in net.state_dict().items()}  # C order
    return CropNet(weights, mean.astype(np.float32), std.astype(np.float32), layout=layout)


def image_crops(maps: ImageMaps, boxes: Sequence[np.ndarray] | np.ndarray,
                layout: CropLayout = DEFAULT_CROP_LAYOUT) -> np.ndarray:
    """One image's words as the CNN reads them, float16: `word_crops` compared within the image. Cut and compared
    in float32, rounded once at the end (numpy's float16 arithmetic is slow: 0.16 of 0.43 s for 558 crops), by
    torch (the same rounding as numpy's `astype`, 0.018 instead of 0.065 s for 558 line crops)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    crops = word_crops(maps, boxes, layout, dtype=np.float32)
    return torch.from_numpy(compare_within_image(crops, boxes[:, 3] - boxes[:, 1] + 1)).half().numpy()
