"""Synthetic data throughput: samples per second per task at a given size and worker count.

    python benchmarks/bench_synth.py [--size 512] [--count 40] [--workers 1 2] [--scenes v1 v2]
                                     [--backgrounds DIR]

Prints a table (one row per scene version, task and worker count). Writes into a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile

from machine import describe  # the CPU and its flags, above every table (benchmarks/machine.py)

from upocr.data.synth import generate_dataset
from upocr.tasks import Task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512")
    parser.add_argument("--count", type=int, default=40, help="samples per task per row")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scenes", nargs="+", default=["v1", "v2"], choices=["v1", "v2"])
    parser.add_argument("--backgrounds", default=None, help="folder of text-free photos (upocr synth --backgrounds)")
    args = parser.parse_args()
    print(describe())
    print("| scenes | task | size | workers | samples | seconds | samples/s |")
    print("|---|---|---|---|---|---|---|")
    for scenes in args.scenes:
        options = dict(scenes=scenes, background_dir=args.backgrounds, progress=False)
        for workers in args.workers:
            for seed, task in enumerate(Task):
                with tempfile.TemporaryDirectory(prefix="upocr-bench-") as root:
                    # Warm-up run (font tables, photo decoding) excluded from the timing, like a long run;
                    # with several workers each spawned process still pays its own start-up once.
                    generate_dataset(root, count=2, seed=1000 + seed, size=args.size, tasks=[task], workers=1,
                                     **options)
                    result = generate_dataset(root, count=args.count, seed=seed, size=args.size, tasks=[task],
                                              workers=workers, **options)
                print(f"| {scenes} | {task.short} | {args.size} | {workers} | {args.count} | {result['seconds']:.2f} "
                      f"| {result['samples_per_second']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
