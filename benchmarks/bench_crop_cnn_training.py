"""Time the crop CNN's training (`upocr.forensics.cnn.train_crop_net`), the longest part of `upocr train-tampering`.

    python benchmarks/bench_crop_cnn_training.py [--words 6144] [--epochs 1] [--repeats 3] [--precisions fp32 bf16]

Trains on random line crops (the shipped layout, 7 x 32 x 192; a quarter of them tampered, so one epoch is all of
them in batches of 256, as the documented command's sampling) and prints, per precision, the wall seconds per
batch (median and fastest of the repeats) and the minutes the documented command's two networks would take at
that rate (its 3,000 images: 1,056 batches each, six epochs). bf16 is fast only where the CPU computes it natively
(AVX512-BF16 or AMX: see the flags above the table); elsewhere it is emulated, many times slower, `upocr
train-tampering --precision auto` trains in fp32 there, and this bench times bf16 only when asked. `upocr
train-tampering` trains in fp32 unless told otherwise. Run from a checkout of older code (PYTHONPATH), the precision
is left out where `train_crop_net` has none.
"""

from __future__ import annotations

import argparse
import inspect
import time

from machine import describe  # the CPU and its flags, above every table (benchmarks/machine.py)

# per network: 6 epochs of 45,056 crops (the 11,264 tampered training words and 3 x as many genuine ones)
DOCUMENTED_BATCHES = 1056


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=6144)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where the CPU has it natively")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from upocr.forensics.cnn import LINE_CROP, train_crop_net
    from upocr.utils import cpu_has_native_bf16

    precisions = args.precisions or (["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"])

    rng = np.random.default_rng(0)
    crops = rng.normal(0, 1, (args.words, *LINE_CROP.shape)).astype(np.float16)
    labels = (np.arange(args.words) % 4 == 0).astype(np.int8)
    batches = args.epochs * -(-args.words // 256)
    has_precision = "precision" in inspect.signature(train_crop_net).parameters
    print(describe())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.words} line crops, {args.epochs} epoch(s) "
          f"= {batches} batches of 256")
    print("| precision | s per batch (median) | fastest | the documented command's two networks at this rate |")
    print("|---|---:|---:|---:|")
    for precision in precisions if has_precision else ["(this code's own)"]:
        options = {"precision": precision} if has_precision else {}
        train_crop_net(crops[:512], labels[:512], epochs=1, progress=False, **options)  # warm-up (oneDNN kernels)
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            train_crop_net(crops, labels, epochs=args.epochs, progress=False, **options)
            seconds.append((time.perf_counter() - started) / batches)
        median = float(np.median(seconds))
        print(f"| {precision} | {median:.3f} | {min(seconds):.3f} | {2 * DOCUMENTED_BATCHES * median / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
