"""CLI commands, one module per concern; `upocr.cli` dispatches. Shared argparse helpers live here."""

from __future__ import annotations

import argparse
from typing import Callable


def positive(kind: Callable[[str], int | float], *, allow_zero: bool = False) -> Callable[[str], int | float]:
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
