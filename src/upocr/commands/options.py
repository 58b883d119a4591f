"""Options declared once as dataclass fields become argparse options here (and nowhere by hand).

A field's metadata (`upocr.fields.option`, or `upocr.options.option` for the predictor's) carries its help and
optionally its flags (default `--name-with-dashes`), argparse type (default: coercion to the field's
annotation, so `--lr 1e-4` reads as a YAML `lr: 1e-4` does), choices, metavar, nargs, const and scope.
`add_options` adds the fields a command wants (all, those of some scopes, or some by name), with the
dataclass default shown in the help; a `bool` field is a switch that sets the opposite of its default
(`augment: bool = True` with flags ("--no-augment",)); a `list[...]` field takes one or more values. No
option has an argparse default: an option not given is absent from the namespace, so `given_options` /
`options_from_args` leave the dataclass default (or a config file's value) in place ("None: from the
weights" survives the round trip).

    add_options(parser, TrainConfig)                       # every training option
    config = resolve_config(args.config, given_options(args, TrainConfig))
    add_options(parser, PredictorOptions, scopes=("model",), title="how the model runs")
    options = options_from_args(args, PredictorOptions, keep_output=False)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from upocr.fields import coerce, field_types
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


def add_options(parser: argparse.ArgumentParser | Any, cls: type, *, scopes: Iterable[str] | None = None,
                only: Iterable[str] | None = None, title: str | None = None) -> list[str]:  # fmt: skip
    """Add fields of dataclass `cls` declared as options (help in their metadata) to `parser` (in a group
    called `title`): every one, or those whose metadata scope is in `scopes` or whose name is in `only`.
    Returns the names added."""
    declared = [item for item in dataclasses.fields(cls) if item.metadata.get("help") is not None]
    unknown = sorted(set(only or ()) - {item.name for item in declared})
    if unknown:
        raise ValueError(f"{cls.__name__} has no command-line option(s) {', '.join(unknown)}")
    chosen = declared if scopes is None and only is None else [
        item for item in declared if item.metadata.get("scope") in set(scopes or ()) or item.name in set(only or ())]
    target = parser.add_argument_group(title) if title else parser
    annotations = field_types(cls)
    for item in chosen:
        meta, annotation = item.metadata, annotations[item.name]
        settings: dict[str, Any] = {"dest": item.name, "default": argparse.SUPPRESS}
        if annotation is bool:
            settings.update(action="store_false" if item.default is True else "store_true", help=meta["help"])
        else:
            element = _element_type(annotation)
            settings.update(type=meta.get("type") or _parser(element, item.name), help=_help(meta["help"], item.default))
            settings.update({key: meta[key] for key in ("choices", "metavar", "nargs", "const") if meta.get(key) is not None})
            if element is not annotation and "nargs" not in settings:
                settings["nargs"] = "+"  # a list field: one or more values
            if "metavar" not in settings and "choices" not in settings and typing.get_origin(element) is typing.Literal:
                settings["metavar"] = "{" + ",".join(str(choice) for choice in typing.get_args(element)) + "}"
        target.add_argument(*(meta.get("flags") or (f"--{item.name.replace('_', '-')}",)), **settings)
    return [item.name for item in chosen]


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """{field name: value} for the fields of `cls` that were given on the command line."""
    return {item.name: getattr(args, item.name) for item in dataclasses.fields(cls) if hasattr(args, item.name)}


def options_from_args(args: argparse.Namespace, cls: type[T], **overrides: Any) -> T:
    """`cls` from the parsed arguments: given options, then `overrides`; the rest keep their defaults."""
    return cls(**{**given_options(args, cls), **overrides})


def _element_type(annotation: Any) -> Any:
    """The type one command-line value is read as: X for list[X] (or list[X] | None), else the annotation."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for member in typing.get_args(annotation) if union else (annotation,):
        if typing.get_origin(member) is list:
            return (typing.get_args(member) or (str,))[0]
    return annotation


def _parser(annotation: Any, name: str) -> Callable[[str], Any]:
    """An argparse type reading text as `annotation` (one line in argparse's error on failure). The value of
    a Literal is read as text: the dataclass checks it (with every other value) and names the field."""
    if typing.get_origin(annotation) is typing.Literal:
        return str

    def parse(text: str) -> Any:
        try:
            return coerce(text, annotation, name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _help(text: str, default: Any) -> str:
    if "default" in text or default is None or default is dataclasses.MISSING:
        return text
    return f"{text} (default {default})"
