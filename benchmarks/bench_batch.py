"""`upocr batch` (a Ray Data actor pool, `upocr.batch.run_batch`) against the CLI loop (`upocr.files.predict_files`)
on one folder of small images: images/s per actor count, and whether the files equal the CLI's byte for byte.

    python benchmarks/bench_batch.py                                  # 200 images, segmentation, CLI vs 1 and 2 actors
    python benchmarks/bench_batch.py --actors 1 2 4 --images 500 --task removal
    python benchmarks/bench_batch.py --kill                           # also 2 actors with one killed mid-write

The folder holds `--images` JPEGs cut from the bundled sample photos, 96x128 to 240x320 (small: the model
resizes them all to its size, so each costs one forward pass). Each row runs in a fresh process:
* CLI rows: load the bundled weights (or `--weights`) with torch using `--cli-threads` threads ("setup"), then
  `predict_files` over the folder ("run": what `upocr segment-text DIR -o OUT` does after start-up);
* Ray rows: `ray.init(num_cpus=--cpus)` ("setup"), then `run_batch` with N actors of 1 CPU (and torch thread)
  each ("run": the actors' start and model loads included, as a user waits for them).
images/s is images / run. The last column counts the files that differ from the first row's.
On a machine shared with other jobs the numbers move with its load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_folder import make_folder  # noqa: E402 - the benchmarks' folder of photos
from machine import describe, load_average  # noqa: E402


ROW_MARK = "bench_batch row: "  # the child's result line; Ray's own lines (a killed worker) may follow it


def child(args: argparse.Namespace, kind: str, count: int, folder: Path, out: Path) -> dict:
    start = time.perf_counter()
    if kind == "cli":
        import torch

        from upocr.files import predict_files
        from upocr.predict import Predictor

        torch.set_num_threads(count)
        predictor = Predictor(weights=args.weights, keep_output=False)
        ready = time.perf_counter()
        report = predict_files(predictor, [folder], out, args.task)
    else:
        import logging

        import ray

        from upocr.batch import CRASH_ONCE_ENV, run_batch

        if kind == "kill":
            os.environ[CRASH_ONCE_ENV] = str(out.parent / f"killed-{count}")
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
        ready = time.perf_counter()
        report = run_batch([folder], out, args.task, weights=args.weights, device="cpu", actors=count)
    done = time.perf_counter()
    return {"setup": ready - start, "run": done - ready, "done": report.done, "errors": len(report.errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="segmentation", choices=["removal", "segmentation", "tampering"])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--actors", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--cli-threads", nargs="+", type=int, default=[os.cpu_count() or 1, 1],
                        help="torch threads of the CLI rows (default: every core, then 1)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="the local Ray's CPUs (default: every core)")
    parser.add_argument("--kill", action="store_true", help="add a row: the most actors, one of them killed once mid-write")
    parser.add_argument("--weights", default=None, help="default: the bundled weights")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "N", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, count, folder, out = args.child
        print(ROW_MARK + json.dumps(child(args, kind, int(count), Path(folder), Path(out))), flush=True)
        return

    rows = [("cli", n) for n in args.cli_threads] + [("ray", n) for n in args.actors]
    rows += [("kill", max(args.actors))] if args.kill else []
    labels = {"cli": "CLI loop, {} torch thread(s)", "ray": "upocr batch, {} actor(s)", "kill": "upocr batch, {} actors, 1 killed"}
    print(f"{args.images} images (96x128 .. 240x320 JPEG), task {args.task}, weights {args.weights or 'bundled'}; "
          f"{describe()} (before)", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp) / "in"
        folder.mkdir()
        make_folder(folder, args.images, heights=(96, 240), widths=(128, 320))
        first_out = None
        for index, (kind, count) in enumerate(rows):
            out = Path(temp) / f"out-{index}"
            command = [sys.executable, __file__, "--task", args.task, "--cpus", str(args.cpus), "--child", kind, str(count),
                       str(folder), str(out)] + (["--weights", args.weights] if args.weights else [])
            started = time.perf_counter()
            stdout = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            line = next(line for line in stdout.splitlines() if line.startswith(ROW_MARK))  # Ray prints lines too
            row = {**json.loads(line.removeprefix(ROW_MARK)), "label": labels[kind].format(count), "total": time.perf_counter() - started}
            if first_out is None:
                first_out, row["differ"] = out, 0
            else:
                row["differ"] = sum(not (out / p.relative_to(first_out)).is_file()
                                    or p.read_bytes() != (out / p.relative_to(first_out)).read_bytes()
                                    for p in first_out.rglob("*") if p.is_file())
            results.append(row)
            print(f"{row['label']}: {row['run']:.1f} s, load average {load_average()}", file=sys.stderr, flush=True)

    print(f"load average after: {load_average()}\n")
    print("| row | setup s | run s | images/s | speed-up | whole process s | failed | files differing from row 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = results[0]["run"]
    for row in results:
        print(f"| {row['label']} | {row['setup']:.1f} | {row['run']:.1f} | {row['done'] / row['run']:.2f} | "
              f"{base / row['run']:.2f}x | {row['total']:.1f} | {row['errors']} | {row['differ']} |")


if __name__ == "__main__":
    main()
