"""Mirrored SwinV2 decoder: five stages each ending in a PatchSplit (x2 up), encoder skips through
lateral convolutions, and three output heads at 1/4, 1/2 and full resolution. With `config.image_skip`
the input image itself joins at 1/2 and full resolution (`ImageFusion`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from upocr.model.config import UPOCRConfig
from upocr.model.swinv2 import PatchSplit, swin_stages


def lateral_connection(channels: int) -> nn.Sequential:
    """Conv1x1 -> Conv3x3 (x2 width) -> Conv3x3 -> Conv1x1, linear (no norms or activations, as the original)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 1),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.Conv2d(2 * channels, 2 * channels, 3, padding=1),
        nn.Conv2d(2 * channels, channels, 1),
    )


class ImageFusion(nn.Module):
    """Adds `Conv3x3 -> GELU -> Conv3x3` of [decoder features, image] to the decoder features.

    Nonlinear on purpose: removal must gate pixels ("copy here, fill there") and masks must follow
    strokes finer than a 1/4-resolution token. The last conv starts at zero, so a fresh fusion leaves the
    decoder unchanged: weights trained without it load and behave as before (fine-tuning starts there).
    """

    def __init__(self, *, channels: int, hidden: int) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(channels + 3, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, channels, 3, padding=1))
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """features: (B, C, h, w); image: (B, 3, H, W) with H a multiple of h -> (B, C, h, w)."""
        factor = image.shape[-1] // features.shape[-1]
        if factor > 1:
            image = F.avg_pool2d(image, factor)
        return features + self.fuse(torch.cat([features, image], dim=1))


class DecoderStage(nn.Module):
    """Blocks at one resolution, then PatchSplit to twice the resolution and half the channels."""

    def __init__(self, *, blocks: nn.ModuleList, dim: int) -> None:
        super().__init__()
        self.blocks = blocks
        self.upsample = PatchSplit(dim)


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class SwinV2Decoder(nn.Module):
    # Stages whose PatchSplit output receives an encoder skip, and stages that feed an output head.
    SKIP_STAGES = (0, 1, 2)
    HEAD_STAGES = (2, 3, 4)

    def __init__(self, config: UPOCRConfig) -> None:
        super().__init__()
        dims = [config.bottleneck_dim // 2**i for i in range(5)]
        stages = swin_stages(
            dims=dims,
            depths=config.decoder_depths,
            heads=config.decoder_heads,
            window=config.decoder_window,
            pretrained_window=config.decoder_pretrained_window,
            drop_path_rate=config.decoder_drop_path,
            mlp_ratio=config.mlp_ratio,
            cpb_hidden=config.cpb_hidden,
        )
        self.layers = nn.ModuleList(DecoderStage(blocks=blocks, dim=dim) for blocks, dim in zip(stages, dims))
        # After stage i's PatchSplit the map has dims[i] // 2 channels.
        self.lateral_connection_list = nn.ModuleList(lateral_connection(dims[i] // 2) for i in self.SKIP_STAGES)
        for i in self.HEAD_STAGES:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i] // 2))
        self.intermediate_convs = nn.ModuleList(nn.Conv2d(dims[i] // 2, 3, 3, padding=1) for i in self.HEAD_STAGES[:-1])
        self.output_conv = nn.Conv2d(dims[-1] // 2, 3, 3, padding=1)
        # Stages whose output (1/2 and full resolution) is fused with the image, when config.image_skip.
        self.image_stages = self.HEAD_STAGES[1:] if config.image_skip else ()
        self.image_fusions = nn.ModuleList(
            ImageFusion(channels=dims[i] // 2, hidden=max(32, dims[i])) for i in self.image_stages
        )

    def head(self, i: int) -> nn.Conv2d:
        position = self.HEAD_STAGES.index(i)
        return self.output_conv if i == self.HEAD_STAGES[-1] else self.intermediate_convs[position]

    def forward(
        self, x: torch.Tensor, h: int, w: int, skips: list[torch.Tensor], image: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """x: bottleneck tokens (B, h*w, C); skips: the encoder's four NCHW maps (fine -> coarse);
        image: the (B, 3, H, W) input, needed when config.image_skip."""
        if self.image_stages and image is None:
            raise ValueError("this decoder fuses the input image (image_skip); pass image=")
        outputs = []
        for i, layer in enumerate(self.layers):
            for block in layer.blocks:
                x = block(x, h, w)
            x = layer.upsample(x, h, w)
            h, w = 2 * h, 2 * w
            if i in self.SKIP_STAGES:
                skip = self.lateral_connection_list[i](skips[-i - 2])
                x = x + skip.flatten(2).transpose(1, 2)
            if i in self.image_stages:
                fused = self.image_fusions[self.image_stages.index(i)](tokens_to_map(x, h, w), image)
                x = fused.flatten(2).transpose(1, 2)
            if i in self.HEAD_STAGES:
                normed = getattr(self, f"norm{i}")(x)
                outputs.append(self.head(i)(tokens_to_map(normed, h, w)))
        return outputs
