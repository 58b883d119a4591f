"""Copy trained weights into the package as the bundled default (fp16 safetensors + config.json).

    python scripts/bundle_default_model.py runs/default-model/model [--out src/upocr/weights]

The training record saved with the weights (steps, data, input size) is kept, with the record of the
weights the run started from (`init`), so `upocr demo` and the web page can say what they are running.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from upocr.model.checkpoint import load_model, save_pretrained
from upocr.weights import DEFAULT_WEIGHTS, CheckpointError, TrainingRecord, training_record


def complete_init_records(record: TrainingRecord) -> None:
    """A run that started from other weights (`init`) keeps their record as `init_record`, and so on down
    the chain of stages: the bundle travels without the earlier weights. Links already filled (say, by a
    bundle made on another machine) stay; a missing one is read from the `init` path where it exists."""
    for _ in range(64):  # a chain of stages; never follow a cycle of init paths for ever
        last = record.stages()[-1]
        earlier = training_record(last.init) if last.init else None
        if earlier is None:
            return
        last.init_record = earlier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="trained weights (a run's model/ folder or any checkpoint)")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help=f"destination (default {DEFAULT_WEIGHTS})")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.weights)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    record = training_record(args.weights) or TrainingRecord(trained=False, note="no training record")
    complete_init_records(record)
    save_pretrained(model, args.out, dtype=torch.float16, training=record.to_dict())
    size = (args.out / "model.safetensors").stat().st_size
    print(f"bundled {args.weights} -> {args.out} ({size / 1e6:.1f} MB, fp16); record: {record.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
