"""CLI commands, one module per concern; `upocr.cli` dispatches. Shared argparse helpers live in
`upocr.commands.options` (and the argparse types beside the options they check, in `upocr.options`)."""

from __future__ import annotations

from upocr.options import positive_number as positive

__all__ = ["positive"]
