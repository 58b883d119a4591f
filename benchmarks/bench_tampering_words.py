"""Time the per-word tampering classifier on 1600x1200 photos: what it adds to `detect-tampering`
(features + trees + class map; the word regions are given, as the predictor's finder supplies them).

    python benchmarks/bench_tampering_words.py [--classifier FILE] [--repeats 3] [--threads 1] [--regions detector]

Each bundled sample photo is resized to 1600x1200; its word regions come from an adaptive-threshold
text mask grouped into words (`regions_from_text_mask`, `--regions mask`, the default: far more regions
than words, a worst case), or from the bundled word detector's lines split into words (`--regions
detector`: the words `detect-tampering --tampering words` scores; the detector's own time is not counted).
Prints one row per photo: words, wall seconds (median and fastest of the repeats) and CPU seconds of this
process (median). On a shared machine whose speed drifts between runs, the fastest repeat and the CPU time are
the steadier numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from machine import describe  # the CPU and its flags, above every table (benchmarks/machine.py)

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "upocr" / "samples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1)")
    parser.add_argument("--regions", choices=["mask", "detector"], default="mask",
                        help="where the words come from: an adaptive-threshold mask (default) or the word detector")
    args = parser.parse_args(argv)

    import cv2
    import numpy as np

    from upocr.forensics.detect import classify_regions, regions_from_text_mask, split_into_words
    from upocr.forensics.model import load_classifier
    from upocr.io import read_image

    cv2.setNumThreads(args.threads)
    classifier = load_classifier(args.classifier)
    print(describe())
    detector = None
    if args.regions == "detector":
        from upocr.detector import WordDetector

        detector = WordDetector()
    print(f"| photo (resized to 1600x1200) | words ({args.regions}) | wall s | fastest wall s | CPU s |")
    print("|---|---:|---:|---:|---:|")
    totals, fastest, cpu_totals = [], [], []
    for path in sorted(SAMPLES.glob("*.jpg")):
        image = cv2.resize(read_image(path), (1600, 1200), interpolation=cv2.INTER_CUBIC)
        if detector is not None:
            regions = split_into_words(image, detector.detect(image).polygons)
        else:
            grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            mask = cv2.adaptiveThreshold(grey, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, 31, 15)
            regions = regions_from_text_mask(mask)
        times, cpu_times = [], []
        for _ in range(args.repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            classify_regions(image, regions, classifier=classifier)
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
        totals.append(float(np.median(times)))
        fastest.append(min(times))
        cpu_totals.append(float(np.median(cpu_times)))
        print(f"| {path.name} | {len(regions)} | {totals[-1]:.3f} | {fastest[-1]:.3f} | {cpu_totals[-1]:.3f} |")
    print(f"\nmean {np.mean(totals):.3f} s wall (fastest repeats {np.mean(fastest):.3f} s), {np.mean(cpu_totals):.3f} s CPU "
          "per 1600x1200 photo "
          f"({args.threads} OpenCV thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
