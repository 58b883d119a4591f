"""`upocr` command line. Thin: each sub-command lives in `upocr/commands/<name>.py`, which exposes
`register(subparsers)` and calls the same API functions a Python user calls."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module adds its sub-commands; order is the order shown in --help.
COMMAND_MODULES = ("predict", "batch", "synth", "train", "forensics", "evaluate", "serve", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upocr",
        description="Unified pixel-level OCR: text removal, text segmentation, tampered text detection.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"upocr.commands.{name}")
        module.register(subparsers)
    return parser


# The exit status of a program stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        # Each sub-command sets `func` (via set_defaults) returning an exit code.
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # Commands that have something to say (what was done, how to resume) catch it themselves;
        # whatever reaches here gets one line instead of a traceback.
        print("upocr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
