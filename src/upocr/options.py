"""How a Predictor runs, as data: one validated `PredictorOptions`, declared once.

Every face builds its options from this one type: the task commands, `demo`, `serve`, `evaluate model`
and `evaluate real` add its fields to their parsers (`upocr.commands.options.add_options`, which reads
each field's metadata: flags, help, argparse type, choices), the server validates requests with it, and
the Python API takes it (`Predictor(model, options=...)` or the same names as keywords).

Checks that need nothing but the values live in `__post_init__`; those that need the model or device
(fp16 needs CUDA, int8 a torch model) stay in the Predictor. `None` means "what the weights say"
(`upocr.weights.InferenceDefaults`: working size, threshold, removal pipeline).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, get_args

from upocr import fields
from upocr.io import DEFAULT_MAX_PIXELS
from upocr.removal import DEFAULT_GROW, REMOVAL_PIPELINES, SEGMENTATION_FINDERS
from upocr.weights.defaults import SIZE_MULTIPLE, InferenceDefaults

# A larger working size is refused (from options or from a weights file): the model's memory grows with
# size^2, and large images are better served by tiles at their native resolution.
MAX_SIZE = InferenceDefaults.MAX_INPUT_SIZE

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Backend = Literal["pytorch", "onnxruntime"]
BACKENDS: tuple[str, ...] = get_args(Backend)
Tile = int | Literal["auto"] | None
# How detect-tampering decides which text is tampered (`PredictorOptions.tampering`).
# How `detect-tampering` tells tampered words apart (`--tampering`): name -> one line for --help and the demo.
TAMPERING_DECISIONS: dict[str, str] = {
    "model": "the model's own 0/1/2 output (on synthetic held-out forgeries it flags none)",
    "words": "the word detector's lines cut into words, each judged by the per-word forensic classifier "
             "(upocr.forensics, docs/tampering.md) against the other words of the image",
}


# ---------------------------------------------------------------- argparse types (one-line errors)


def positive_number(kind: Callable[[str], int | float], *, allow_zero: bool = False) -> Callable[[str], int | float]:
    """An argparse type: `kind(text)`, which must be > 0 (>= 0 with allow_zero)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value >= 0 if allow_zero else value > 0):  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'more than 0'}, got {text}")
        return value

    return parse


def parse_tile(text: str) -> Tile:
    if text.lower() in ("off", "none", "0"):
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected off, auto or a tile size in pixels, got {text!r}") from None


def parse_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def parse_size(text: str) -> int:
    value = positive_number(int)(text)
    if value > MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"{value} is too large (at most {MAX_SIZE}: memory grows with the square of the size); "
            "for detail in large images use --tile N, which runs N x N tiles at the image's own resolution"
        )
    return int(value)


def option(default: Any, *, flags: tuple[str, ...], help: str, type: Callable[[str], Any] | None = None,
           choices: tuple[str, ...] | None = None, metavar: str | None = None, scope: str = "model") -> Any:
    """A dataclass field with the metadata `add_options` turns into an argparse option.

    scope: which commands show it: "model" (every command that runs the model), "removal" (commands that
    remove text), "segmentation" (those that decode a text mask), "cli" (the file commands only)."""
    return fields.option(default, flags=flags, help=help, type=type, choices=choices, metavar=metavar, scope=scope)


# ---------------------------------------------------------------- the options


@dataclass(frozen=True)
class PredictorOptions:
    """How a Predictor fits images to the model, runs it, and decodes each task (see `upocr.predict`)."""

    size: int | None = option(
        None, flags=("--size",), type=parse_size,
        help=f"the model's working resolution, a multiple of {SIZE_MULTIPLE} up to {MAX_SIZE} (default: what the "
        "weights were trained at, 512 for original weights)")
    tile: Tile = option(
        "auto", flags=("--tile",), type=parse_tile, metavar="off|auto|N",
        help="auto (default): images with more than 4 x SIZE^2 pixels run on SIZE x SIZE tiles at their native "
        "resolution (small print survives), smaller ones are resized to SIZE x SIZE; off: always resize, like "
        "the original; N: always overlapping N x N tiles (memory bounded by the tile)")
    overlap: int | None = option(
        None, flags=("--overlap",), type=positive_number(int, allow_zero=True),
        help="pixels shared by neighbouring tiles (default: tile / 8, i.e. 64 for 512)")
    batch_size: int = option(
        1, flags=("--batch-size",), type=positive_number(int),
        help="(tile or image, task) pairs per forward pass (default 1): the tiles of a large image, or up to N "
        "small images of a folder at once")
    precision: Precision = option(
        "fp32", flags=("--precision",), choices=PRECISIONS,
        help="fp32 (default), bf16 autocast (CPU/CUDA), fp16 autocast (CUDA) or int8 (CPU)")
    backend: Backend = option(
        "pytorch", flags=("--backend",), choices=BACKENDS,
        help="pytorch (default) or onnxruntime (fp32; --weights may be a .onnx file from `upocr export-onnx`, "
        "else the weights are exported first)")
    threshold: float | None = option(
        None, flags=("--threshold",), type=parse_threshold, scope="segmentation",
        help="text score threshold (default: the one calibrated for the weights; 0.4, the original's, for "
        "weights without one)")
    segmentation: str | None = option(
        None, flags=("--segmentation",), choices=tuple(SEGMENTATION_FINDERS), scope="segmentation",
        help="which parts find the text mask: " + "; ".join(finder.describe() for finder in SEGMENTATION_FINDERS.values())
        + " (default: the finder stored with the weights)")
    removal: str | None = option(
        None, flags=("--removal", "--mode"), choices=tuple(REMOVAL_PIPELINES), scope="removal",
        help="how text is removed: which part finds the text and which fills it (default: the pipeline stored "
        "with the weights; `upocr remove-text --help` lists them)")
    grow: int = option(
        DEFAULT_GROW, flags=("--grow",), type=positive_number(int, allow_zero=True), metavar="PX", scope="removal",
        help=f"fill pipelines: grow the found text region by PX pixels before filling it (default {DEFAULT_GROW}; "
        "model-text finders: working-resolution pixels); more also erases outlines, shadows and halos")
    detector_model: Path | None = option(
        None, flags=("--detector-model",), type=Path, metavar="ONNX", scope="removal",
        help="a PP-OCR DB text detector .onnx for the word finder (default: the bundled PP-OCRv4 mobile detector)")
    tampering: str | None = option(
        None, flags=("--tampering",), choices=tuple(TAMPERING_DECISIONS), scope="tampering",
        help="how tampered words are told apart (default: the decision stored with the weights; the bundled "
        "weights store words, others model): " + "; ".join(f"{k}: {v}" for k, v in TAMPERING_DECISIONS.items()))
    tampering_threshold: float | None = option(
        None, flags=("--tampering-threshold",), type=parse_threshold, scope="tampering",
        help="with --tampering words: a word is tampered when its probability exceeds this (default: the "
        "classifier's, chosen to flag 0.5 %% of the genuine synthetic validation words the detector finds)")
    tampering_classifier: Path | None = option(
        None, flags=("--tampering-classifier",), type=Path, metavar="NPZ", scope="tampering",
        help="with --tampering words: a per-word classifier file from `upocr train-tampering` (default: the "
        "bundled one); its own threshold applies unless --tampering-threshold is given")
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS, flags=("--max-pixels",), type=positive_number(int),
        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,})")
    keep_output: bool = True  # keep the float outputs (`Prediction.output`); the CLI and server do not

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", check_multiple("size", self.size))
            if self.size > MAX_SIZE:
                raise ValueError(f"size must be at most {MAX_SIZE} (memory grows with its square), got {self.size}")
        if self.tile not in (None, "auto"):
            object.__setattr__(self, "tile", check_multiple("tile", self.tile))
        if self.overlap is not None and (_not_whole(self.overlap) or self.overlap < 0):
            raise ValueError(f"overlap must be a whole number of pixels, 0 or more, got {self.overlap!r}")
        if _not_whole(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float)) and 0 < self.threshold < 1):
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold!r}")
        if self.segmentation is not None and self.segmentation not in SEGMENTATION_FINDERS:
            raise ValueError(f"segmentation must be one of {', '.join(SEGMENTATION_FINDERS)}, got {self.segmentation!r}")
        if self.removal is not None and self.removal not in REMOVAL_PIPELINES:
            raise ValueError(f"removal must be one of {', '.join(REMOVAL_PIPELINES)}, got {self.removal!r}")
        if _not_whole(self.grow) or self.grow < 0:
            raise ValueError(f"grow must be a whole number of pixels, 0 or more, got {self.grow!r}")
        if self.tampering is not None and self.tampering not in TAMPERING_DECISIONS:
            raise ValueError(f"tampering must be one of {', '.join(TAMPERING_DECISIONS)}, got {self.tampering!r}")
        if self.tampering_threshold is not None and not (
                isinstance(self.tampering_threshold, (int, float)) and 0 <= self.tampering_threshold < 1):
            raise ValueError(f"tampering_threshold must be in [0, 1), got {self.tampering_threshold!r}")
        if _not_whole(self.max_pixels) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {self.max_pixels!r}")

    def replace(self, **changes: Any) -> "PredictorOptions":
        """A copy with some options changed, checked again."""
        unknown = sorted(set(changes) - set(NAMES))
        if unknown:
            raise TypeError(f"unknown predictor option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PredictorOptions))


def check_multiple(name: str, value: Any) -> int:
    if _not_whole(value) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
        raise ValueError(f"{name} must be a positive multiple of {SIZE_MULTIPLE}, got {value!r}")
    return int(value)


def _not_whole(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, numbers.Integral)  # numpy integers are Integral
