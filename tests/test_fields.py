"""Options declared once: dataclass fields coerced by annotation, and argparse options made from them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Literal

import pytest

from upocr.commands.options import add_options, given_options, options_from_args
from upocr.fields import coerce, coerce_fields, option


@pytest.mark.parametrize("value, annotation, expected", [
    ("1e-4", float, 0.0001), (3, float, 3.0), ("64", int, 64), ("1e3", int, 1000), (2.0, int, 2),
    ("yes", bool, True), ("off", bool, False), ("x", str | None, "x"), (None, int | None, None),
    ("removal", list[str] | None, ["removal"]), (("a", "b"), list[str], ["a", "b"]), (Path("p"), str, "p"),
    ("p", Path, Path("p")), ({"preset": "tiny"}, str | dict[str, Any] | None, {"preset": "tiny"}),
    ("fp32", Literal["fp32", "bf16"], "fp32"),
])  # fmt: skip
def test_values_are_coerced_to_the_annotation(value, annotation, expected):
    result = coerce(value, annotation, "x")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value, annotation, message", [
    ("fast", float, "x must be a number, got 'fast'"), (True, int, "x must be a whole number, got True"),
    (2.5, int, "x must be a whole number, got 2.5"), ("nan", float, "x must be a number, got 'nan'"),
    (5, str | None, "x must be text or null, got 5"), ("fp8", Literal["fp32", "bf16"], "x must be one of fp32, bf16, got 'fp8'"),
    ([1], list[str], "x must be a list of texts, got [1]"), ("maybe", bool, "x must be true or false, got 'maybe'"),
])  # fmt: skip
def test_values_that_do_not_fit_name_the_field(value, annotation, message):
    with pytest.raises(ValueError, match=rf"^{__import__('re').escape(message)}$"):
        coerce(value, annotation, "x")


@dataclasses.dataclass(frozen=True)
class _Options:
    size: int | None = option(None, help="working size")
    mode: Literal["a", "b"] = option("a", help="the mode")
    output: str | None = option(None, flags=("--out", "-o"), help="where", scope="paths")
    fast: bool = option(False, help="go fast")
    colour: bool = option(True, flags=("--no-colour",), help="plain output")
    names: list[str] | None = option(None, help="names")
    resume: str | None = option(None, nargs="?", const="auto", help="continue")
    internal: bool = True  # no help: not a command-line option

    def __post_init__(self) -> None:
        coerce_fields(self)


def _parse(argv: list[str], only=None) -> tuple[dict, list[str]]:
    parser = argparse.ArgumentParser()
    names = add_options(parser, _Options, only=only)
    return given_options(parser.parse_args(argv), _Options), names


def test_every_declared_field_becomes_one_option_and_only_given_ones_come_back():
    values, names = _parse([])
    assert values == {} and names == ["size", "mode", "output", "fast", "colour", "names", "resume"]
    values, _ = _parse(["--size", "64", "--mode", "b", "-o", "x", "--fast", "--no-colour", "--names", "p", "q", "--resume"])
    assert values == {"size": 64, "mode": "b", "output": "x", "fast": True, "colour": False, "names": ["p", "q"],
                      "resume": "auto"}  # fmt: skip
    assert _Options(**values) == _Options(64, "b", "x", True, False, ["p", "q"], "auto")
    assert _parse(["--resume", "c.pt"])[0] == {"resume": "c.pt"}
    # A Literal's value is checked by the dataclass (one ValueError naming the field), not by argparse.
    with pytest.raises(ValueError, match="mode must be one of a, b, got 'c'"):
        _Options(**_parse(["--mode", "c"])[0])
    with pytest.raises(SystemExit):  # not a number at all: argparse's own one-line error
        _parse(["--size", "big"])


def test_only_and_scopes_pick_fields_and_unknown_names_are_refused():
    parser = argparse.ArgumentParser()
    assert add_options(parser, _Options, only=["fast", "size"]) == ["size", "fast"]
    assert [a.dest for a in parser._actions if a.dest != "help"] == ["size", "fast"]
    assert add_options(argparse.ArgumentParser(), _Options, scopes=["paths"]) == ["output"]
    with pytest.raises(ValueError, match="_Options has no command-line option.s. internal"):
        add_options(argparse.ArgumentParser(), _Options, only=["internal"])
    parser = argparse.ArgumentParser()
    add_options(parser, _Options)
    assert options_from_args(parser.parse_args(["--size", "32"]), _Options, fast=True) == _Options(size=32, fast=True)


def test_upocr_train_offers_every_training_option():
    from upocr.cli import build_parser
    from upocr.train.config import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {action.dest for action in train._actions}
    assert {item.name for item in dataclasses.fields(TrainConfig)} <= dests
    help_text = train.format_help()
    for item in dataclasses.fields(TrainConfig):  # the help is the field's own, declared once
        first_words = " ".join(item.metadata["help"].replace("%%", "%").split()[:3])
        assert first_words in " ".join(help_text.split()), item.name
