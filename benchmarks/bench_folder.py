"""A folder of photos through `upocr.files.predict_files` (what `upocr remove-text DIR -o OUT` runs):
images/s and peak RSS for each `--batch-sizes` value, the files written included.

    python benchmarks/bench_folder.py                                    # 24 images, segmentation, batch 1 4 8
    python benchmarks/bench_folder.py --task removal --images 48 --batch-sizes 1 8 16 --device cuda

The folder holds `--images` JPEGs cut from the bundled sample photos at sizes between 300x200 and
900x700 (small enough that `tile="auto"` resizes them all, so they can share forward passes). Each row
runs in a fresh process (its own peak RSS): load the bundled weights (or `--weights`), one warm-up image,
then the whole folder, timed. The files of every row must equal those of the first byte for byte where
the model's batched kernels sum in the same order, else the row reports how many differ (float32
summation order; see tests/test_predict.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # the CPU and its flags, above every table (benchmarks/machine.py)

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "upocr" / "samples"


def make_folder(folder: Path, count: int, seed: int = 0, heights: tuple[int, int] = (200, 700),
                widths: tuple[int, int] = (300, 900)) -> None:
    """`count` JPEGs cut from the sample photos, sides drawn from `heights` and `widths` (inclusive)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(SAMPLES.glob("*.jpg"))]
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = int(rng.integers(heights[0], heights[1] + 1)), int(rng.integers(widths[0], widths[1] + 1))
        top = int(rng.integers(0, max(1, photo.shape[0] - height // 2)))
        left = int(rng.integers(0, max(1, photo.shape[1] - width // 2)))
        crop = Image.fromarray(photo[top:, left:]).resize((width, height), Image.Resampling.BICUBIC)
        crop.save(folder / f"{index:03d}.jpg", quality=90)


def child(args: argparse.Namespace, batch_size: int, folder: Path, out: Path) -> dict:
    import torch

    from upocr.files import predict_files
    from upocr.predict import Predictor

    torch.set_num_threads(args.threads)
    predictor = Predictor(weights=args.weights, device=args.device, batch_size=batch_size, keep_output=False)
    warm = out.parent / f"warm-{batch_size}"
    predict_files(predictor, [sorted(folder.iterdir())[0]], warm, args.task)
    start = time.perf_counter()
    report = predict_files(predictor, [folder], out, args.task)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"batch": batch_size, "seconds": seconds, "done": report.done, "errors": len(report.errors), "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="segmentation", choices=["removal", "segmentation", "tampering"])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=None, help="default: the bundled weights")
    parser.add_argument("--child", nargs=3, metavar=("BATCH", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args, int(args.child[0]), Path(args.child[1]), Path(args.child[2]))))
        return

    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp) / "in"
        folder.mkdir()
        make_folder(folder, args.images)
        common = ["--task", args.task, "--device", args.device, "--threads", str(args.threads)]
        if args.weights:
            common += ["--weights", args.weights]
        rows, first_out = [], None
        for batch in args.batch_sizes:
            out = Path(temp) / f"out-{batch}"
            line = subprocess.run([sys.executable, __file__, *common, "--child", str(batch), str(folder), str(out)],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            row = json.loads(line)
            if first_out is None:
                first_out, row["differ"] = out, 0
            else:
                row["differ"] = sum(p.read_bytes() != (out / p.name).read_bytes() for p in first_out.iterdir())
            rows.append(row)
            print(f"batch {batch}: {row['seconds']:.1f} s", file=sys.stderr)

    print(describe())
    print(f"\n{args.images} images (300x200 .. 900x700 JPEG), task {args.task}, {args.device}, {args.threads} threads\n")
    print("| --batch-size | s (folder) | images/s | speed-up | peak RSS | files differing from batch 1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    base = rows[0]["seconds"]
    for row in rows:
        print(f"| {row['batch']} | {row['seconds']:.2f} | {row['done'] / row['seconds']:.2f} | {base / row['seconds']:.2f}x "
              f"| {row['peak_mib']:.0f} MiB | {row['differ']} |")


if __name__ == "__main__":
    main()
