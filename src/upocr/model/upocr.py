"""UPOCR: SwinV2 encoder -> per-pixel projection + additive task prompt -> mirrored SwinV2 decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from upocr.model.config import UPOCRConfig
from upocr.model.decoder import SwinV2Decoder
from upocr.model.encoder import SwinV2Encoder
from upocr.model.swinv2 import init_swin_weights
from upocr.tasks import Task, task_indices
from upocr.weights import InferenceDefaults, save_weights
from upocr.weights.defaults import SIZE_MULTIPLE


class TaskPrompt(nn.Module):
    """One learnable vector per task, broadcast over the bottleneck map and added to it."""

    def __init__(self, *, num_tasks: int, dim: int) -> None:
        super().__init__()
        self.task_embedding = nn.Embedding(num_tasks, dim)
        nn.init.kaiming_normal_(self.task_embedding.weight)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,) task indices -> (B, 1, C) prompts (broadcast over the bottleneck tokens)."""
        return self.task_embedding(indices.to(self.task_embedding.weight.device)).unsqueeze(1)


def check_input_size(height: int, width: int) -> None:
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height == 0 or width == 0:
        pad_h = -(-height // SIZE_MULTIPLE) * SIZE_MULTIPLE or SIZE_MULTIPLE
        pad_w = -(-width // SIZE_MULTIPLE) * SIZE_MULTIPLE or SIZE_MULTIPLE
        raise ValueError(
            f"input {height}x{width} is not a multiple of {SIZE_MULTIPLE}; pad or resize to {pad_h}x{pad_w} "
            "(upocr.Predictor does this for you)"
        )


def add_input_for_removal(output: torch.Tensor, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`output + images` (average-pooled to the output's size) on the text-removal rows of the batch."""
    factor = images.shape[-1] // output.shape[-1]
    passthrough = F.avg_pool2d(images, factor) if factor > 1 else images
    is_removal = (indices == Task.TEXT_REMOVAL).to(output.dtype).view(-1, 1, 1, 1)
    return output + is_removal * passthrough.to(output.dtype)


class UPOCR(nn.Module):
    """Unified pixel-level OCR model. `forward(images, tasks)` -> [1/4, 1/2, full] RGB outputs."""

    # Parameters of modules that start as a no-op, so weights trained without them load unchanged
    # (`upocr.model.checkpoint.load_into_extended_model`).
    NEUTRAL_ADDITIONS = ("decoder.image_fusions.",)

    def __init__(self, config: UPOCRConfig | str = "small") -> None:
        super().__init__()
        self.config = UPOCRConfig.preset(config) if isinstance(config, str) else config
        # How these weights are best run (working size, segmentation threshold): saved and loaded with the
        # weights, not part of the architecture; `load_model` sets the stored ones.
        self.inference = InferenceDefaults()
        self.encoder = SwinV2Encoder(self.config)
        self.proj = nn.Linear(self.config.bottleneck_dim, self.config.bottleneck_dim)
        self.task_prompt = TaskPrompt(num_tasks=self.config.num_tasks, dim=self.config.bottleneck_dim)
        self.decoder = SwinV2Decoder(self.config)
        init_swin_weights(self.encoder)
        init_swin_weights(self.decoder)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, images: torch.Tensor, tasks: Sequence[Task | str | int] | Task | str | int | torch.Tensor) -> list[torch.Tensor]:
        """images: (B, 3, H, W) float in [0, 1], H and W multiples of 32; tasks: one per image, or one for all.

        Returns three (B, 3, h, w) maps at 1/4, 1/2 and full resolution: raw values, clamp to [0, 1] to read.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        check_input_size(height, width)
        indices = task_indices(tasks, images.shape[0]).to(images.device)
        if int(indices.max()) >= self.config.num_tasks or int(indices.min()) < 0:
            raise ValueError(f"task index out of range for a model with {self.config.num_tasks} tasks")
        return self.forward_indices(images, indices)

    def forward_indices(self, images: torch.Tensor, indices: torch.Tensor) -> list[torch.Tensor]:
        """`forward` without its checks: images (B, 3, H, W), indices (B,) int64 task indices, both valid.
        Traceable (no Python branch on tensor values): what `upocr.export` exports to ONNX."""
        features = self.encoder(images)
        bottleneck = features[-1]
        b, c, h, w = bottleneck.shape
        tokens = self.proj(bottleneck.flatten(2).transpose(1, 2)) + self.task_prompt(indices)
        outputs = self.decoder(tokens, h, w, features, images)
        if self.config.removal_residual:
            outputs = [add_input_for_removal(out, images, indices) for out in outputs]
        return outputs

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(
        self, directory: str | Path, *, dtype: torch.dtype | None = None, training: dict[str, Any] | None = None
    ) -> Path:
        """Write `model.safetensors` + `config.json` (what `upocr.load_model(directory)` reads), with
        `self.inference` in the metadata. `dtype=torch.float16` halves the file (the bundled weights);
        `training`: a JSON-able record of how the weights were trained (`upocr.weights.training_record`)."""
        return save_weights(directory, self.state_dict(), self.config.to_dict(), self.inference, dtype=dtype, training=training)


def build_model(config: UPOCRConfig | str = "small") -> UPOCR:
    """A randomly initialised UPOCR for a preset name ('paper', 'small', 'mini', 'tiny') or a config."""
    return UPOCR(config)
