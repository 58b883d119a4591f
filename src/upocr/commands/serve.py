"""`upocr serve`: the local web demo page (see `upocr.serve`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upocr import describe_weights
from upocr.commands import positive
from upocr.commands.options import add_predictor_options
from upocr.commands.predict import build_predictor
from upocr.serve import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_BYTES,
    PREVIEW_MAX_SIDE,
    serve,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the local web demo page",
        description="Starts a small web server on this computer with a demo page: pick an image and a task "
        "(or all three) and see the results beside the input, each with a download link. The model is "
        "loaded once; requests run one at a time. Nothing is fetched from the internet.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only; ::1 for IPv6)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    add_predictor_options(parser)  # the same options as the task commands (upocr.options)
    parser.add_argument("--max-upload-mb", type=positive(float), default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                        help=f"refuse larger uploads (default {DEFAULT_MAX_UPLOAD_BYTES // 2**20})")
    parser.add_argument("--max-concurrent", type=positive(int), default=DEFAULT_MAX_CONCURRENT,
                        help=f"predictions decoded, run and encoded at once (default {DEFAULT_MAX_CONCURRENT})")
    parser.add_argument("--max-queue", type=positive(int, allow_zero=True), default=DEFAULT_MAX_QUEUE,
                        help=f"requests that may wait for one; more are answered 503 (default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also accept this host name in requests (e.g. mybox.local with --host 0.0.0.0); "
                        "repeatable. Other names are refused (DNS rebinding)")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"upocr: --port must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        # The server's own pixel limit by default (uploads), unless --max-pixels is given.
        max_pixels = getattr(args, "max_pixels", DEFAULT_MAX_PIXELS)
        predictor = build_predictor(args, max_pixels=max_pixels)
    except Exception as error:  # noqa: BLE001 - missing/bad weights, no CUDA, bad size: one clear line
        print(f"upocr: {error}", file=sys.stderr)
        return 1
    label = describe_weights(args.weights)
    print(f"weights: {label}", flush=True)  # the page shows it without absolute paths
    try:
        serve(predictor, args.host, args.port, model_label=label,
              max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=max_pixels,
              max_concurrent=args.max_concurrent, max_queue=args.max_queue, allowed_hosts=args.allow_host)
    except OSError as error:  # e.g. the port is taken
        print(f"upocr: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0
