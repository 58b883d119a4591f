"""`upocr export-onnx`: the model as an ONNX file (dynamic batch, height, width), checked against PyTorch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upocr.commands import positive
from upocr.tasks import task_order
from upocr.utils import printable

# "0 removal, 1 tampering, 2 segmentation": what the exported `tasks` input's values mean.
TASK_INDICES = ", ".join(f"{index} {name}" for index, name in enumerate(task_order()))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export the model to ONNX",
        description="Writes the model as an ONNX file: inputs `images` (B, 3, H, W) float32 in [0, 1] and "
        f"`tasks` (B,) int64 ({TASK_INDICES}; tasks may differ within a batch), outputs "
        "`quarter`, `half`, `full`; batch, height and width are dynamic (H and W multiples of 32). The file is "
        "checked against PyTorch on random inputs, at --size and at another, non-square size, before it is "
        "written (max abs difference printed; more than 1e-4 fails). Run it with `--backend onnxruntime --weights FILE.onnx`. Needs pip install 'upocr[onnx]'.",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="FILE", help="the .onnx file to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, help="checkpoint file or folder (default: the bundled weights)")
    source.add_argument("--config", help="a preset (paper, small, mini, tiny) with random weights, e.g. to benchmark")
    parser.add_argument("--size", type=positive(int), default=None,
                        help="size the graph is traced and first checked at, a multiple of 32 (default: the weights' "
                        "input size), stored as the file's working size; the file runs at any size")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    try:
        from upocr.export import export_onnx
        from upocr.model import build_model
        from upocr.model.checkpoint import load_model

        if args.output.suffix.lower() != ".onnx":
            raise ValueError(f"{args.output}: the output name must end in .onnx")
        model = build_model(args.config).eval() if args.config else load_model(args.weights)
        report = export_onnx(model, args.output, size=args.size)
    except Exception as error:  # noqa: BLE001 - bad weights, missing onnx, failed export/check: one line
        print(f"upocr: {printable(error)}", file=sys.stderr)
        return 1
    shapes = ", ".join("x".join(map(str, shape)) for shape in report.checked_shapes)
    print(f"wrote {printable(report.path)}; max abs difference from PyTorch {report.max_abs_diff:.2e} "
          f"(inputs {shapes}; limit 1e-4)")
    return 0
