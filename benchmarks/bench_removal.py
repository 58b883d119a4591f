"""Text removal pipelines: seconds per image and peak RSS, per pipeline x image size, on CPU.

    python benchmarks/bench_removal.py                                    # the defaults (~3 min on 2 cores)
    python benchmarks/bench_removal.py --pipelines words-telea telea-fill model-fill raw   # docs/results.md (~7 min)
    python benchmarks/bench_removal.py --runs 5 --threads 2
    python benchmarks/bench_removal.py --pipelines words-telea words-model --large-pipelines words-telea telea-fill

Rows (each in a fresh process, so that its peak RSS is its own):
* one per removal pipeline (`upocr.removal.REMOVAL_PIPELINES`) and image: `Predictor(removal=P,
  keep_output=False)` built from the bundled weights (as `upocr remove-text` builds it), one warm-up
  `predict(image, "removal")` on the decoded array, then `--runs` timed calls; the median is reported.
  "load s" is building the Predictor (model + detector on first use are in the warm-up, not counted).
  Rows whose pipeline runs the model (all but words-telea: every 256 x 256 tile of the photo, ~40 CPU s)
  run `--model-runs` times (default 1) without a warm-up, so that the defaults finish in ~3 minutes;
* "detector": `upocr.detector.WordDetector().detect(image)` alone (ONNX pass + DB post-processing);
* "CLI": `upocr remove-text photo.jpg -o OUT` (default pipeline) wall time, whole process: start-up,
  weight loading, JPEG decode, removal, PNG encode, write; median of `--runs` processes.
Peak RSS is the row process's maximum resident set (wait4, as `/usr/bin/time` reports it). "CPU s" is
the process's CPU time per call (all threads): on a shared, loaded machine, where wall time inflates,
CPU s / threads bounds what an idle machine's wall time would be from below (Telea is single-threaded).

The images: "photo" is a bundled sample photo (poster.jpg) resized to 1600 x 1200 with words rendered
over it in TrueType fonts at several sizes (a real-looking composition), saved as JPEG; "large" is
bench_memory's synthetic 9000 x 9000 page (smooth background, rows of dark print), PNG. By default the
large image runs only the pipelines without model passes over every tile (the model's pipelines would
take minutes there: `--large-pipelines` adds them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import make_image as make_page  # noqa: E402 - the synthetic large page
from machine import describe, load_average  # noqa: E402


SAMPLE = Path(__file__).resolve().parents[1] / "src" / "upocr" / "samples" / "poster.jpg"
PHOTO_SIZE = (1600, 1200)
LARGE_SIZE = (9000, 9000)
WORDS = ("OPEN DAILY", "Fresh Coffee", "SALE 50%", "Main Street 12", "welcome", "No parking", "EXIT",
         "Tickets 3.50", "Bakery & Cafe", "since 1987")
DETECTOR_ROW = "detector"


def make_photo(path: Path) -> None:
    """The 1600 x 1200 photo: the sample resized, words drawn over it in several fonts, sizes and colours."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    image = Image.open(SAMPLE).convert("RGB").resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    fonts = sorted(Path("/usr/share/fonts/truetype").glob("*/*.ttf"))[:6]
    rng = np.random.default_rng(0)
    for index in range(24):
        size = int(rng.integers(18, 90))
        font = ImageFont.truetype(str(fonts[index % len(fonts)]), size) if fonts else ImageFont.load_default(size)
        x, y = int(rng.integers(0, PHOTO_SIZE[0] - 300)), int(rng.integers(0, PHOTO_SIZE[1] - size))
        light = bool(rng.integers(0, 2))
        colour = tuple(int(c) for c in (rng.integers(200, 256, 3) if light else rng.integers(0, 60, 3)))
        draw.text((x, y), WORDS[index % len(WORDS)], font=font, fill=colour)
    image.save(path, quality=90)


def measure(row: str, image_path: Path, args: argparse.Namespace) -> dict:
    """One row in this (fresh) process: warm-up, then `args.runs` timed calls on the decoded array."""
    import torch

    from upocr.io import read_image

    torch.set_num_threads(args.threads)
    pixels = read_image(image_path)
    start = time.perf_counter()
    if row == DETECTOR_ROW:
        from upocr.detector import WordDetector

        detector = WordDetector(threads=args.threads)
        call = lambda: detector.detect(pixels)  # noqa: E731
    else:
        from upocr.predict import Predictor

        predictor = Predictor(removal=row, keep_output=False)
        call = lambda: predictor.predict(pixels, "removal")  # noqa: E731
    load = time.perf_counter() - start
    if not args.no_warm_up:
        call()  # warm-up: ONNX / torch first-run allocations, the detector opened on first use
    seconds, cpu_seconds = [], []
    for _ in range(args.runs):
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return {"load_s": load, "s_per_image": statistics.median(seconds), "min_s": min(seconds),
            "cpu_s": statistics.median(cpu_seconds)}


def child_rss(command: list[str]) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS MiB, stdout, error line or "") of one command in a fresh process (wait4)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    out, errors = process.stdout.read(), process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    tail = f"exit {process.returncode}: " + errors.decode(errors="replace").strip()[-300:] if process.returncode else ""
    return seconds, usage.ru_maxrss / 1024, out.decode(), tail


def model_passes(pipeline) -> bool:
    """Whether `pipeline` runs the UPOCR model under keep_output=False (all but the word finder + Telea)."""
    return pipeline.finder != "words" or pipeline.runs_removal_prompt(keep_output=False)


def main() -> int:
    from upocr.removal import REMOVAL_PIPELINES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", nargs="*", choices=list(REMOVAL_PIPELINES),
                        default=["words-telea"],
                        help="rows on the 1600 x 1200 photo (default: words-telea; each model pipeline adds 0.5-2 min)")
    parser.add_argument("--large-pipelines", nargs="*", choices=list(REMOVAL_PIPELINES), default=["words-telea"],
                        help="rows on the 9000 x 9000 page (default: words-telea, the default pipeline)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per row (median), after one warm-up")
    parser.add_argument("--model-runs", type=int, default=1,
                        help="timed runs of the rows that run the model, without a warm-up (tens of seconds each on 2 cores)")
    parser.add_argument("--no-warm-up", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help="torch and detector (ONNX Runtime) threads")
    parser.add_argument("--no-cli", action="store_true", help="skip the `upocr remove-text` rows")
    parser.add_argument("--images", type=Path, default=Path(tempfile.gettempdir()) / "upocr-bench-removal")
    parser.add_argument("--child", nargs=2, metavar=("ROW", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]), args)))
        return 0

    args.images.mkdir(parents=True, exist_ok=True)
    photo = args.images / "photo-1600x1200.jpg"
    large = args.images / "page-9000x9000.png"
    if not photo.exists():
        make_photo(photo)
    if args.large_pipelines and not large.exists():
        make_page(large, *LARGE_SIZE)
    print(f"{describe()} (start); {args.threads} threads; median of {args.runs} runs after 1 warm-up, fresh process per row; "
          f"bundled weights, keep_output=False")
    print("| row | image | s/image (median) | min s | CPU s/image | load s | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = [(p, photo, "1600x1200 photo") for p in [DETECTOR_ROW, *args.pipelines]]
    rows += [(p, large, "9000x9000 page") for p in [DETECTOR_ROW, *args.large_pipelines]]
    failed = 0
    for row, image, label in rows:
        runs_model = row != DETECTOR_ROW and model_passes(REMOVAL_PIPELINES[row])
        command = [sys.executable, __file__, "--child", row, str(image), "--threads", str(args.threads),
                   "--runs", str(args.model_runs if runs_model else args.runs)] + (["--no-warm-up"] if runs_model else [])
        _, peak, out, error = child_rss(command)
        if error:
            failed += 1
            print(f"| {row} | {label} | failed | | | | {peak:,.0f} |", flush=True)
            print(f"# {row} {label}: {error}", file=sys.stderr)
            continue
        result = json.loads(out.strip().splitlines()[-1])
        name = f"{row} (default)" if row == "words-telea" else row
        name += f" ({args.model_runs} run, no warm-up)" if runs_model else ""
        print(f"| {name} | {label} | {result['s_per_image']:.2f} | {result['min_s']:.2f} | {result['cpu_s']:.2f} | {result['load_s']:.1f} | "
              f"{peak:,.0f} |", flush=True)
    if not args.no_cli:
        environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        walls, peaks = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as out_dir:
                command = [sys.executable, "-m", "upocr.cli", "remove-text", str(photo), "-o", out_dir]
                start = time.perf_counter()
                process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                assert process.stderr is not None
                errors = process.stderr.read()
                _, status, usage = os.wait4(process.pid, 0)
                walls.append(time.perf_counter() - start)
                peaks.append(usage.ru_maxrss / 1024)
                if os.waitstatus_to_exitcode(status):
                    failed += 1
                    print(f"# CLI: {errors.decode(errors='replace').strip()[-300:]}", file=sys.stderr)
        print(f"| `upocr remove-text` CLI, whole process | 1600x1200 photo (JPEG in, PNG out) | "
              f"{statistics.median(walls):.2f} | {min(walls):.2f} | | (in s/image) | {max(peaks):,.0f} |")
    print(f"load average {load_average()} (end)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
