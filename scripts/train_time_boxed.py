"""Fit one `upocr train` run into a fixed amount of wall time, with a full lr schedule.

    python scripts/train_time_boxed.py --minutes 7 -- --config configs/default-model-stage3.yaml --data-root data/synth

`--max-minutes` alone stops a run wherever the clock runs out, with the learning rate still high. This
script first measures the machine: a short probe run (same options, own output folder, thrown away)
gives the steps per second, and the real run then gets `--iterations` = what fits in the time left, so
its schedule warms up, decays and ends inside the box. `--max-minutes` stays on as a safety net.

The chosen step count is printed as a plain `upocr train` command: that command, not this script, is
what replays the run (on any machine, only slower).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "upocr.cli", "train", *args]


def steady_steps_per_second(train_csv: Path) -> float:
    """Steps per second between the probe's first and last log rows (the start-up before the first row,
    worker spawn and kernel warm-up, does not count)."""
    with open(train_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) < 2:
        raise SystemExit(f"error: {train_csv}: the probe logged {len(rows)} row(s); give it more --probe-steps")
    steps = int(rows[-1]["step"]) - int(rows[0]["step"])
    return steps / (float(rows[-1]["elapsed_s"]) - float(rows[0]["elapsed_s"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True, help="wall time for probe + run, start-up included")
    parser.add_argument("--probe-steps", type=int, default=30, help="steps of the throughput probe (default 30)")
    parser.add_argument("--reserve-s", type=float, default=45.0,
                        help="seconds kept back for start-up, the final checkpoint and pictures (default 45)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the `upocr train` options")
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    started = time.monotonic()

    probe_dir = Path(tempfile.mkdtemp(prefix="upocr-probe-"))
    try:
        probe = train_args + ["--iterations", "1000000", "--max-steps", str(args.probe_steps), "--output", str(probe_dir),
                              "--log-every", str(max(1, args.probe_steps // 4)), "--checkpoint-every", "0", "--no-progress"]
        subprocess.run(train_command(probe), check=True)
        steps_per_second = steady_steps_per_second(probe_dir / "train.csv")
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)

    left = args.minutes * 60 - (time.monotonic() - started)
    iterations = int(steps_per_second * (left - args.reserve_s))
    if iterations < 1:
        raise SystemExit(f"error: no time left for training ({left:.0f} s left, {steps_per_second:.2f} steps/s)")
    print(f"probe: {steps_per_second:.2f} steps/s; "
          f"{left:.0f} s left -> --iterations {iterations}", flush=True)
    print("replay: upocr train " + " ".join(train_args + ["--iterations", str(iterations)]), flush=True)
    run = train_args + ["--iterations", str(iterations), "--max-minutes", f"{(left - 10) / 60:.2f}"]
    return subprocess.run(train_command(run)).returncode


if __name__ == "__main__":
    sys.exit(main())
