"""Optimizer and learning-rate schedule: AdamW with the encoder at a lower lr; the original's warm-up then
linear decay, generalised to iterations.

The original sets the lr once per "epoch" of 200 iterations, for 400 epochs (reference section 4):
warm-up epochs e < 10: ``1e-4 + (5e-4 - 1e-4) * e / 10``; later epochs ``max(5e-4 * (399 - e) / 400, 1e-5)``.
Written relative to the base lr and the run length, with E = iterations / epoch_steps epochs and
W = warmup_fraction * E warm-up epochs, that is

    e < W:  lr * (start + (1 - start) * e / W)          start = warmup_start_factor (0.2)
    e >= W: lr * max(decay(e), min_factor)               linear: (E - 1 - e) / E; min_factor 0.02

which for 80,000 iterations and the defaults gives exactly the original's values. ``epoch_steps=1``
updates the lr every step; ``decay="cosine"`` replaces the linear part by a half cosine from 1 to
min_factor over the post-warm-up epochs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from upocr.train.config import TrainConfig


@dataclass(frozen=True)
class LRSchedule:
    total_steps: int
    warmup_fraction: float = 0.025
    warmup_start_factor: float = 0.2
    min_factor: float = 0.02
    epoch_steps: int = 200
    decay: str = "linear"

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"the schedule needs at least 1 step, got {self.total_steps}")
        if self.epoch_steps < 1:
            raise ValueError(f"lr epoch length must be >= 1 step, got {self.epoch_steps}")
        if self.decay not in ("linear", "cosine", "constant"):
            raise ValueError(f"unknown lr decay {self.decay!r}; expected linear, cosine or constant")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warm-up fraction must be in [0, 1), got {self.warmup_fraction}")

    def factor(self, step: int) -> float:
        """Multiplier of the base lr at 0-based `step`."""
        epoch = step // self.epoch_steps
        epochs = self.total_steps / self.epoch_steps
        warmup = self.warmup_fraction * epochs
        if epoch < warmup:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * epoch / warmup
        if self.decay == "constant":
            return 1.0
        if self.decay == "linear":
            return max((epochs - 1 - epoch) / epochs, self.min_factor)
        span = max(epochs - warmup, 1.0)
        progress = min((epoch - warmup) / span, 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every param group's lr to its base lr (`initial_lr`) times factor(step); return the factor."""
        factor = self.factor(step)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
        return factor

    def state_dict(self) -> dict:
        return asdict(self)


def build_optimizer(model: torch.nn.Module, config: "TrainConfig") -> torch.optim.AdamW:
    """AdamW over all parameters (weight decay on all, as the original); encoder at lr x encoder_lr_ratio."""
    encoder, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (encoder if name.startswith("encoder.") else rest).append(parameter)
    groups = [
        {"params": rest, "lr": config.lr, "name": "model"},
        {"params": encoder, "lr": config.lr * config.encoder_lr_ratio, "name": "encoder"},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def build_schedule(config: "TrainConfig") -> LRSchedule:
    return LRSchedule(
        total_steps=config.iterations,
        warmup_fraction=config.warmup_fraction,
        warmup_start_factor=config.warmup_start_factor,
        min_factor=config.min_lr_factor,
        epoch_steps=config.lr_epoch_steps,
        decay=config.lr_decay,
    )
