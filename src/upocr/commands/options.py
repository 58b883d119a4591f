"""Command-line options made from dataclass fields (options declared once: see `upocr.fields`).

    add_dataclass_options(parser, TrainConfig)          # one option per field declared with `option(...)`
    values = given_options(args, TrainConfig)            # {field: value} of the options the user gave
    config = TrainConfig(**values)                       # or merged with a config file first

Each field declared with `upocr.fields.option` becomes one argparse option: its flags (default `--name-with-
dashes`), help, type (default: coercion to the field's annotation, so `--lr 1e-4` and a YAML `lr: 1e-4`
read alike), choices, metavar, nargs and const from the field's metadata. A `bool` field is a switch that
sets the opposite of its default (`augment: bool = True` with flags ("--no-augment",)); a `list[...]` field
takes one or more values. No option has an argparse default: an option not given is absent from the
namespace, so the dataclass's default (or a config file's value) applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, Iterable

from upocr.fields import coerce, field_types


def add_dataclass_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                          only: Iterable[str] | None = None) -> list[str]:  # fmt: skip
    """Add an option to `parser` for every field of dataclass `cls` declared with `option(...)` (those with
    help in their metadata), or for the fields named in `only`, in `only`'s order. Returns the field names."""
    fields = {item.name: item for item in dataclasses.fields(cls) if item.metadata.get("help") is not None}
    names = list(fields) if only is None else list(only)
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise ValueError(f"{cls.__name__} has no command-line option(s) {', '.join(unknown)}")
    annotations = field_types(cls)
    for name in names:
        item, meta = fields[name], fields[name].metadata
        flags = meta.get("flags") or (f"--{name.replace('_', '-')}",)
        settings: dict[str, Any] = {"dest": name, "help": meta["help"], "default": argparse.SUPPRESS}
        annotation = annotations[name]
        if annotation is bool:
            settings["action"] = "store_false" if item.default is True else "store_true"
        else:
            element = _element_type(annotation)
            settings["type"] = meta.get("type") or _parser(element, name)
            for key in ("choices", "metavar", "nargs", "const"):
                if meta.get(key) is not None:
                    settings[key] = meta[key]
            if element is not annotation and "nargs" not in settings:
                settings["nargs"] = "+"  # a list field: one or more values
            if "metavar" not in settings and typing.get_origin(element) is typing.Literal:
                settings["metavar"] = "{" + ",".join(str(choice) for choice in typing.get_args(element)) + "}"
        parser.add_argument(*flags, **settings)
    return names


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """{field name: value} for the fields of `cls` that were given on the command line."""
    return {item.name: getattr(args, item.name) for item in dataclasses.fields(cls) if hasattr(args, item.name)}


def _element_type(annotation: Any) -> Any:
    """The type one command-line value is read as: X for list[X] (or list[X] | None), else the annotation."""
    members = [m for m in typing.get_args(annotation) if m is not type(None)] if _is_union(annotation) else [annotation]
    for member in members:
        if typing.get_origin(member) is list:
            return (typing.get_args(member) or (str,))[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


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
