"""`upocr synth`: write synthetic training/test data in the three benchmark layouts."""

from __future__ import annotations

import argparse
import sys

from upocr.tasks import Task


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic data (text removal, segmentation, tampering) in the benchmark layouts",
        description="Render synthetic scene/document text with exact ground truth into DATA_ROOT in the "
                    "SCUT-ENS, TextSeg and Tampered-IC13 layouts. Same seed and count give the same bytes. "
                    "The test split uses fonts and photos disjoint from the train split.",
    )
    parser.add_argument("--out", required=True, metavar="DATA_ROOT", help="data root (created if missing)")
    parser.add_argument("--count", type=int, required=True, help="samples per task")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); a new seed adds data")
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--size", default="512", help="image size: N (square) or WxH (default 512)")
    parser.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                        help="subset of: " + ", ".join(t.short for t in Task) + " (default: all)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--scenes", choices=["v1", "v2"], default="v1",
                        help="v1: the original random blocks (default, same bytes as before); v2: text as in the "
                             "world (signs, posters, screenshots, book pages, receipts at print size, camera "
                             "effects, more scripts, copy-move/splice tampering); see docs/data.md")
    parser.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                        help="with --scenes v2: draw only these scene kinds (classic, sign, poster, ui, document; their "
                             "weights renormalised), e.g. more big display words for training; default: all, "
                             "the v2 mix")
    parser.add_argument("--backgrounds", metavar="DIR", default=None,
                        help="folder of text-free photos (any size; searched recursively) used as backgrounds "
                             "besides the built-in ones; unreadable files are skipped with a warning")
    parser.add_argument("--background-mix", type=float, default=0.5, metavar="F",
                        help="share of backgrounds taken from --backgrounds (0-1, default 0.5)")
    parser.add_argument("--contact-sheet", metavar="DIR", default=None,
                        help="instead of a dataset, write 16-sample contact sheets per task into DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from upocr.data.synth import SynthError, generate_dataset, parse_size

    try:
        tasks = Task.parse_many(args.tasks) if args.tasks else None
        if args.contact_sheet:
            from upocr.data.synth.contact_sheet import make_contact_sheets

            height, width = parse_size(args.size)
            if height != width:
                raise SynthError("--contact-sheet needs a square --size")
            for task, path in make_contact_sheets(args.contact_sheet, split=args.split, seed=args.seed, size=height,
                                                  workers=args.workers, scenes=args.scenes,
                                                  background_dir=args.backgrounds,
                                                  background_mix=args.background_mix,
                                                  kinds=args.kinds).items():
                print(f"{task}: {path}")
            return 0
        summary = generate_dataset(args.out, count=args.count, seed=args.seed, split=args.split, size=args.size,
                                   tasks=tasks, workers=args.workers, scenes=args.scenes,
                                   background_dir=args.backgrounds, background_mix=args.background_mix,
                                   kinds=args.kinds)
    except (SynthError, ValueError) as error:
        print(f"upocr synth: error: {error}", file=sys.stderr)
        return 2
    height, width = summary["size"]
    print(f"wrote {summary['count']} {summary['split']} samples x {len(summary['tasks'])} tasks "
          f"({', '.join(summary['tasks'])}) at {width}x{height} into {summary['root']} "
          f"in {summary['seconds']:.1f}s ({summary['samples_per_second']:.1f} samples/s)")
    return 0
