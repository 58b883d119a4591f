"""Training configuration: one dataclass, filled from defaults < YAML file < command-line flags.

Defaults are the original recipe (reference section 4) except the architecture and run length,
which the YAML files in ``configs/`` choose (``configs/paper.yaml`` is the original run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from upocr.tasks import Task

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DATA_CHECKS = ("off", "headers", "full")
TAMPERING_SCALES = ("resize", "native")


@dataclass
class TrainConfig:
    # data
    data_root: str | None = None
    tasks: list[str] | None = None  # None: every task whose layout exists under data_root
    image_size: int = 512
    batch_per_task: int = 8  # per rank; a step takes batch_per_task x world_size images of every task
    augment: bool = True
    # Tampering samples: "resize" (the original: a random 50-100 % crop resized to image_size) or "native"
    # (an image_size window at the image's own resolution, so that compression and noise traces survive).
    tampering_scale: str = "resize"
    num_workers: int = 2
    # Before training, every sample's files: "headers" (opened, sizes compared, tampering boxes parsed:
    # about a millisecond per sample), "full" (decoded as training reads them), "off".
    check_data: str = "headers"
    # model
    # Preset name, or {"preset": name, <UPOCRConfig field>: value, ...}. None: "small", or with `init` the
    # checkpoint's own architecture.
    model: str | dict[str, Any] | None = None
    # Start from any checkpoint upocr.load_model reads. With `model` also set, the weights go into that
    # architecture, which may add zero-initialised modules to the checkpoint's (e.g. image_skip).
    init: str | None = None
    vgg_weights: str | None = None  # ImageNet VGG16 for the perceptual/style terms; None turns them off
    # optimisation (original recipe)
    iterations: int = 80_000
    lr: float = 5e-4
    encoder_lr_ratio: float = 0.1
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.025
    warmup_start_factor: float = 0.2
    min_lr_factor: float = 0.02
    lr_epoch_steps: int = 200  # lr is constant within each "epoch" of this many steps (original: 200)
    lr_decay: str = "linear"
    grad_clip: float = 0.1  # max global grad norm; 0 turns clipping off
    # > 0: adds this x a class-balanced real-vs-tampered term on text pixels to the tampering loss
    # (upocr.train.losses.real_vs_tampered_loss); 0 is the original loss.
    tampering_text_weight: float = 0.0
    precision: str = "auto"  # auto: bf16 on CPU, bf16 (or fp16 without bf16 support) on CUDA
    seed: int = 42  # rank r uses seed + r for its own randomness (drop path), as the original
    device: str = "auto"
    # run
    # None: a new folder runs/<model>-<date>-<time>, so that runs never share one by accident.
    output_dir: str | None = None
    overwrite: bool = False  # a new run may replace the checkpoints and model of an old run in output_dir
    checkpoint_every: int = 2000
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0  # >0: mean loss on the test split every N steps (eval.csv)
    eval_batches: int = 4
    max_minutes: float | None = None  # stop cleanly (checkpoint + export) after this much wall time
    # Stop cleanly at this step, the lr schedule still following `iterations`: a deterministic max_minutes
    # (replays a run that was stopped and resumed, step for step).
    max_steps: int | None = None
    resume: str | None = None  # a checkpoint path, or "auto" for the newest in output_dir

    def __post_init__(self) -> None:
        if self.tasks is not None:
            if isinstance(self.tasks, str):
                self.tasks = [self.tasks]
            self.tasks = [Task.parse(t).short for t in self.tasks]
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        for name in ("batch_per_task", "iterations", "lr_epoch_steps", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tampering_scale not in TAMPERING_SCALES:
            raise ValueError(f"tampering_scale must be one of {', '.join(TAMPERING_SCALES)}, got {self.tampering_scale!r}")
        if self.check_data not in DATA_CHECKS:
            raise ValueError(f"check_data must be one of {', '.join(DATA_CHECKS)}, got {self.check_data!r}")
        if self.tampering_text_weight < 0:
            raise ValueError(f"tampering_text_weight must be >= 0, got {self.tampering_text_weight}")
        if self.checkpoint_every < 0 or self.eval_every < 0:
            raise ValueError("checkpoint_every and eval_every must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalised) - names)
        if unknown:
            raise ValueError(f"{source}: unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**normalised)


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
    """Defaults, then the YAML file's values, then every override that is not None."""
    values: dict[str, Any] = {}
    source = "config"
    if yaml_path is not None:
        values.update({str(k).replace("-", "_"): v for k, v in read_yaml(yaml_path).items()})
        source = str(yaml_path)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(values, source=source)


def write_yaml(path: str | Path, config: TrainConfig) -> None:
    from upocr.utils import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

