"""`upocr batch remove-text | segment-text | detect-tampering`: the task commands on a Ray Data actor pool
(`upocr.batch`), for folders too large for one process, on one machine or a Ray cluster."""

from __future__ import annotations

import argparse

from upocr.batch import DEVICES, ActorSetupError, RayMissing, run_batch  # Ray itself only when a run starts
from upocr.cli import EXIT_INTERRUPTED
from upocr.commands import positive
from upocr.commands.options import options_from_args
from upocr.commands.predict import add_task_arguments, print_error, summarize, writes_help
from upocr.files import FilesInterrupted
from upocr.options import PredictorOptions
from upocr.tasks import TASK_SPECS


def register(subparsers: argparse._SubParsersAction) -> None:
    batch = subparsers.add_parser(
        "batch",
        help="run a task on many images with a Ray Data actor pool (pip install -e '.[ray]')",
        description="The task commands (remove-text, segment-text, detect-tampering) on a pool of Ray actors, one "
        "model each: on this machine, or on the Ray cluster of $RAY_ADDRESS / --address (`ray job submit`). "
        "Inputs may be folders, files or fsspec URLs (s3://bucket/photos/); the files written, their names and "
        "the one-line errors are the task command's. A second run skips the images whose files are all there. "
        "--device auto (the default) is cuda when the cluster has GPUs. See docs/batch.md.",
    )
    tasks = batch.add_subparsers(dest="batch_task", metavar="TASK")
    tasks.required = True
    for spec in TASK_SPECS.values():
        parser = tasks.add_parser(
            spec.verb,
            help=spec.help,
            description=f"{writes_help(spec)} Images whose files all exist are skipped (a half-done folder is resumed); "
            "a failed input is reported on one line, the others are still processed and the exit status is 1.",
        )
        add_task_arguments(
            parser, spec,
            inputs_help="image files or folders, local or fsspec URLs (s3://bucket/photos/, file:///data; s3 and gs "
            "need s3fs / gcsfs); on a cluster local paths must be the same on every node",
            overwrite_help="process every image, replacing files that exist (default: skip images whose files "
            "all exist); inputs are never replaced",
            devices=DEVICES,
        )
        ray = parser.add_argument_group("ray")
        ray.add_argument("--actors", type=positive(int), default=None,
                         help="actors (models) in the pool (default: one per GPU, or on CPU one per --cpus-per-actor CPUs)")
        ray.add_argument("--cpus-per-actor", type=positive(float), default=1.0,
                         help="CPUs each actor reserves, and its torch threads (default 1)")
        ray.add_argument("--gpus-per-actor", type=positive(float), default=None,
                         help="GPUs each actor reserves on cuda (default 1; 0.5 puts two models on a GPU)")
        ray.add_argument("--address", default=None,
                         help="Ray cluster to use (default: $RAY_ADDRESS, else a local Ray on this machine)")
        parser.set_defaults(func=run_batch_command, task=spec.task)


def run_batch_command(args: argparse.Namespace) -> int:
    try:
        report = run_batch(
            args.inputs, args.output, args.task,
            weights=args.weights, options=options_from_args(args, PredictorOptions, keep_output=False), device=args.device,
            actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
            overwrite=args.overwrite, address=args.address, on_error=print_error, progress=True,
        )
    except RayMissing as missing:
        print_error(missing)
        return 1
    except FilesInterrupted as stop:
        print_error(f"interrupted after {stop.report.done} of {stop.report.total} image(s); "
              "outputs written so far are complete; run the same command again to finish")
        return EXIT_INTERRUPTED
    except (ActorSetupError, ValueError) as error:  # the model could not be loaded; the actor plan refused the options
        print_error(error)
        return 1
    return summarize(report, finished=report.finished)
