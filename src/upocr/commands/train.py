"""`upocr train`: train one model on all three tasks (single process or under torchrun)."""

from __future__ import annotations

import argparse
import os
import sys

# flag -> (TrainConfig field, type, help). Every option of TrainConfig can be given here or in --config.
_OPTIONS: list[tuple[str, str, type, str]] = [
    ("--data-root", "data_root", str, "data root in the original layouts (TextRemoval/, TextSegmentation/, TamperedTextDetection/)"),
    ("--model", "model", str, "model preset: paper, small, mini, tiny (a YAML config may give a mapping of fields)"),
    ("--init", "init", str, "start from any checkpoint upocr.load_model reads (its architecture, unless --model or the config names one: then the weights go into that, which may add zero-initialised modules such as image_skip)"),
    ("--vgg-weights", "vgg_weights", str, "ImageNet VGG16 weights (torchvision state dict or an original checkpoint) "
     "for the perceptual/style terms; without it those terms are off"),
    ("--image-size", "image_size", int, "training image size (multiple of 32; original 512)"),
    ("--tampering-scale", "tampering_scale", str, "tampering samples: resize (original: a random 50-100 %% crop "
     "resized to --image-size) or native (windows at the image's own resolution: forgery traces survive)"),
    ("--batch-per-task", "batch_per_task", int, "images of every task per step on each process (original 8)"),
    ("--iterations", "iterations", int, "optimizer steps (original 80000)"),
    ("--lr", "lr", float, "base learning rate (original 5e-4)"),
    ("--encoder-lr-ratio", "encoder_lr_ratio", float, "encoder lr = lr x this (original 0.1)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (original 1e-4)"),
    ("--warmup-fraction", "warmup_fraction", float, "fraction of the run spent warming up (original 0.025)"),
    ("--warmup-start-factor", "warmup_start_factor", float, "warm-up starts at lr x this (original 0.2)"),
    ("--min-lr-factor", "min_lr_factor", float, "lr never decays below lr x this (original 0.02)"),
    ("--lr-epoch-steps", "lr_epoch_steps", int, "lr changes once per this many steps (original 200; 1 = every step)"),
    ("--lr-decay", "lr_decay", str, "decay after warm-up: linear (original), cosine or constant"),
    ("--grad-clip", "grad_clip", float, "max gradient norm, 0 = off (original 0.1)"),
    ("--tampering-text-weight", "tampering_text_weight", float, "add this x a class-balanced real-vs-tampered "
     "term on text pixels to the tampering loss (original: 0, off)"),
    ("--precision", "precision", str, "auto (bf16), fp32, bf16, fp16 (CUDA only, with loss scaling)"),
    ("--seed", "seed", int, "base seed; rank r uses seed + r (original 42)"),
    ("--device", "device", str, "auto, cpu or cuda (under torchrun each rank uses cuda:LOCAL_RANK)"),
    ("--num-workers", "num_workers", int, "data loading worker processes per task"),
    ("--check-data", "check_data", str, "before training, check every sample: headers (default: opened, sizes compared), "
     "full (decoded as training reads them), off; unusable samples are listed and the run does not start"),
    ("--output", "output_dir", str, "run directory (checkpoints, logs, exported model); default a new runs/<model>-<date>-<time>"),
    ("--checkpoint-every", "checkpoint_every", int, "write a checkpoint every N steps (and always at the end)"),
    ("--keep-checkpoints", "keep_checkpoints", int, "keep the newest N checkpoints (0 = all)"),
    ("--log-every", "log_every", int, "write a train.csv row every N steps"),
    ("--eval-every", "eval_every", int, "mean loss on the test split every N steps (eval.csv); 0 = off"),
    ("--eval-batches", "eval_batches", int, "batches per evaluation"),
    ("--max-minutes", "max_minutes", float, "stop cleanly (checkpoint + export) after this many minutes"),
    ("--max-steps", "max_steps", int, "stop cleanly at this step; the lr schedule still follows --iterations (continue with --resume)"),
]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on text removal, segmentation and tampering at once",
        description="Train one UPOCR model on all tasks of a data root at once (1:1:1 batches, the original recipe "
        "by default). Runs as one process or under `torchrun --nproc_per_node=N -m upocr.cli train ...` (DDP). "
        "Options come from defaults < --config YAML < flags.",
    )
    parser.add_argument("--config", help="YAML file of training options (any option below, with _ or -)")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks to train (default: every layout found)")
    for flag, dest, kind, text in _OPTIONS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    parser.add_argument("--size", dest="image_size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint (no value: the newest in the run directory)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="start a new run in an --output that holds another run, removing its checkpoints and model")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="turn augmentations off")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from upocr import CheckpointError
    from upocr.train.checkpoint import CheckpointWriteError
    from upocr.train.config import resolve_config
    from upocr.train.trainer import NonFiniteLossError, TrainingInterrupted, train

    overrides = {dest: getattr(args, dest) for _, dest, _, _ in _OPTIONS}
    overrides.update(tasks=args.tasks, resume=args.resume, augment=args.augment, overwrite=args.overwrite)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        config = resolve_config(args.config, overrides)
        result = train(config, progress=args.progress)
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
