"""Inference cost per task: seconds per image and peak memory (RSS), fp32 on CPU by default.

    python benchmarks/bench_inference.py                      # paper and small configs, 512x512, all tasks
    python benchmarks/bench_inference.py --configs paper --runs 5 --threads 2

Each (config, task) runs in a fresh process so that its peak RSS is its own: build the model (random
weights; cost does not depend on the values), one warm-up `Predictor.predict` on a 512x512 photo, then
`--runs` timed calls (the median is reported). Time covers the whole predict call: resize, forward,
resize back and decoding. Removal runs in `--removal` mode (default: the Predictor's, telea-fill, which
adds the segmentation pass and Telea inpainting; with random weights the text mask, and so the Telea
time, is arbitrary: compare modes with `--weights`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from upocr.predict import DEFAULT_REMOVAL_MODE, REMOVAL_MODES

TASKS = ("removal", "segmentation", "tampering")


def measure(config: str, task: str, size: int, runs: int, threads: int, precision: str, tile: int | None,
            removal: str, weights: str | None) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    from upocr.model import build_model
    from upocr.model.checkpoint import load_model
    from upocr.predict import Predictor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = (load_model(weights) if weights else build_model(config)).eval()
    model_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    image = np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC))
    predictor = Predictor(model, size=size, precision=precision, tile=tile, removal=removal)
    predictor.predict(image, task)  # warm-up (allocator, kernels)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.predict(image, task)
        seconds.append(time.perf_counter() - start)
    return {
        "config": config,
        "task": f"removal ({removal})" if task == "removal" else task,
        "params_m": model.num_parameters / 1e6,
        "s_per_image": statistics.median(seconds),
        "model_rss_mib": model_rss,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["paper", "small"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--tile", type=int, default=None, help="tile size (default: resize mode)")
    parser.add_argument("--removal", choices=REMOVAL_MODES, default=DEFAULT_REMOVAL_MODE, help="text removal result mode")
    parser.add_argument("--weights", default=None, help="trained weights instead of random ones (--configs names the rows)")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.size, args.runs, args.threads, args.precision, args.tile, args.removal, args.weights)))
        return

    print(f"UPOCR inference, {args.size}x{args.size} image, {args.precision}, CPU, {args.threads} threads, "
          f"median of {args.runs} runs after 1 warm-up; fresh process per row")
    header = f"{'config':<8} {'params':>8} {'task':<22} {'s/image':>8} {'RSS model':>10} {'peak RSS':>9}"
    print(header)
    print("-" * len(header))
    for config in args.configs:
        for task in args.tasks:
            command = [sys.executable, __file__, "--child", config, task, "--size", str(args.size),
                       "--runs", str(args.runs), "--threads", str(args.threads), "--precision", args.precision,
                       "--removal", args.removal]
            if args.weights:
                command += ["--weights", args.weights]
            if args.tile:
                command += ["--tile", str(args.tile)]
            row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(f"{config:<8} {row['params_m']:>7.1f}M {row['task']:<22} {row['s_per_image']:>8.2f} "
                  f"{row['model_rss_mib']:>7.0f} MiB {row['peak_rss_mib']:>5.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
