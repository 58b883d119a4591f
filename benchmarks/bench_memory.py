"""Peak memory and time of the task commands on large images: one table of command x tile x size ->
s/image, tiles, peak RSS, and the floor (decoded input + output, which any run holds).

    python benchmarks/bench_memory.py                                     # remove-text + segment-text, tile 256 and auto
    python benchmarks/bench_memory.py --sizes 1000x1000 4000x3000 9000x9000 --tiles 256 auto --batch-size 8
    python benchmarks/bench_memory.py --commands segment-text --tiles 256 --weights src/upocr/weights

    python benchmarks/bench_memory.py --stand-in                          # the pipeline alone, in seconds

Each row is one `upocr <command> IMAGE -o OUT --tile T` in a fresh process, under an address-space
limit (`--limit-kb`, default 6,000,000 KB, as `ulimit -v`); its peak RSS is that process's own (wait4).
The synthetic images (a smooth background with rows of dark print, PNG) are made once in `--images`.
Time is the whole command: start-up and model loading (the 1000x1000 row shows that part) and encoding.
`--stand-in` replaces the model by a cheap local filter (a 5x5 mean; dark pixels read as text) and runs
the same `upocr.files.predict_files` call as the command: what reading, tiling, decoding, Telea and
writing hold, without the model's time (its per-tile activations are the same at every image size).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import describe  # the CPU and its flags, above every table (benchmarks/machine.py)

COMMANDS = ("remove-text", "segment-text", "detect-tampering")
TASKS = {"remove-text": "removal", "segment-text": "segmentation", "detect-tampering": "tampering"}

# `predict_files` with a stand-in model, as `upocr <command>` runs it (argv: image out task tile batch size).
STAND_IN = """
import inspect, sys
import torch, torch.nn.functional as F
from upocr.files import predict_files
from upocr.predict import Predictor

def stand_in(images, tasks):
    blurred = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
    return 1 - blurred if tasks[0] == 2 else blurred

image, out, task, tile, batch, size = sys.argv[1:]
options = {"keep_output": False} if "keep_output" in inspect.signature(Predictor).parameters else {}
predictor = Predictor(stand_in, size=int(size), tile=tile if tile == "auto" else int(tile), batch_size=int(batch), **options)
report = predict_files(predictor, [image], out, task)
sys.exit(1 if report.errors else 0)
"""


def make_image(path: Path, width: int, height: int) -> None:
    """A smooth light background with dark print every 40 rows, written as PNG (made in row bands)."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(150, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    for row in range(30, height, 40):
        for column in range(10, width - 200, 400):
            cv2.putText(image, "Sample text 42", (column, row), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (30, 30, 30), 2)
    Image.fromarray(image).save(path, compress_level=1)


def tile_count(width: int, height: int, tile: str, size: int) -> int:
    from upocr.predict import AUTO_TILE_AREA_FACTOR, tile_starts

    if tile == "auto":
        if width * height <= AUTO_TILE_AREA_FACTOR * size * size:
            return 1  # resized
        tile = str(size)
    step = int(tile)
    overlap = step // 8
    return len(tile_starts(max(height, step), step, overlap)) * len(tile_starts(max(width, step), step, overlap))


def run(command: list[str], limit_kb: int) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit status) of one command in a fresh process under `limit_kb`."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_kb * 1024, limit_kb * 1024))

    start = time.perf_counter()
    process = subprocess.Popen(command, preexec_fn=limit, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        print(f"# {' '.join(command)}: exit {process.returncode}: {errors.decode()[-300:].strip()}", file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=["remove-text", "segment-text"])
    parser.add_argument("--sizes", nargs="+", default=["1000x1000", "4000x3000", "9000x9000"], help="WIDTHxHEIGHT")
    parser.add_argument("--tiles", nargs="+", default=["256", "auto"])
    parser.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass")
    parser.add_argument("--weights", type=Path, help="default: the bundled weights")
    parser.add_argument("--model-size", type=int, default=256,
                        help="the weights' input size, which --tile auto tiles with (256 for the bundled weights)")
    parser.add_argument("--stand-in", action="store_true", help="a cheap stand-in model instead of the weights")
    parser.add_argument("--images", type=Path, default=Path(tempfile.gettempdir()) / "upocr-bench-memory")
    parser.add_argument("--limit-kb", type=int, default=6_000_000, help="address-space limit (ulimit -v)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more options for the command")
    args = parser.parse_args()

    size = args.model_size
    args.images.mkdir(parents=True, exist_ok=True)
    model = "stand-in model (5x5 mean)" if args.stand_in else f"weights {args.weights or 'bundled'}"
    print(describe())
    print(f"{model}, limit {args.limit_kb:,} KB, batch size {args.batch_size}, model input size {size}, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"| command | tile | size | tiles | s/image | peak RSS MB | floor MB (input + output) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for text in args.sizes:
        width, height = (int(v) for v in text.lower().split("x"))
        image = args.images / f"synthetic-{width}x{height}.png"
        if not image.exists():
            make_image(image, width, height)
        for command in args.commands:
            for tile in args.tiles:
                with tempfile.TemporaryDirectory() as out:
                    if args.stand_in:
                        line = [sys.executable, "-c", STAND_IN, str(image), out, TASKS[command], tile,
                                str(args.batch_size), str(size)]
                    else:
                        line = [sys.executable, "-m", "upocr.cli", command, str(image), "-o", out, "--tile", tile,
                                "--batch-size", str(args.batch_size), *args.extra]
                    if args.weights and not args.stand_in:
                        line += ["--weights", str(args.weights)]
                    seconds, peak, status = run(line, args.limit_kb)
                output_bytes = 3 if command == "remove-text" else 1
                floor = width * height * (3 + output_bytes) / 2**20
                shown = f"{peak:,.0f}" if status == 0 else f"failed ({peak:,.0f})"
                print(f"| {command} | {tile} | {width}x{height} | {tile_count(width, height, tile, size)} | "
                      f"{seconds:.1f} | {shown} | {floor:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
