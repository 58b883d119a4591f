"""SHA-256 of every file `upocr synth` writes for a fixed set of runs: proof that a refactor of
`upocr.data.synth` keeps the same bytes for the same seed.

    python scripts/synth_checksums.py OUT.txt [--work DIR] [--quick]

Runs the `upocr synth` command (in this process, with whatever `upocr` is importable: point PYTHONPATH
at the code to measure) for v1 and v2 scenes, train and test splits, several sizes and a --backgrounds
folder, all tasks (removal, segmentation, tampering), and writes one "sha256  run/path" line per file
(the manifest left out: it records no pixels). Compare two trees' lists with `diff`:

    git archive HEAD src | tar -x -C /tmp/before    # the code before the change
    PYTHONPATH=/tmp/before/src python scripts/synth_checksums.py /tmp/before.txt
    PYTHONPATH=src python scripts/synth_checksums.py /tmp/after.txt
    diff /tmp/before.txt /tmp/after.txt && echo same bytes

The bytes depend on the installed fonts (the synth-fonts extra) and the PIL/OpenCV/libjpeg builds:
compare runs made in one environment.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# (run name, synth arguments). --workers 1: the bytes do not depend on it (tested), one core is kinder.
RUNS = [
    ("v1-train-128", ["--count", "40", "--seed", "3", "--split", "train", "--size", "128"]),
    ("v2-train-128", ["--count", "40", "--seed", "3", "--split", "train", "--size", "128", "--scenes", "v2"]),
    ("v1-test-128", ["--count", "20", "--seed", "3", "--split", "test", "--size", "128"]),
    ("v2-test-128", ["--count", "20", "--seed", "3", "--split", "test", "--size", "128", "--scenes", "v2"]),
    ("v1-train-64", ["--count", "20", "--seed", "0", "--split", "train", "--size", "64"]),
    ("v2-test-64", ["--count", "20", "--seed", "0", "--split", "test", "--size", "64", "--scenes", "v2"]),
    ("v2-train-160x96", ["--count", "20", "--seed", "4", "--size", "160x96", "--scenes", "v2"]),
    ("v2-train-384", ["--count", "6", "--seed", "5", "--size", "384", "--scenes", "v2"]),
    ("v1-backgrounds", ["--count", "8", "--seed", "6", "--size", "96", "--backgrounds", "{photos}",
                        "--background-mix", "0.7"]),
    ("v2-backgrounds", ["--count", "8", "--seed", "6", "--size", "96", "--scenes", "v2", "--backgrounds", "{photos}",
                        "--background-mix", "0.7"]),
]
QUICK_RUNS = {"v1-train-128", "v2-train-128", "v2-test-64"}


def write_photos(folder: Path) -> Path:
    """Three fixed, text-free pictures for the --backgrounds runs (gradients and noise, seeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(90, 140), (200, 160), (300, 420)]):
        ys, xs = np.mgrid[0:height, 0:width]
        base = np.stack([xs * 255 / width, ys * 255 / height, np.full_like(xs, 60 * index, dtype=float)], 2)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{index}.png")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="text file of 'sha256  run/path' lines")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(sorted(QUICK_RUNS))}")
    args = parser.parse_args()

    import upocr
    from upocr.cli import main as cli_main
    from upocr.utils import atomic_output

    print(f"upocr from {Path(upocr.__file__).parent}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="synth-checksums-")) if args.work is None else args.work
    photos = write_photos(work / "photos")
    lines = []
    try:
        for name, synth_args in RUNS:
            if args.quick and name not in QUICK_RUNS:
                continue
            root = work / name
            if root.exists():
                shutil.rmtree(root)
            command = ["synth", "--out", str(root), "--workers", "1",
                       *[a.format(photos=photos) for a in synth_args]]
            if cli_main(command) != 0:
                print(f"upocr synth {' '.join(command)}: failed", file=sys.stderr)
                return 1
            for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "synth-manifest.json"):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                lines.append(f"{digest}  {name}/{path.relative_to(root)}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    with atomic_output(args.out) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} files -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
