"""Options declared once as dataclass fields become argparse options here (and nowhere by hand).

A field's metadata (`upocr.options.option`) carries its flags, help, argparse type, choices, metavar and
scope; `add_options` adds the fields of the scopes a command wants, with the dataclass default shown in
the help, and `options_from_args` builds the dataclass back from the parsed arguments (fields the user
did not give keep their dataclass default, so "None: from the weights" survives the round trip).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Iterable, TypeVar

from upocr.options import PredictorOptions
from upocr.tasks import Task

T = TypeVar("T")

# Which `PredictorOptions` each command shows (`upocr.options.option`'s scope): a task's command shows the
# options that change its result.
ALL_SCOPES = ("model", "removal", "segmentation", "tampering")
TASK_SCOPES: dict[Task, tuple[str, ...]] = {
    Task.TEXT_REMOVAL: ("model", "removal", "segmentation"),  # the threshold decides the model-text finder
    Task.TEXT_SEGMENTATION: ("model", "segmentation"),
    Task.TAMPERED_TEXT_DETECTION: ("model", "tampering"),
}


def add_model_arguments(parser: argparse.ArgumentParser, devices: tuple[str, ...] = ("cpu", "cuda")) -> None:
    """--weights and --device: which model runs where (every command that runs one). `devices`: the --device
    choices, the first the default (`upocr batch`: auto, cuda when the Ray cluster has GPUs)."""
    group = parser.add_argument_group("model")
    group.add_argument("--weights", type=Path, help="checkpoint file or folder (default: the bundled weights)")
    group.add_argument("--device", choices=devices, default=devices[0], help=f"default: {devices[0]}")


def add_predictor_options(parser: argparse.ArgumentParser, scopes: Iterable[str] = ALL_SCOPES,
                          devices: tuple[str, ...] = ("cpu", "cuda")) -> None:
    """--weights, --device and the `PredictorOptions` fields of `scopes` (declared once, in upocr.options)."""
    add_model_arguments(parser, devices)
    add_options(parser, PredictorOptions, scopes=scopes, title="how the model runs")


def add_options(parser: argparse.ArgumentParser | Any, cls: type, *, scopes: Iterable[str] = (),
                only: Iterable[str] = (), title: str | None = None) -> None:
    """Add the fields of dataclass `cls` whose metadata scope is in `scopes`, or whose name is in `only`,
    to `parser` (in a group called `title`)."""
    scopes, only = set(scopes), set(only)
    target = parser.add_argument_group(title) if title else parser
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "flags" not in meta or (meta.get("scope") not in scopes and field.name not in only):
            continue
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": _help(meta["help"], field.default)}
        for key in ("type", "choices", "metavar"):
            if meta.get(key) is not None:
                kwargs[key] = meta[key]
        target.add_argument(*meta["flags"], **kwargs)


def options_from_args(args: argparse.Namespace, cls: type[T], **overrides: Any) -> T:
    """`cls` from the parsed arguments: given options, then `overrides`; the rest keep their defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **overrides})


def _help(text: str, default: Any) -> str:
    if "default" in text or default is None or default is dataclasses.MISSING:
        return text
    return f"{text} (default {default})"
