"""`upocr serve`: the HTTP API and its demo page (see `upocr.serve`)."""

from __future__ import annotations

import argparse
import sys

from upocr import describe_weights
from upocr.commands import positive
from upocr.commands.options import add_predictor_options, options_from_args
from upocr.serve import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_UPLOAD_SECONDS,
    PREVIEW_MAX_SIDE,
    Limits,
    ServeSettings,
    serve,
)
from upocr.options import PredictorOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the HTTP API and its demo page",
        description="Starts a web server on this computer: a REST API for the three tasks (/v1/..., schema at "
        "/openapi.json, browsable at /docs) and a demo page using it: pick an image and a task (or all three) "
        "and see the results beside the input, each with a download link. Each worker process loads the model "
        "once; requests run one at a time per worker. Nothing is fetched from the internet. "
        f"--max-pixels defaults to {DEFAULT_MAX_PIXELS:,} here (checked before decoding); images over "
        f"{PREVIEW_MAX_SIDE} px on a side are answered with downscaled previews.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only; ::1 for IPv6)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--workers", type=positive(int), default=1,
                        help="worker processes, each with its own model and queue (default 1)")
    add_predictor_options(parser)  # the same options as the task commands (upocr.options)
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=positive(float), default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                        help=f"refuse larger uploads (default {DEFAULT_MAX_UPLOAD_BYTES // 2**20})")
    limits.add_argument("--upload-seconds", type=positive(float), default=DEFAULT_UPLOAD_SECONDS,
                        help=f"seconds a client has to send its whole upload (default {DEFAULT_UPLOAD_SECONDS:g}); "
                        "slower ones are answered 408")
    limits.add_argument("--max-concurrent", type=positive(int), default=DEFAULT_MAX_CONCURRENT,
                        help=f"predictions decoded, run and encoded at once per worker (default {DEFAULT_MAX_CONCURRENT})")
    limits.add_argument("--max-queue", type=positive(int, allow_zero=True), default=DEFAULT_MAX_QUEUE,
                        help=f"requests that may wait for one per worker; more are answered 503 (default {DEFAULT_MAX_QUEUE})")
    limits.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also accept this host name in requests (e.g. mybox.local with --host 0.0.0.0); "
                        "repeatable. Other names are refused (DNS rebinding)")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"upocr: --port must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    label = describe_weights(args.weights)
    try:
        # The server's own pixel limit by default (uploads), unless --max-pixels is given.
        max_pixels = getattr(args, "max_pixels", DEFAULT_MAX_PIXELS)
        options = options_from_args(args, PredictorOptions, keep_output=False, max_pixels=max_pixels)
        settings = ServeSettings(
            weights=str(args.weights) if args.weights is not None else None, device=args.device, options=options,
            model_label=label, host=args.host, allowed_hosts=tuple(args.allow_host),
            limits=Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=max_pixels,
                          max_concurrent=args.max_concurrent, max_queue=args.max_queue,
                          upload_seconds=args.upload_seconds),
        )
        # Loaded here also with --workers N (then dropped): a bad --weights is one line, not N tracebacks.
        predictor = settings.load_predictor()
    except Exception as error:  # noqa: BLE001 - missing/bad weights, no CUDA, bad size: one clear line
        print(f"upocr: {error}", file=sys.stderr)
        return 1
    print(f"weights: {label}", flush=True)  # the page shows it without absolute paths
    if args.workers > 1:
        predictor = None  # each worker process loads its own; this one only supervises them
    try:
        serve(settings, args.port, workers=args.workers, predictor=predictor)
    except OSError as error:  # e.g. the port is taken
        print(f"upocr: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0
