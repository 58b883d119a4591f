"""`upocr serve`: the local web demo page (see `upocr.serve`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upocr.commands.predict import describe_weights
from upocr.predict import DEFAULT_REMOVAL_MODE, REMOVAL_MODES, Predictor
from upocr.serve import DEFAULT_MAX_UPLOAD_BYTES, serve


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the local web demo page",
        description="Starts a small web server on this computer with a demo page: pick an image and a task "
        "(or all three) and see the results beside the input, each with a download link. The model is "
        "loaded once; requests run one at a time. Nothing is fetched from the internet.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--weights", type=Path, help="checkpoint file or folder (default: the bundled weights)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    parser.add_argument("--size", type=int, default=None,
                        help="the model's working resolution (default: what the weights were trained at, 512 for original weights)")
    parser.add_argument("--removal-mode", choices=REMOVAL_MODES, default=DEFAULT_REMOVAL_MODE,
                        help=f"how text removal builds its result, as remove-text --mode (default {DEFAULT_REMOVAL_MODE})")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                        help=f"refuse larger uploads (default {DEFAULT_MAX_UPLOAD_BYTES // 2**20})")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"upocr: --port must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(weights=args.weights, device=args.device, size=args.size, removal=args.removal_mode)
    except Exception as error:  # noqa: BLE001 - missing/bad weights, no CUDA, bad size: one clear line
        print(f"upocr: {error}", file=sys.stderr)
        return 1
    label = describe_weights(args.weights)
    print(f"weights: {label}", flush=True)
    try:
        serve(predictor, args.host, args.port, model_label=label,
              max_upload_bytes=int(args.max_upload_mb * 2**20))
    except OSError as error:  # e.g. the port is taken
        print(f"upocr: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0
