"""`upocr train`: train one model on all three tasks (single process or under torchrun)."""

from __future__ import annotations

import argparse
import os
import sys

from upocr.commands.options import add_options, given_options
from upocr.train.config import TrainConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on text removal, segmentation and tampering at once",
        description="Train one UPOCR model on all tasks of a data root at once (1:1:1 batches, the original recipe "
        "by default). Runs as one process or under `torchrun --nproc_per_node=N -m upocr.cli train ...` (DDP). "
        "Options come from defaults < --config YAML < flags.",
    )
    parser.add_argument("--config", help="YAML file of training options (any option below, with _ or -)")
    add_options(parser, TrainConfig)  # every option of TrainConfig, declared there once
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from upocr import CheckpointError
    from upocr.train.checkpoint import CheckpointWriteError
    from upocr.train.config import resolve_config
    from upocr.train.trainer import NonFiniteLossError, TrainingInterrupted, train

    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        config = resolve_config(args.config, given_options(args, TrainConfig))
        result = train(config, progress=args.progress, config_file=args.config)
    except NonFiniteLossError as error:
        print(f"upocr train: stopped: {error}", file=sys.stderr)
        return 1
    except CheckpointWriteError as error:
        print(f"upocr train: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, CheckpointError, FileNotFoundError) as error:
        print(f"upocr train: error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        if main_rank:
            print(f"upocr train: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the first step, or a second Ctrl+C
        if main_rank:
            print("upocr train: interrupted (no checkpoint written since the last one)", file=sys.stderr)
        return 130
    state = "finished" if result.finished else "stopped early (resume with --resume)"
    if main_rank:
        print(f"{state} at step {result.step}; run directory {result.run_dir}, model in {result.run_dir / 'model'}")
    return 0
