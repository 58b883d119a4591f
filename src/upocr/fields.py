"""Options declared once: dataclass fields that carry their command-line flag and help, and values coerced
to each field's annotation.

A dataclass of options (`upocr.train.config.TrainConfig`, the predictor's options) declares each field
with :func:`option`; `upocr.commands.options.add_options` turns those fields into argparse
options, and :func:`coerce_fields` (called from `__post_init__`) turns what a YAML file, a web form or
a Python caller gave into the annotated types, or raises one ValueError naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections import abc
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

# Metadata keys of `option` fields (read by upocr.commands.options.add_options):
#   help      the option's help text (a field without it is no command-line option)
#   flags     its flags, e.g. ("--output",); default "--" + the field name with "-" for "_"
#   type      an argparse type (text -> value); default: coercion to the field's annotation
#   choices   argparse choices (a Literal annotation lists its choices in the help instead)
#   metavar, nargs, const   as in argparse.add_argument


def option(default: Any = dataclasses.MISSING, *, help: str, flags: tuple[str, ...] | None = None,
           type: Callable[[str], Any] | None = None, choices: tuple[Any, ...] | None = None, metavar: str | None = None,
           nargs: str | None = None, const: Any = None, default_factory: Any = dataclasses.MISSING,
           **extra: Any) -> Any:  # fmt: skip
    """A dataclass field that is also a command-line option. `extra` goes into the metadata as well
    (for a face's own filters, e.g. which commands show the option)."""
    metadata = {"help": help, "flags": flags, "type": type, "choices": choices, "metavar": metavar, "nargs": nargs,
                "const": const, **extra}  # fmt: skip
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def field_types(cls: type) -> dict[str, Any]:
    """{field name: annotation} of a dataclass, with string annotations (`from __future__ import
    annotations`) resolved."""
    hints = typing.get_type_hints(cls)
    return {item.name: hints[item.name] for item in dataclasses.fields(cls)}


def coerce_fields(instance: Any) -> None:
    """Coerce every field of a dataclass instance to its annotation, in place (frozen ones too);
    ValueError '<field> must be <what>, got <value>' for the first that does not fit."""
    for name, annotation in field_types(type(instance)).items():
        value = getattr(instance, name)
        coerced = coerce(value, annotation, name)
        if coerced is not value:
            object.__setattr__(instance, name, coerced)


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """`value` as `annotation` says: numbers from numeric text ('1e-4' -> 0.0001, which YAML 1.1 reads as
    text), whole numbers from integral floats (1e3 -> 1000), a list from one item, text from a path.
    Supports int, float, bool, str, Path, Any, Literal, list[X], dict[..] / Mapping and unions with None."""
    try:
        return _coerce(value, annotation)
    except _Mismatch:
        raise ValueError(f"{name} must be {describe_type(annotation)}, got {value!r}") from None


class _Mismatch(Exception):
    pass


def _coerce(value: Any, annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is None or annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for member in args:
            if member is not type(None):
                try:
                    return _coerce(value, member)
                except _Mismatch:
                    continue
        raise _Mismatch
    if origin is Literal:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and value in args:
            return value
        raise _Mismatch
    if origin in (list, tuple) or annotation in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]  # one item: a list of one
        item_type = args[0] if args else Any
        coerced = [_coerce(item, item_type) for item in items]
        return coerced if (origin or annotation) is list else tuple(coerced)
    if origin in (dict, abc.Mapping) or annotation in (dict, abc.Mapping, Mapping):
        if isinstance(value, Mapping):
            return value if isinstance(value, dict) else dict(value)
        raise _Mismatch
    return _coerce_scalar(value, annotation)


def _coerce_scalar(value: Any, annotation: Any) -> Any:
    if isinstance(value, bool) and annotation is not bool:
        raise _Mismatch  # True is an int in Python, never a number of steps
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[value.strip().lower()]
        raise _Mismatch
    if annotation is int:
        if isinstance(value, int):
            return value
        number = _number(value)
        if number.is_integer():
            return int(number)
        raise _Mismatch
    if annotation is float:
        return value if type(value) is float and math.isfinite(value) else _number(value)
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch
    if annotation is Path:
        if isinstance(value, (str, os.PathLike)):
            return value if isinstance(value, Path) else Path(value)
        raise _Mismatch
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise _Mismatch


_BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _number(value: Any) -> float:
    """A finite float from a number or numeric text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Mismatch from None
    else:
        raise _Mismatch
    if not math.isfinite(number):
        raise _Mismatch
    return number


def describe_type(annotation: Any) -> str:
    """What a value of `annotation` is, in words: 'a number or null', 'one of auto, fp32'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(member) for member in args)
    if origin is Literal:
        return "one of " + ", ".join(str(choice) for choice in args)
    if origin in (list, tuple) or annotation in (list, tuple):
        return f"a list of {_PLURALS.get(args[0], 'values') if args else 'values'}"
    if origin in (dict, abc.Mapping) or annotation in (dict, abc.Mapping, Mapping):
        return "a mapping"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", Path: "a path",
          type(None): "null", Any: "anything"}  # fmt: skip
_PLURALS = {int: "whole numbers", float: "numbers", str: "texts"}
