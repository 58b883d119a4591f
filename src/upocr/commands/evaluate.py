"""`upocr evaluate ...`: the original's metrics on folders of predictions, or on a model and baselines.

  upocr evaluate removal --pred DIR --gt DIR [--json FILE] [--fid-weights PT]
  upocr evaluate segmentation --pred DIR --gt DIR [--threshold T] [--gt-format textseg|binary] [--json FILE]
  upocr evaluate tampering --pred DIR --gt DIR [--images DIR] [--pred-format ...] [--json FILE]
  upocr evaluate model --weights W --data-root ROOT [--tasks ...] [--no-baselines] [--out DIR]
                       [--markdown FILE] [--json FILE] [--picture FILE]
  upocr evaluate baselines --data-root ROOT [--tasks ...] [--out DIR] [--markdown FILE] [--json FILE]
  upocr evaluate real --data DIR [--weights W] [--variants default resize ...] [--markdown FILE] [--json FILE]
                      [--picture FILE]   (real photos in the real-dev layout; every removal pipeline is a row)

Tables go to stdout; warnings and per-file errors to stderr. Exit code 1 when any file could not be
evaluated (the rest still is), 2 when nothing could be evaluated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upocr.commands.options import add_model_arguments, add_options, add_predictor_options, options_from_args
from upocr.evaluate.real import REAL_DETECTORS
from upocr.options import TAMPERING_DECISIONS, PredictorOptions
from upocr.removal import REMOVAL_PIPELINES, SEGMENTATION_FINDERS
from upocr.tasks import SEGMENTATION_THRESHOLD, Task


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score predictions (or a model and classical baselines) with the original's metrics",
        description="Score predictions with the original UPOCR evaluation metrics (docs/evaluation.md).",
    )
    commands = parser.add_subparsers(dest="evaluate_command", metavar="WHAT")
    commands.required = True

    removal = commands.add_parser("removal", help="PSNR, MSSIM, MSE, AGE, pEPs, pCEPs of text-free images")
    _add_folders(removal)
    removal.add_argument("--fid-weights", type=Path, help="pytorch-fid pt_inception-2015-12-05 state dict (FID is missing without it)")
    removal.set_defaults(func=_run_removal, task=Task.TEXT_REMOVAL)

    segmentation = commands.add_parser("segmentation", help="fgIoU, P, R, F of text masks")
    _add_folders(segmentation)
    segmentation.add_argument(
        "--threshold", type=float, default=None,
        help=f"predictions are the model's raw output images: text = channel mean of RGB/255 > T "
        f"(original: {SEGMENTATION_THRESHOLD}); without it predictions are 0/255 masks (>127 is text)",
    )
    segmentation.add_argument("--gt-format", choices=("textseg", "binary"), default="textseg",
                              help="textseg: TextSeg *_maskfg.png labels (default); binary: 0/255 masks")
    segmentation.set_defaults(func=_run_segmentation, task=Task.TEXT_SEGMENTATION)

    tampering = commands.add_parser("tampering", help="IoU, P, R, F of real and tampered text, mIoU, mF")
    _add_folders(tampering, gt_help="folder of Tampered-IC13 <stem>.txt box files")
    tampering.add_argument("--images", type=Path, help="the images (for their sizes; default: the sibling *_img folder)")
    tampering.add_argument("--pred-format", choices=("auto", "classes", "raw"), default="auto",
                           help="classes: {0,1,2} maps (e.g. <stem>%s); raw: output colours (argmax)"
                           % Task.TAMPERED_TEXT_DETECTION.spec.result_suffix)
    tampering.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb",
                           help="raw outputs: rgb = R background, G real, B tampered; bgr = the original's visualisation files")
    tampering.set_defaults(func=_run_tampering, task=Task.TAMPERED_TEXT_DETECTION)

    model = commands.add_parser("model", help="run a model and the baselines on the test splits; one table")
    add_model_arguments(model)
    add_options(model, PredictorOptions, only=("size", "threshold", "batch_size", "precision", "backend"))
    model.add_argument("--no-baselines", dest="baselines", action="store_false", help="skip the classical baselines")
    _add_benchmark_options(model)
    model.set_defaults(func=_run_model)

    baselines = commands.add_parser("baselines", help="the classical baselines alone on the test splits")
    _add_benchmark_options(baselines)
    baselines.set_defaults(func=_run_baselines)

    real = commands.add_parser("real", help="the model and an OCR-detector pipeline on annotated real photos")
    real.add_argument("--data", type=Path, required=True, help="folder in the real-dev layout (NAME.jpg + NAME.json sidecars)")
    add_predictor_options(real)  # as the task commands; each --variants entry then sets its own tiling
    real.add_argument("--variants", nargs="+", default=["default"], choices=sorted(REAL_VARIANTS),
                      help="how the model meets an image: " + "; ".join(f"{k}: {v[1]}" for k, v in REAL_VARIANTS.items()))
    real.add_argument("--detector", choices=tuple(REAL_DETECTORS), default="ppocr",
                      help="the OCR detector of the erasure metric and of the detector rectangles + Telea baseline: "
                      "ppocr (default: the bundled PP-OCRv4 DB detector in box mode, the network RapidOCR ships), "
                      "rapidocr (RapidOCR itself, if installed: pip install --no-deps rapidocr_onnxruntime pyclipper "
                      "shapely six, so that it does not bring the GUI opencv-python) or strokes (the classical stroke detector)")
    real.add_argument("--pipelines", nargs="*", default=None, choices=sorted(REMOVAL_PIPELINES), metavar="NAME",
                      help="removal rows besides the weights' default, with the first variant's options (default: "
                      "every pipeline, " + ", ".join(REMOVAL_PIPELINES) + "; --pipelines alone: none)")
    real.add_argument("--limit", type=int, default=None, help="only the first N annotated images")
    real.add_argument("--forgeries", type=int, default=2, metavar="N",
                      help="tampering is also scored on N forgeries of each kind constructed per image with 2+ annotated "
                           "words: copy-moves (one field pasted over another of its height) and re-typed digits (a field "
                           "with digits drawn again with other digits); each re-saved as JPEG (default 2, 0 = none)")
    real.add_argument("--markdown", type=Path, help="write the tables as markdown")
    real.add_argument("--json", type=Path, help="write all scores (per image too) as JSON")
    real.add_argument("--picture", type=Path, help="a grid of inputs and every method's results; with --forgeries, "
                      "also FILE's stem + _tampering: the constructed forgeries with every tampering method's verdict")
    real.add_argument("--quiet", action="store_true", help="no progress bar")
    real.set_defaults(func=_run_real)


# Predictor options per `evaluate real --variants` name: (keyword arguments, description).
REAL_VARIANTS: dict[str, tuple[dict, str]] = {
    "default": ({}, "the predictor's defaults, as `upocr remove-text` runs"),
    "resize": ({"tile": None}, "whole image resized to the working size (the original's protocol)"),
    "auto": ({"tile": "auto"}, "native-resolution tiles for large images, else resize"),
    "tiles": ({"tile": "native"}, "native-resolution tiles of the working size, always"),
}


def _add_folders(parser: argparse.ArgumentParser, gt_help: str = "folder of ground truths") -> None:
    parser.add_argument("--pred", type=Path, required=True, help="folder of predictions")
    parser.add_argument("--gt", type=Path, required=True, help=gt_help)
    parser.add_argument("--json", type=Path, help="also write the metrics as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a partial set: ground truths without a prediction are a warning, not an error")


def _add_benchmark_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, required=True, help="data root holding the benchmark layouts")
    parser.add_argument("--tasks", nargs="+", default=None, help="removal, segmentation, tampering (default: all found)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images per task")
    parser.add_argument("--out", type=Path, default=None, help="keep predictions here (default: a temporary folder)")
    parser.add_argument("--markdown", type=Path, help="write the tables as markdown")
    parser.add_argument("--json", type=Path, help="write all metrics as JSON")
    parser.add_argument("--picture", type=Path, help="PNG of a few samples per task (default: <out>/samples.png with --out)")
    parser.add_argument("--fid-weights", type=Path, help="pytorch-fid Inception weights (FID is missing without them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _exit_code(errors: list[str], count: int) -> int:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if count == 0:
        return 2
    return 1 if errors else 0


def _finish_folder(args: argparse.Namespace, evaluation) -> int:
    from upocr.evaluate.report import markdown_table, write_json

    if evaluation.missing and not args.allow_missing:
        print(f"error: {args.pred}: {evaluation.missing} ground truths in {args.gt} have no prediction; "
              "scores on a partial set are not comparable (--allow-missing scores it anyway)", file=sys.stderr)
        return 1
    for warning in evaluation.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(markdown_table(args.task, {str(args.pred): evaluation.metrics}))
    if args.json:
        write_json(args.json, evaluation.to_json())
    return _exit_code(evaluation.errors, evaluation.metrics.get("count", 0))


def _guard(run):
    """Turn a missing folder, a bad layout or a missing optional package into one line on stderr and exit code 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (FileNotFoundError, ValueError, ImportError) as error:  # ImportError: a missing extra, said in one line
            print(f"error: {error}", file=sys.stderr)
            return 2

    return wrapped


def _check_fid_weights(path: Path | None) -> None:
    """Read the FID weights before the long work, so a bad file fails at once (it is cached for later)."""
    if path is not None:
        from upocr.evaluate.fid import default_device
        from upocr.evaluate.inception import load_fid_inception

        load_fid_inception(path, device=default_device())


@_guard
def _run_removal(args: argparse.Namespace) -> int:
    from upocr.evaluate.removal import evaluate_removal

    _check_fid_weights(args.fid_weights)
    evaluation = evaluate_removal(args.pred, args.gt, progress=not args.quiet, fid_weights=args.fid_weights)
    return _finish_folder(args, evaluation)


@_guard
def _run_segmentation(args: argparse.Namespace) -> int:
    from upocr.evaluate.pixel_tasks import evaluate_segmentation

    evaluation = evaluate_segmentation(args.pred, args.gt, threshold=args.threshold, gt_format=args.gt_format, progress=not args.quiet)
    return _finish_folder(args, evaluation)


@_guard
def _run_tampering(args: argparse.Namespace) -> int:
    from upocr.evaluate.pixel_tasks import evaluate_tampering

    evaluation = evaluate_tampering(
        args.pred, args.gt, image_dir=args.images, pred_format=args.pred_format,
        channel_order=args.channel_order, progress=not args.quiet,
    )
    return _finish_folder(args, evaluation)


def _run_benchmarks(args: argparse.Namespace, predictor) -> int:
    from upocr.evaluate.report import write_json
    from upocr.io import write_text
    from upocr.evaluate.runner import evaluate_on_benchmarks

    _check_fid_weights(args.fid_weights)
    picture = args.picture or (args.out / "samples.png" if args.out else None)
    report = evaluate_on_benchmarks(
        args.data_root, predictor=predictor, tasks=args.tasks, baselines=getattr(args, "baselines", True),
        out_dir=args.out, limit=args.limit, picture=picture, fid_weights=args.fid_weights, progress=not args.quiet,
    )
    for result in report.results:
        for warning in result.evaluation.warnings:
            print(f"warning: {result.task.short}/{result.method}: {warning}", file=sys.stderr)
    text = report.markdown()
    print(text)
    if args.markdown:
        write_text(args.markdown, text)
    if args.json:
        write_json(args.json, report.to_json())
    if report.picture:
        print(f"samples picture: {report.picture}", file=sys.stderr)
    count = sum(r.evaluation.metrics.get("count", 0) for r in report.results)
    return _exit_code(report.errors, count)


@_guard
def _run_model(args: argparse.Namespace) -> int:
    from upocr.predict import Predictor

    # Resize mode at --size, the model's own decoding: the original's evaluation path (upocr.evaluate.runner);
    # the pipelines and the forensic tampering decision get rows of their own.
    options = options_from_args(args, PredictorOptions, tile=None, segmentation="model", tampering="model")
    predictor = Predictor(options=options, weights=args.weights, device=args.device)
    return _run_benchmarks(args, predictor)


@_guard
def _run_baselines(args: argparse.Namespace) -> int:
    return _run_benchmarks(args, None)


@_guard
def _run_real(args: argparse.Namespace) -> int:
    import upocr
    from upocr.evaluate import real
    from upocr.evaluate.baselines import otsu_text_mask, sauvola_text_mask
    from upocr.evaluate.forensic import detector_words, ela_anomaly_boxes, ela_word_outliers
    from upocr.evaluate.report import write_json
    from upocr.io import write_text
    from upocr.io import write_image
    from upocr.visualize import image_grid

    samples = real.read_real_samples(args.data, limit=args.limit, on_note=lambda line: print(f"note: {line}", file=sys.stderr))
    detector = REAL_DETECTORS[args.detector]()
    model = upocr.load_model(args.weights, device=args.device)
    removal, segmentation, tampering = {}, {}, {}
    predictors = []
    for variant in args.variants:
        options = dict(REAL_VARIANTS[variant][0])
        if options.get("tile") == "native":
            options["tile"] = model.inference.input_size
        # Results only, as the CLI runs (and timed as it runs: Telea fills then skip the removal prompt).
        predictor = upocr.Predictor(model, options_from_args(args, PredictorOptions, keep_output=False, **options),
                                    device=args.device)
        removal[f"upocr ({variant})"] = real.predictor_removal(predictor)
        segmentation[f"upocr ({variant})"] = real.predictor_segmentation(predictor)
        tampering[f"upocr ({variant})"] = real.predictor_tampering(predictor)
        predictors.append(predictor)
    pipelines = args.pipelines if args.pipelines is not None else list(REMOVAL_PIPELINES)
    removal.update(real.pipeline_methods(predictors[0], [name for name in pipelines if name != predictors[0].removal]))
    tampering.update({f"upocr --tampering {name}": real.predictor_tampering(predictors[0].with_options(tampering=name))
                      for name in TAMPERING_DECISIONS if name != predictors[0].tampering})
    segmentation.update(real.finder_methods(predictors[0], [name for name in SEGMENTATION_FINDERS if name != predictors[0].segmentation]))
    tampering["detector words, ELA outliers (classical)"] = ela_word_outliers(detector_words(predictors[0].word_detector))
    tampering["deeptrace-ela anomaly boxes"] = ela_anomaly_boxes()
    removal[f"{args.detector} detector rectangles + Telea"] = real.detector_telea(detector)
    segmentation["Sauvola"] = sauvola_text_mask
    segmentation["Otsu"] = otsu_text_mask
    result = real.run_real_benchmark(samples, removal, segmentation, detector, tampering_methods=tampering,
                                     oracles=[f"upocr ({variant})" for variant in args.variants], progress=not args.quiet)
    tampering_picture = None
    if args.forgeries > 0:
        from upocr.evaluate.forensic import FORGERIES, constructed_forgery_picture, constructed_forgery_scores

        result.constructed = {kind: constructed_forgery_scores(samples, tampering, kind=kind, trials=args.forgeries,
                                                               progress=not args.quiet) for kind in FORGERIES}
        if args.picture and any(scores.seconds for kind in result.constructed.values() for scores in kind.values()):
            tampering_picture = constructed_forgery_picture(samples, tampering)  # some forgery was made: one row at least
    title = f"Real-image benchmark: {len(samples)} images in {args.data.name}; upocr's default removal: {predictors[0].removal}"
    text, data = real.real_report(result, title=title)
    print(text)
    if args.markdown:
        write_text(args.markdown, text)
    if args.json:
        write_json(args.json, data)
    if args.picture and result.pictures:
        write_image(args.picture, image_grid(result.pictures, result.picture_titles, height=192))
        print(f"picture: {args.picture}", file=sys.stderr)
    if tampering_picture is not None:  # the constructed forgeries, each method's verdict drawn over them
        path = args.picture.with_name(f"{args.picture.stem}_tampering{args.picture.suffix}")
        write_image(path, tampering_picture)
        print(f"tampering picture: {path}", file=sys.stderr)
    return _exit_code(result.errors, len(samples) - len(result.errors))
