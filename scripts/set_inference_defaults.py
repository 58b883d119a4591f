"""Change the inference defaults stored with a weights folder, keeping its tensors byte for byte.

    python scripts/set_inference_defaults.py src/upocr/weights --removal words-telea --tampering words

The defaults (`upocr.InferenceDefaults`: working size, segmentation threshold, removal pipeline) live in the
safetensors metadata (`upocr_inference`); this rewrites that one key, atomically, and checks that the file
still loads. Why a script: choosing a default by measurement (docs/results.md) should not need retraining.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

import upocr
from upocr.options import TAMPERING_DECISIONS
from upocr.removal import REMOVAL_PIPELINES, SEGMENTATION_FINDERS
from upocr.utils import atomic_output
from upocr.weights import WEIGHTS_FILE, safetensors_metadata

INFERENCE_KEY = "upocr_inference"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path, help="a save_pretrained folder (holds model.safetensors)")
    parser.add_argument("--removal", choices=tuple(REMOVAL_PIPELINES), help="the default removal pipeline")
    parser.add_argument("--tampering", choices=tuple(TAMPERING_DECISIONS), help="how detect-tampering decides")
    parser.add_argument("--segmentation", choices=tuple(SEGMENTATION_FINDERS), help="the segmentation finder")
    parser.add_argument("--threshold", type=float, help="the segmentation threshold")
    parser.add_argument("--size", type=int, help="the working resolution")
    args = parser.parse_args()
    path = args.weights / WEIGHTS_FILE
    metadata = safetensors_metadata(path)
    stored = upocr.load_model(args.weights).inference  # also from older files that keep them in the config
    changes = {"removal": args.removal, "tampering": args.tampering, "segmentation": args.segmentation,
               "segmentation_threshold": args.threshold, "input_size": args.size}
    defaults = dataclasses.replace(stored, **{k: v for k, v in changes.items() if v is not None})
    tensors = load_file(str(path))
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, INFERENCE_KEY: defaults.to_json()})
    model = upocr.load_model(args.weights)
    print(f"{path}: inference defaults {model.inference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
