"""`upocr remove-text | segment-text | detect-tampering | demo`: inference on image files and folders."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from upocr.io import DEFAULT_MAX_PIXELS, ImageError, expand_inputs, read_image, write_image
from upocr.predict import DEFAULT_REMOVAL_MODE, PRECISIONS, REMOVAL_MODES, Prediction, Predictor
from upocr.tasks import SEGMENTATION_THRESHOLD, Task
from upocr.visualize import image_grid, overlay_classes, overlay_mask

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
DEMO_TASKS = (Task.TEXT_REMOVAL, Task.TEXT_SEGMENTATION, Task.TAMPERED_TEXT_DETECTION)

# Errors that concern one input (or its outputs) only: report the file and go on with the others.
PER_INPUT_ERRORS = (ImageError, OSError, MemoryError, torch.OutOfMemoryError)


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = (
        (
            "remove-text",
            Task.TEXT_REMOVAL,
            "erase text from images",
            "Writes OUT/<name>.png: the image with its text removed, at the input's resolution.",
        ),
        (
            "segment-text",
            Task.TEXT_SEGMENTATION,
            "find text pixels",
            "Writes OUT/<name>_mask.png (0 background, 255 text) and OUT/<name>_overlay.jpg (text in red).",
        ),
        (
            "detect-tampering",
            Task.TAMPERED_TEXT_DETECTION,
            "find tampered text",
            "Writes OUT/<name>_classes.png (0 background, 1 real text, 2 tampered text) and "
            "OUT/<name>_overlay.jpg (real text green, tampered text red).",
        ),
    )
    for name, task, short_help, description in commands:
        parser = subparsers.add_parser(
            name,
            help=short_help,
            description=f"{description} Inputs may be files or folders (searched recursively); outputs "
            "keep the folder structure under OUT. A failed input is reported on one line; the others "
            "are still processed and the exit status is 1.",
        )
        parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
        parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output folder")
        add_predictor_options(parser)
        if task == Task.TEXT_REMOVAL:
            parser.add_argument(
                "--mode",
                choices=REMOVAL_MODES,
                default=DEFAULT_REMOVAL_MODE,
                help=f"how the result is built (default {DEFAULT_REMOVAL_MODE}): telea-fill: the model's text mask "
                "filled by Telea inpainting; model-fill: the same mask filled by the model's own (coarse) removal "
                "output; blend: the model's removal output where it changed the image; raw: the output as it is",
            )
        if task == Task.TEXT_SEGMENTATION:
            parser.add_argument(
                "--threshold",
                type=float,
                default=None,
                help=f"text score threshold (default: the one calibrated for the weights; {SEGMENTATION_THRESHOLD}, "
                "the original's, for weights without one)",
            )
        parser.set_defaults(func=run_task, task=task)

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


def add_predictor_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--weights", type=Path, help="checkpoint file or folder (default: the bundled weights)")
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    group.add_argument(
        "--size", type=int, default=None, help="the model's working resolution (default: what the weights were trained at, 512 for original weights)"
    )
    group.add_argument(
        "--tile",
        type=_tile_value,
        default=None,
        metavar="off|auto|N",
        help="off (default): resize every image to SIZE x SIZE like the original; N: run on overlapping "
        "N x N tiles at the native resolution (memory bounded by the tile); auto: tile (N = SIZE) only "
        "images with more than 4 x SIZE^2 pixels",
    )
    group.add_argument("--overlap", type=int, default=None,
                       help="pixels shared by neighbouring tiles (default: tile / 8, i.e. 64 for 512)")
    group.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass (default 1)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (default), bf16 autocast (CPU/CUDA), fp16 autocast (CUDA) or int8 (CPU)")
    group.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
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


def build_predictor(args: argparse.Namespace) -> Predictor:
    return Predictor(
        weights=args.weights,
        device=args.device,
        size=args.size,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        precision=args.precision,
        threshold=getattr(args, "threshold", None),
        removal=getattr(args, "mode", DEFAULT_REMOVAL_MODE),
        max_pixels=args.max_pixels,
    )


def _fail(message: object) -> None:
    tqdm.write(f"upocr: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# remove-text / segment-text / detect-tampering
# --------------------------------------------------------------------------------------------


def run_task(args: argparse.Namespace) -> int:
    task: Task = args.task
    items = expand_inputs(args.inputs)
    failures = 0
    for folder in {Path(i) for i in args.inputs if Path(i).is_dir()}:
        if not any(root == folder for _, root in items):
            _fail(f"{folder}: no images found in this folder")
            failures += 1
    if not items:
        return 1
    try:
        predictor = build_predictor(args)
    except Exception as error:  # noqa: BLE001 - model/option problems: one clear line, no traceback
        _fail(error)
        return 1
    names = output_names(items)
    inputs = {path.resolve() for path, _ in items}
    done = 0
    # disable=None: no bar when stderr is not a terminal (logs stay clean); none for a single image.
    bar = tqdm(items, desc=task.short, unit="image", disable=True if len(items) < 2 else None, file=sys.stderr)
    for (path, _), name in zip(bar, names):
        outputs = task_outputs(task, args.output, name)
        clash = next((out for out, _ in outputs if out.resolve() in inputs), None)
        if clash is not None:
            _fail(f"{path}: output {clash} would overwrite an input; choose another output folder (-o)")
            failures += 1
            continue
        try:
            image = read_image(path, max_pixels=args.max_pixels)
            prediction = predictor.predict(image, task)
            write_all([(out, render(image, prediction)) for out, render in outputs])
            done += 1
        except PER_INPUT_ERRORS as error:
            _fail(error if isinstance(error, ImageError) else f"{path}: {_describe(error)}")
            failures += 1
    print(f"{task.title}: {done} of {len(items)} image(s) written to {args.output}"
          + (f"; {failures} failed" if failures else ""))
    return 1 if failures else 0


Renderer = Callable[[np.ndarray, Prediction], np.ndarray]


def task_outputs(task: Task, out_dir: Path, name: Path) -> list[tuple[Path, Renderer]]:
    """The files one input produces for `task`, and how each is drawn from (image, prediction)."""
    base = out_dir / name
    if task == Task.TEXT_REMOVAL:
        return [(base.with_name(base.name + ".png"), lambda image, p: p.image)]
    if task == Task.TEXT_SEGMENTATION:
        return [
            (base.with_name(base.name + "_mask.png"), lambda image, p: p.mask.astype(np.uint8) * 255),
            (base.with_name(base.name + "_overlay.jpg"), lambda image, p: overlay_mask(image, p.mask)),
        ]
    return [
        (base.with_name(base.name + "_classes.png"), lambda image, p: p.classes),
        (base.with_name(base.name + "_overlay.jpg"), lambda image, p: overlay_classes(image, p.classes)),
    ]


def write_all(files: list[tuple[Path, np.ndarray]]) -> None:
    """Write every file of one input, or none: on a failure the ones already written are removed."""
    written: list[Path] = []
    try:
        for path, array in files:
            write_image(path, array)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def output_names(items: list[tuple[Path, Path | None]]) -> list[Path]:
    """A distinct output name (relative path, no suffix) for each input.

    Images found in a folder argument keep their path relative to that folder; files named directly use
    their stem. Inputs whose names still clash (same stem in different folders, or x.jpg beside x.png)
    keep their path relative to the clashing files' common folder, then their suffix (x_jpg), then a
    counter.
    """
    names = [path.relative_to(root).with_suffix("") if root else Path(path.stem) for path, root in items]

    def clashes() -> dict[Path, list[int]]:
        groups: dict[Path, list[int]] = {}
        for index, name in enumerate(names):
            groups.setdefault(name, []).append(index)
        return {name: group for name, group in groups.items() if len(group) > 1}

    for group in clashes().values():  # 1: the path below the clashing files' common folder
        resolved = [items[i][0].resolve() for i in group]
        common = Path(os.path.commonpath([p.parent for p in resolved]))
        for i, path in zip(group, resolved):
            names[i] = path.relative_to(common).with_suffix("")
    for group in clashes().values():  # 2: keep the suffix in the name
        for i in group:
            suffix = items[i][0].suffix.lstrip(".")
            names[i] = names[i].with_name(f"{names[i].name}_{suffix}" if suffix else names[i].name)
    counts: Counter[Path] = Counter()
    for group in clashes().values():  # 3: number what is left
        for i in group[1:]:
            counts[names[i]] += 1
            names[i] = names[i].with_name(f"{names[i].name}_{counts[names[i]] + 1}")
    return names


def _describe(error: BaseException) -> str:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return "out of memory; try --tile 512 (memory then depends on the tile, not the image)"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}" + (f": {error.filename}" if error.filename else "")
    return " ".join(str(error).split()) or type(error).__name__


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
        removal, segmentation, tampering = predictor.predict_tasks(image, DEMO_TASKS)
        rows.append([image, removal.image, overlay_mask(image, segmentation.mask),
                     overlay_classes(image, tampering.classes)])
    titles = ["input", "text removal", "text segmentation (red)", "tampering: real green, tampered red"]
    out = write_image(args.output / "demo.png", image_grid(rows, titles, height=240))
    print(f"wrote {out} ({len(samples)} samples: input | removal | segmentation | tampering)")
    print(f"weights: {describe_weights(args.weights)}")
    return 0


def describe_weights(weights: Path | None) -> str:
    """Which weights ran, and whether they were trained (the `upocr_training` record saved with them)."""
    from upocr.model.checkpoint import DEFAULT_WEIGHTS, training_record, training_stages

    name = str(weights) if weights is not None else f"bundled default {DEFAULT_WEIGHTS}"
    record = training_record(weights if weights is not None else None)
    if not record:
        return f"{name} - no training record" + ("" if weights is not None else ": UNTRAINED, results are not meaningful")
    if record.get("trained") is False:
        return f"{name} - UNTRAINED ({record.get('note', 'random initialisation')})"
    summary = ", ".join(f"{k}={v}" for k, v in record.items() if k in ("steps", "images", "data", "config", "input_size"))
    stages = training_stages(record)  # weights continued from others: count every stage
    if len(stages) > 1:
        images = sum(stage.get("images") or 0 for stage in stages)
        summary += f"; last of {len(stages)} stages, {images:,} training images in all"
    return f"{name} - trained ({summary})"
