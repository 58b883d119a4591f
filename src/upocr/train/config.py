"""Training configuration: one dataclass, filled from defaults < YAML file < command-line flags.

Defaults are the original recipe (reference section 4) except the architecture and run length,
which the YAML files in ``configs/`` choose (``configs/paper.yaml`` is the original run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import yaml

from upocr.fields import coerce_fields, option
from upocr.tasks import Task

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DataCheck = Literal["off", "headers", "full"]
DATA_CHECKS: tuple[str, ...] = get_args(DataCheck)
TamperingScale = Literal["resize", "native"]
TAMPERING_SCALES: tuple[str, ...] = get_args(TamperingScale)
LRDecay = Literal["linear", "cosine", "constant"]


@dataclass
class TrainConfig:
    """Every training option, with its command-line flag and help (`upocr train --help` is made from these
    fields: see `upocr.commands.options`). Values are coerced to the annotations; a wrong type or a value
    out of range is a ValueError naming the option."""

    # data
    data_root: str | None = option(
        None, help="data root in the original layouts (TextRemoval/, TextSegmentation/, TamperedTextDetection/)")
    tasks: list[str] | None = option(None, help="tasks to train (default: every layout found)")
    image_size: int = option(512, flags=("--image-size", "--size"), help="training image size (multiple of 32; original 512)")
    batch_per_task: int = option(
        8, help="images of every task per step on each process (original 8); a step takes batch_per_task x "
        "world_size images of every task")
    augment: bool = option(True, flags=("--no-augment",), help="turn augmentations off")
    tampering_scale: TamperingScale = option(
        "resize", help="tampering samples: resize (original: a random 50-100 %% crop resized to --image-size) or "
        "native (windows at the image's own resolution: forgery traces survive)")
    num_workers: int = option(2, help="data loading worker processes per task")
    check_data: DataCheck = option(
        "headers", help="before training, check every sample: headers (default: opened, sizes compared, about a "
        "millisecond per sample), full (decoded as training reads them), off; unusable samples are listed and "
        "the run does not start")
    # model
    model: str | dict[str, Any] | None = option(
        None, help="model preset: paper, small, mini, tiny (a YAML config may give a mapping {preset: name, "
        "<field>: value}); default small, or with --init the checkpoint's own architecture")
    init: str | None = option(
        None, help="start from any checkpoint upocr.load_model reads (its architecture, unless --model or the config "
        "names one: then the weights go into that, which may add zero-initialised modules such as image_skip)")
    vgg_weights: str | None = option(
        None, help="ImageNet VGG16 weights (torchvision state dict or an original checkpoint) for the "
        "perceptual/style terms; without it those terms are off")
    # optimisation (original recipe)
    iterations: int = option(80_000, help="optimizer steps (original 80000)")
    lr: float = option(5e-4, help="base learning rate (original 5e-4)")
    encoder_lr_ratio: float = option(0.1, help="encoder lr = lr x this (original 0.1)")
    weight_decay: float = option(1e-4, help="AdamW weight decay (original 1e-4)")
    warmup_fraction: float = option(0.025, help="fraction of the run spent warming up (original 0.025)")
    warmup_start_factor: float = option(0.2, help="warm-up starts at lr x this (original 0.2)")
    min_lr_factor: float = option(0.02, help="lr never decays below lr x this (original 0.02)")
    lr_epoch_steps: int = option(200, help="lr changes once per this many steps (original 200; 1 = every step)")
    lr_decay: LRDecay = option("linear", help="decay after warm-up: linear (original), cosine or constant")
    grad_clip: float = option(0.1, help="max gradient norm, 0 = off (original 0.1)")
    tampering_text_weight: float = option(
        0.0, help="add this x a class-balanced real-vs-tampered term on text pixels to the tampering loss "
        "(upocr.train.losses.real_vs_tampered_loss; original: 0, off)")
    precision: Precision = option(
        "auto", help="auto (bf16 where the CPU or GPU has it, else fp32 on CPU / fp16 on CUDA), fp32, bf16, "
        "fp16 (CUDA only, with loss scaling)")
    seed: int = option(42, help="base seed; rank r uses seed + r for its own randomness (drop path), as the original")
    device: str = option("auto", help="auto, cpu or cuda (under torchrun each rank uses cuda:LOCAL_RANK)")
    # run
    output_dir: str | None = option(
        None, flags=("--output",), help="run directory (checkpoints, logs, exported model); default a new "
        "runs/<model>-<date>-<time>, so that runs never share one by accident")
    overwrite: bool = option(
        False, help="start a new run in an --output that holds another run (removing its checkpoints and model) "
        "or other files (the run's files replace those of the same name)")
    checkpoint_every: int = option(2000, help="write a checkpoint every N steps (and always at the end)")
    keep_checkpoints: int = option(2, help="keep the newest N checkpoints (0 = all)")
    log_every: int = option(10, help="write a train.csv row every N steps")
    eval_every: int = option(0, help="mean loss on the test split every N steps (eval.csv); 0 = off")
    eval_batches: int = option(4, help="batches per evaluation")
    max_minutes: float | None = option(
        None, help="stop cleanly (checkpoint + export) after this many minutes (continue with --resume)")
    max_steps: int | None = option(
        None, help="stop cleanly at this step; the lr schedule still follows --iterations (a deterministic "
        "--max-minutes: continue with --resume, step for step as an uninterrupted run)")
    resume: str | None = option(
        None, nargs="?", const="auto", metavar="CHECKPOINT",
        help="continue from a checkpoint (no value: the newest in the run directory)")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.tasks is not None:
            try:
                self.tasks = [Task.parse(t).short for t in self.tasks]
            except ValueError as error:
                raise ValueError(f"tasks: {error}") from None
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if isinstance(self.model, dict) and not all(isinstance(key, str) for key in self.model):
            raise ValueError(f"model must map field names to values, got {self.model!r}")
        at_least = {"batch_per_task": 1, "iterations": 1, "lr_epoch_steps": 1, "log_every": 1, "eval_batches": 1,
                    "max_steps": 1, "num_workers": 0, "checkpoint_every": 0, "eval_every": 0, "keep_checkpoints": 0,
                    "encoder_lr_ratio": 0, "weight_decay": 0, "warmup_fraction": 0, "warmup_start_factor": 0,
                    "min_lr_factor": 0, "grad_clip": 0, "tampering_text_weight": 0, "max_minutes": 0}  # fmt: skip
        for name, lowest in at_least.items():
            value = getattr(self, name)
            if value is not None and value < lowest:
                raise ValueError(f"{name} must be >= {lowest}, got {value}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_fraction >= 1:
            raise ValueError(f"warmup_fraction must be < 1, got {self.warmup_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str | None = None) -> "TrainConfig":
        """Options from a mapping (YAML keys may use - for _); ValueError '<source>: <problem>'."""
        where = f"{source}: " if source else ""
        names = {f.name for f in dataclasses.fields(cls)}
        normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalised) - names)
        if unknown:
            raise ValueError(f"{where}unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        try:
            return cls(**normalised)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of training options, found {type(data).__name__}")
    return data


def resolve_config(yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file's values, then every override that is not None. A bad value in the
    file is reported with the file's name; a bad override without one (it came from a flag)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update({str(k).replace("-", "_"): v for k, v in read_yaml(yaml_path).items()})
        TrainConfig.from_dict(values, source=str(yaml_path))  # the file's own values, checked on their own
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(values)


def write_yaml(path: str | Path, config: TrainConfig) -> None:
    from upocr.utils import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

