"""`upocr remove-text | segment-text | detect-tampering | demo`: inference on image files and folders."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from upocr import describe_weights
from upocr.cli import EXIT_INTERRUPTED
from upocr.commands import positive
from upocr.files import FilesInterrupted, FilesReport, predict_files
from upocr.io import DEFAULT_MAX_PIXELS, expand_inputs, read_image, write_image
from upocr.predict import BACKENDS, DEFAULT_REMOVAL_MODE, PRECISIONS, REMOVAL_MODES, REMOVAL_TEXT_DILATION, Predictor
from upocr.tasks import SEGMENTATION_THRESHOLD, TASK_SPECS, Task, TaskSpec
from upocr.utils import printable
from upocr.visualize import image_grid

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
DEMO_TASKS = tuple(TASK_SPECS)  # one column each, in the specs' order

# --size above this is refused: the model's memory grows with size^2 (attention: faster), and large
# images are better served by tiles at their native resolution.
MAX_SIZE = 4096


def register(subparsers: argparse._SubParsersAction) -> None:
    for spec in TASK_SPECS.values():  # remove-text, segment-text, detect-tampering
        parser = subparsers.add_parser(
            spec.verb,
            help=spec.help,
            description=f"{_writes(spec)} Inputs may be files or folders (searched recursively); outputs "
            "keep the folder structure under OUT, at the inputs' resolution. Existing files are not replaced "
            "(see --overwrite). A failed input is reported on one line; the others are still processed and "
            "the exit status is 1.",
        )
        parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
        parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output folder")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace output files that already exist (e.g. from an earlier run); "
                            "inputs are never replaced")
        add_predictor_options(parser)
        TASK_OPTIONS.get(spec.task, _no_options)(parser)
        parser.set_defaults(func=run_task, task=spec.task)

    demo = subparsers.add_parser(
        "demo",
        help="run the three tasks on the bundled sample images",
        description="Runs text removal, text segmentation and tampered text detection on the bundled sample "
        "images and writes one picture: input | removal | segmentation | tampering, one row per sample.",
    )
    demo.add_argument("-o", "--output", type=Path, default=Path("upocr-demo"), metavar="OUT",
                      help="output folder (default: ./upocr-demo)")
    add_predictor_options(demo)
    demo.set_defaults(func=run_demo)


def _writes(spec: TaskSpec) -> str:
    """'Writes OUT/<name><suffix> (<label>) and ...': the files of the task's spec, for --help."""
    return "Writes " + " and ".join(f"OUT/<name>{output.suffix} ({output.label})" for output in spec.outputs) + "."


def _no_options(parser: argparse.ArgumentParser) -> None:
    pass


def _removal_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=REMOVAL_MODES,
        default=DEFAULT_REMOVAL_MODE,
        help=f"how the result is built (default {DEFAULT_REMOVAL_MODE}): telea-fill: the model's text mask "
        "filled by Telea inpainting; model-fill: the same mask filled by the model's own (coarse) removal "
        "output; blend: the model's removal output where it changed the image; raw: the output as it is",
    )
    parser.add_argument(
        "--grow",
        type=positive(int, allow_zero=True),
        default=REMOVAL_TEXT_DILATION,
        metavar="PX",
        help=f"fill modes: grow the text mask by PX working-resolution pixels before filling it (default "
        f"{REMOVAL_TEXT_DILATION}); more also erases outlines, shadows and halos around letters, and repaints "
        "more of what is around them",
    )


def _segmentation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        type=_threshold_value,
        default=None,
        help=f"text score threshold (default: the one calibrated for the weights; {SEGMENTATION_THRESHOLD}, "
        "the original's, for weights without one)",
    )


# Options of one task's command only (the Predictor options of the others' results).
TASK_OPTIONS: dict[Task, Callable[[argparse.ArgumentParser], None]] = {
    Task.TEXT_REMOVAL: _removal_options,
    Task.TEXT_SEGMENTATION: _segmentation_options,
}


def add_predictor_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--weights", type=Path, help="checkpoint file or folder (default: the bundled weights)")
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    group.add_argument(
        "--size", type=_size_value, default=None,
        help=f"the model's working resolution, a multiple of 32 up to {MAX_SIZE} (default: what the weights were "
        "trained at, 512 for original weights)",
    )
    group.add_argument(
        "--tile",
        type=_tile_value,
        default="auto",
        metavar="off|auto|N",
        help="auto (default): images with more than 4 x SIZE^2 pixels run on SIZE x SIZE tiles at their "
        "native resolution (small print survives), smaller ones are resized to SIZE x SIZE; off: always "
        "resize, like the original; N: always overlapping N x N tiles (memory bounded by the tile)",
    )
    group.add_argument("--overlap", type=int, default=None,
                       help="pixels shared by neighbouring tiles (default: tile / 8, i.e. 64 for 512)")
    group.add_argument("--batch-size", type=int, default=1, help="(tile or image, task) pairs per forward pass (default 1): the tiles of a large image, or up to N small images of a folder at once")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (default), bf16 autocast (CPU/CUDA), fp16 autocast (CUDA) or int8 (CPU)")
    group.add_argument("--backend", choices=BACKENDS, default="pytorch",
                       help="pytorch (default) or onnxruntime (fp32; --weights may be a .onnx file from "
                       "`upocr export-onnx`, else the weights are exported first; pip install 'upocr[onnx]')")
    group.add_argument("--max-pixels", type=positive(int), default=DEFAULT_MAX_PIXELS,
                       help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,})")


def _tile_value(text: str) -> int | str | None:
    if text.lower() in ("off", "none", "0"):
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected off, auto or a tile size in pixels, got {text!r}") from None


def _threshold_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _size_value(text: str) -> int:
    value = positive(int)(text)
    if value > MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"{value} is too large (at most {MAX_SIZE}: memory grows with the square of the size); "
            "for detail in large images use --tile N, which runs N x N tiles at the image's own resolution"
        )
    return value


def build_predictor(args: argparse.Namespace) -> Predictor:
    return Predictor(
        weights=args.weights,
        device=args.device,
        size=args.size,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        precision=args.precision,
        backend=args.backend,
        threshold=getattr(args, "threshold", None),
        removal=getattr(args, "mode", DEFAULT_REMOVAL_MODE),
        grow=getattr(args, "grow", REMOVAL_TEXT_DILATION),
        max_pixels=args.max_pixels,
        keep_output=False,  # results only: memory bounded by them, not by float maps of the image
    )


def _fail(message: object) -> None:
    tqdm.write(f"upocr: {printable(message)}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# remove-text / segment-text / detect-tampering
# --------------------------------------------------------------------------------------------


def run_task(args: argparse.Namespace) -> int:
    """remove-text / segment-text / detect-tampering: `upocr.files.predict_files` with one-line errors."""
    try:
        predictor = build_predictor(args)
    except Exception as error:  # noqa: BLE001 - model/option problems: one clear line, no traceback
        _fail(error)
        return 1
    try:
        report = predict_files(predictor, args.inputs, args.output, args.task,
                               overwrite=args.overwrite, on_error=_fail, progress=True)
    except FilesInterrupted as stop:
        _fail(f"interrupted after {stop.report.done} of {stop.report.total} image(s); "
              "outputs written so far are complete")
        return EXIT_INTERRUPTED
    return _summarize(report)


def _summarize(report: FilesReport) -> int:
    """Print the summary line (and a hint when outputs existed); the exit status."""
    if report.total == 0:
        return 1
    failed = len(report.errors)
    print(f"{report.task.title}: {report.done} of {report.total} image(s) written to {printable(report.out_dir)}"
          + (f"; {failed} failed" if failed else ""))
    if report.existing > 1:
        _fail(f"{report.existing} image(s) skipped because their outputs exist (an earlier run?); "
              "add --overwrite to replace them, or choose another output folder (-o)")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    samples = [path for path, _ in expand_inputs([SAMPLES_DIR])]
    if not samples:
        _fail(f"{SAMPLES_DIR}: no sample images bundled (reinstall upocr)")
        return 1
    try:
        predictor = build_predictor(args)
    except Exception as error:  # noqa: BLE001 - e.g. missing default weights: one clear line
        _fail(error)
        return 1
    rows = []
    for path in tqdm(samples, desc="demo", unit="image", file=sys.stderr):
        image = read_image(path)
        predictions = predictor.predict_tasks(image, DEMO_TASKS)
        rows.append([image, *(p.task.spec.picture.draw(image, p.result) for p in predictions)])
    titles = ["input", *(task.spec.picture.label for task in DEMO_TASKS)]
    out = write_image(args.output / "demo.png", image_grid(rows, titles, height=240))
    columns = " | ".join(["input", *(task.short for task in DEMO_TASKS)])
    print(f"wrote {out} ({len(samples)} samples: {columns})")
    print(f"weights: {describe_weights(args.weights)}")
    return 0
