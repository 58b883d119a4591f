"""Inference cost and fidelity: one table of config x precision x backend x size -> s/image, images/s,
peak memory, and agreement with fp32, on CPU (or a GPU: `--device cuda`).

    python benchmarks/bench_inference.py                                   # paper and small, 512, fp32 + int8
    python benchmarks/bench_inference.py --configs small --weights src/upocr/weights --sizes 256 512
    python benchmarks/bench_inference.py --configs paper --precisions fp32 bf16 int8 --runs 2
    python benchmarks/bench_inference.py --configs small paper --precisions fp32 --backends pytorch onnxruntime
    python benchmarks/bench_inference.py --device cuda --configs paper --precisions fp32 bf16 fp16 --batch 16

Each row runs in a fresh process so that its peak RSS is its own: build the model (random weights unless
`--weights`; cost does not depend on the values), one warm-up `Predictor.predict_tasks` on a bundled
sample photo resized to size x size, then `--runs` timed calls (the median is reported). Time covers the
whole call for all `--tasks`: resize, forward passes, resize back, decoding (removal in `--removal` mode,
default raw, so that the table measures the model rather than the classical inpainting).
`--backends onnxruntime` adds fp32 rows run by ONNX Runtime (`upocr.export`; the same weights exported by
another process first, neither its time nor its memory counted; ORT uses `--threads` intra-op threads).
Fidelity compares each row with the PyTorch fp32 row of the same config and size (run first): PSNR of the
text-removal image and agreement of the segmentation mask. With random weights these say little about
trained ones: pass `--weights` for meaningful numbers. bf16 is skipped on CPUs without native bf16
(AVX512-BF16 / AMX), where autocast emulates it and runs many times slower, unless `--precisions` names it.
On `--device cuda` the memory column is the peak GPU memory allocated, and `--batch N` adds the model's own
throughput on batches of N mixed-task images (images/s, in the row's precision): the serving figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # the CPU and its flags, above every table (benchmarks/machine.py)

from upocr.predict import BACKENDS, DEFAULT_REMOVAL_MODE, PRECISIONS, REMOVAL_MODES
from upocr.utils import cpu_has_native_bf16

TASKS = ("removal", "segmentation", "tampering")
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "upocr" / "samples" / "poster.jpg"


def measure(config: str, precision: str, backend: str, size: int, args: argparse.Namespace, reference: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from upocr.predict import Predictor

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    image = np.asarray(Image.open(SAMPLE).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    if backend == "onnxruntime":  # exported by another process, so that its memory is not counted here
        exported = reference.with_suffix(".onnx")
        command = [sys.executable, __file__, "--export", config, str(size), str(exported)]
        subprocess.run(command + (["--weights", args.weights] if args.weights else []), check=True)
        predictor = Predictor(weights=exported, size=size, tile=args.tile, removal=args.removal, backend=backend,
                              device=args.device)
    else:
        predictor = Predictor(build(config, args), size=size, precision=precision, tile=args.tile, removal=args.removal,
                              device=args.device)
    predictor.predict_tasks(image, args.tasks)  # warm-up (allocator, kernels, cached position biases)
    seconds = []
    for _ in range(args.runs):
        start = time.perf_counter()
        results = predictor.predict_tasks(image, args.tasks)
        seconds.append(time.perf_counter() - start)
    row = {
        "config": config,
        "precision": precision,
        "backend": backend,
        "size": size,
        "s_per_image": statistics.median(seconds),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }
    if cuda:
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if args.batch > 1 and backend == "pytorch":
        row["batch_images_per_s"] = batch_throughput(predictor, size, args)
    by_task = {prediction.task.name: prediction for prediction in results}
    arrays = {name: prediction.result for name, prediction in by_task.items()}
    if precision == "fp32" and backend == "pytorch":
        np.savez(reference, **arrays)
    elif reference.exists():
        row.update(fidelity(np.load(reference), arrays))
    return row


def batch_throughput(predictor, size: int, args: argparse.Namespace) -> float:
    """The model's own images/s on batches of `--batch` random images with the three tasks mixed."""
    import torch

    images = torch.rand(args.batch, 3, size, size, device=predictor.device)
    tasks = [TASKS[i % len(TASKS)] for i in range(args.batch)]
    synchronize = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
    with torch.inference_mode(), predictor._autocast():
        predictor.model(images, tasks)  # warm-up
        synchronize()
        start = time.perf_counter()
        for _ in range(args.runs):
            predictor.model(images, tasks)
        synchronize()
    return args.runs * args.batch / (time.perf_counter() - start)


def build(config: str, args: argparse.Namespace):
    """The benchmarked model: `--weights`, or the config's random initialisation (seed 0: every row alike)."""
    import torch

    from upocr.model import build_model
    from upocr.model.checkpoint import load_model

    torch.manual_seed(0)
    return (load_model(args.weights) if args.weights else build_model(config)).eval()


def fidelity(reference, arrays: dict) -> dict:
    import numpy as np

    scores = {}
    if "TEXT_REMOVAL" in arrays:
        mse = np.mean((arrays["TEXT_REMOVAL"].astype(np.float64) - reference["TEXT_REMOVAL"]) ** 2)
        scores["psnr_db"] = float(10 * np.log10(255.0**2 / max(mse, 1e-10)))
    for task in ("TEXT_SEGMENTATION", "TAMPERED_TEXT_DETECTION"):
        if task in arrays:
            scores.setdefault("agreement", []).append(float(np.mean(arrays[task] == reference[task])))
    if "agreement" in scores:
        scores["agreement"] = min(scores["agreement"])
    return scores


def format_fidelity(row: dict) -> str:
    if row["precision"] == "fp32" and row["backend"] == "pytorch":
        return "reference"
    parts = []
    if "psnr_db" in row:
        parts.append(f"removal {row['psnr_db']:.1f} dB" if row["psnr_db"] < 100 else "removal identical")
    if "agreement" in row:
        parts.append(f"masks {100 * row['agreement']:.2f}%")
    return ", ".join(parts) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["paper", "small"])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                        help="default: fp32, int8, and bf16 where the CPU has native bf16 (cuda: fp32, bf16, fp16)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=1, help="also time the model on batches of N images (N > 1)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["pytorch"],
                        help="onnxruntime rows run fp32 only (default: pytorch)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=None, help="tile size (default: resize mode)")
    parser.add_argument("--removal", choices=REMOVAL_MODES, default="raw",
                        help=f"text removal result mode (default raw: the model alone; the Predictor's default, "
                        f"{DEFAULT_REMOVAL_MODE}, adds inpainting whose time grows with the text area)")
    parser.add_argument("--weights", default=None, help="trained weights instead of random ones (--configs names the rows)")
    parser.add_argument("--child", nargs=5, metavar=("CONFIG", "PRECISION", "BACKEND", "SIZE", "REFERENCE"), help=argparse.SUPPRESS)
    parser.add_argument("--export", nargs=3, metavar=("CONFIG", "SIZE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export:
        from upocr.export import onnx_bytes

        config, size, path = args.export
        Path(path).write_bytes(onnx_bytes(build(config, args), size=int(size)))
        return
    if args.child:
        config, precision, backend, size, reference = args.child
        print(json.dumps(measure(config, precision, backend, int(size), args, Path(reference))))
        return
    cuda = args.device.startswith("cuda")
    precisions = args.precisions or (["fp32", "bf16", "fp16"] if cuda else ["fp32", "int8"] + (["bf16"] if cpu_has_native_bf16() else []))
    precisions = sorted(set(precisions), key=["fp32", "int8", "bf16", "fp16"].index)  # fp32 first: the reference
    # (precision, backend) per row: PyTorch fp32 first (the reference), ONNX Runtime in fp32 only.
    variants = [(p, "pytorch") for p in precisions if "pytorch" in args.backends or p == "fp32"]
    variants += [("fp32", "onnxruntime")] if "onnxruntime" in args.backends else []

    print(describe())
    where = args.device if cuda else f"CPU, {args.threads} threads"
    print(f"UPOCR inference on {where}, tasks: {', '.join(args.tasks)} per image "
          f"(removal: {args.removal}), median of {args.runs} runs after 1 warm-up, fresh process per row; "
          f"weights: {args.weights or 'random'}; native bf16: {cpu_has_native_bf16()}")
    batch_column = f" {'batch ' + str(args.batch) + ' img/s':>15}" if args.batch > 1 else ""
    header = (f"{'config':<8} {'precision':<9} {'backend':<11} {'size':>5} {'s/image':>8} {'images/s':>9} "
              f"{'peak GPU' if cuda else 'peak RSS':>9}{batch_column}  fidelity vs fp32")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as scratch:
        for config in args.configs:
            for size in args.sizes:
                reference = Path(scratch) / f"{config}-{size}.npz"
                for precision, backend in variants:
                    command = [sys.executable, __file__, "--child", config, precision, backend, str(size), str(reference),
                               "--runs", str(args.runs), "--threads", str(args.threads), "--removal", args.removal,
                               "--device", args.device, "--batch", str(args.batch), "--tasks", *args.tasks]
                    if args.weights:
                        command += ["--weights", args.weights]
                    if args.tile:
                        command += ["--tile", str(args.tile)]
                    row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                    memory = row["peak_gpu_mib"] if cuda else row["peak_rss_mib"]
                    batched = f" {row.get('batch_images_per_s', float('nan')):>15.1f}" if args.batch > 1 else ""
                    print(f"{config:<8} {precision:<9} {backend:<11} {size:>5} {row['s_per_image']:>8.2f} "
                          f"{1 / row['s_per_image']:>9.2f} {memory:>5.0f} MiB{batched}  {format_fidelity(row)}", flush=True)


if __name__ == "__main__":
    main()
