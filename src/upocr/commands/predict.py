"""`upocr remove-text | segment-text | detect-tampering | demo`: inference on image files and folders."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from upocr import bundled_inference_defaults, describe_weights
from upocr.cli import EXIT_INTERRUPTED
from upocr.commands.options import TASK_SCOPES, add_predictor_options, options_from_args
from upocr.files import FilesInterrupted, FilesReport, predict_files
from upocr.io import expand_inputs, read_image, write_image
from upocr.options import TAMPERING_DECISIONS, PredictorOptions
from upocr.predict import Predictor
from upocr.removal import SEGMENTATION_FINDERS, pipelines_help, removal_pipeline
from upocr.tasks import TASK_SPECS, Task, TaskSpec
from upocr.utils import printable
from upocr.visualize import image_grid

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
DEMO_TASKS = tuple(TASK_SPECS)  # one column each, in the specs' order

def removal_epilog() -> str:
    """remove-text --help: the pipelines, and the one the bundled weights choose."""
    return (f"Removal pipelines (--removal): {pipelines_help()}. Default: the pipeline stored with the weights; "
            f"the bundled weights store {bundled_inference_defaults().removal} (chosen on real photos, docs/results.md), "
            "weights without one telea-fill.")


def register(subparsers: argparse._SubParsersAction) -> None:
    for spec in TASK_SPECS.values():  # remove-text, segment-text, detect-tampering
        parser = subparsers.add_parser(
            spec.verb,
            help=spec.help,
            description=f"{writes_help(spec)} Inputs may be files or folders (searched recursively); outputs "
            "keep the folder structure under OUT, at the inputs' resolution. Existing files are not replaced "
            "(see --overwrite). A failed input is reported on one line; the others are still processed and "
            "the exit status is 1.",
            epilog=removal_epilog() if spec.task == Task.TEXT_REMOVAL else None,
        )
        add_task_arguments(parser, spec)
        TASK_FILE_OPTIONS.get(spec.task, _no_file_options)(parser)
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


def add_task_arguments(parser: argparse.ArgumentParser, spec: TaskSpec, *, inputs_help: str = "image files or folders",
                       overwrite_help: str = "replace output files that already exist (e.g. from an earlier run); "
                       "inputs are never replaced", devices: tuple[str, ...] = ("cpu", "cuda")) -> None:
    """A task command's INPUT..., -o, --overwrite and model options; `upocr batch` adds the same ones to its
    task commands, with its own words for inputs and --overwrite and its --device choices."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=inputs_help)
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    add_predictor_options(parser, TASK_SCOPES[spec.task], devices=devices)


def _removal_file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask", type=Path, metavar="FILE|DIR",
                        help="where the text is, instead of the pipeline's finder: one mask image for every input, or a "
                        "folder of masks named like the outputs (<name>.png, or segment-text's mask file for <name>); "
                        "white = text; filled by the pipeline's filler")
    _regions_option(parser)


def _regions_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regions", action="store_true",
                        help="also write the word detector's text regions as JSON polygons (OUT/<name>_regions.json)")


def _no_file_options(parser: argparse.ArgumentParser) -> None:
    pass


# Options of one task's command about its files (the predictor's are `upocr.options.PredictorOptions`).
TASK_FILE_OPTIONS: dict[Task, Callable[[argparse.ArgumentParser], None]] = {
    Task.TEXT_REMOVAL: _removal_file_options,
    Task.TEXT_SEGMENTATION: _regions_option,
    Task.TAMPERED_TEXT_DETECTION: _regions_option,
}


def writes_help(spec: TaskSpec) -> str:
    """'Writes OUT/<name><suffix> (<label>) and ...': the files of the task's spec, for --help."""
    return "Writes " + " and ".join(f"OUT/<name>{output.suffix} ({output.label})" for output in spec.outputs) + "."


def build_predictor(args: argparse.Namespace, **overrides: object) -> Predictor:
    """The Predictor the parsed arguments ask for; results only (keep_output=False): memory bounded by them."""
    options = options_from_args(args, PredictorOptions, keep_output=False, **overrides)
    return Predictor(options=options, weights=args.weights, device=args.device)


def print_error(message: object) -> None:
    """One line `upocr: <message>` on stderr (above a progress bar)."""
    tqdm.write(f"upocr: {printable(message)}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# remove-text / segment-text / detect-tampering
# --------------------------------------------------------------------------------------------


def run_task(args: argparse.Namespace) -> int:
    """remove-text / segment-text / detect-tampering: `upocr.files.predict_files` with one-line errors."""
    try:
        predictor = build_predictor(args)
    except Exception as error:  # noqa: BLE001 - model/option problems: one clear line, no traceback
        print_error(error)
        return 1
    try:
        report = predict_files(predictor, args.inputs, args.output, args.task,
                               overwrite=args.overwrite, on_error=print_error, on_note=print_error, progress=True,
                               masks=getattr(args, "mask", None), regions=getattr(args, "regions", False))
    except (ValueError, OSError) as error:  # options that fit no input (e.g. --regions without the detector)
        print_error(error)
        return 1
    except FilesInterrupted as stop:
        print_error(f"interrupted after {stop.report.done} of {stop.report.total} image(s); "
                    "outputs written so far are complete")
        return EXIT_INTERRUPTED
    return summarize(report)


def summarize(report: FilesReport, finished: int = 0) -> int:
    """Print the summary line (and a hint when outputs existed); the exit status. `finished`: images
    skipped because their outputs were all there (`upocr batch` resuming)."""
    if report.total == 0:
        return 1
    failed = len(report.errors)
    print(f"{report.task.title}: {report.done} of {report.total} image(s) written to {printable(report.out_dir)}"
          + (f"; {finished} already done" if finished else "") + (f"; {failed} failed" if failed else ""))
    if report.existing > 1:
        print_error(f"{report.existing} image(s) skipped because their outputs exist (an earlier run?); "
              "add --overwrite to replace them, or choose another output folder (-o)")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    samples = [path for path, _ in expand_inputs([SAMPLES_DIR])]
    if not samples:
        print_error(f"{SAMPLES_DIR}: no sample images bundled (reinstall upocr)")
        return 1
    try:
        predictor = build_predictor(args)
    except Exception as error:  # noqa: BLE001 - e.g. missing default weights: one clear line
        print_error(error)
        return 1
    rows = []
    for path in tqdm(samples, desc="demo", unit="image", file=sys.stderr):
        image = read_image(path)
        predictions = predictor.predict_tasks(image, DEMO_TASKS)
        rows.append([image, *(p.task.spec.picture.draw(image, p.result) for p in predictions)])
    # Each column names the part that decided it (the weights' stored defaults): removal pipeline, finder, decision.
    decided_by = {Task.TEXT_REMOVAL: predictor.removal, Task.TEXT_SEGMENTATION: predictor.segmentation,
                  Task.TAMPERED_TEXT_DETECTION: predictor.tampering}
    titles = ["input", *(f"{task.spec.picture.label} ({decided_by[task]})" for task in DEMO_TASKS)]
    out = write_image(args.output / "demo.png", image_grid(rows, titles, height=240))
    columns = " | ".join(["input", *(task.short for task in DEMO_TASKS)])
    print(f"wrote {out} ({len(samples)} samples: {columns})")
    print(f"weights: {describe_weights(args.weights)}")
    print(f"text removal: {removal_pipeline(predictor.removal).describe()}")
    print(f"text segmentation: {SEGMENTATION_FINDERS[predictor.segmentation].describe()}")
    print(f"tampered text detection: {predictor.tampering}: {TAMPERING_DECISIONS[predictor.tampering]}")
    return 0
