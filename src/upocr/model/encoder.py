"""SwinV2 encoder: patch embedding, four stages with patch merging, a LayerNorm on each stage output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from upocr.model.config import UPOCRConfig
from upocr.model.swinv2 import PatchMerging, swin_stages


class PatchEmbed(nn.Module):
    """4x4 non-overlapping patches -> `dim` channels, then LayerNorm."""

    def __init__(self, dim: int, patch: int = 4) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = images.shape[-2:]
        images = F.pad(images, (0, (-w) % self.patch, 0, (-h) % self.patch))
        x = self.proj(images)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EncoderStage(nn.Module):
    """Blocks at one resolution, then (except the last stage) PatchMerging to the next."""

    def __init__(self, *, blocks: nn.ModuleList, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample


class SwinV2Backbone(nn.Module):
    """Returns the four stage outputs (strides 4, 8, 16, 32) as normalised NCHW maps."""

    def __init__(self, config: UPOCRConfig) -> None:
        super().__init__()
        dims = [config.embed_dim * 2**i for i in range(4)]
        self.patch_embed = PatchEmbed(config.embed_dim)
        stages = swin_stages(
            dims=dims,
            depths=config.encoder_depths,
            heads=config.encoder_heads,
            window=config.encoder_window,
            pretrained_window=config.encoder_pretrained_window,
            drop_path_rate=config.encoder_drop_path,
            mlp_ratio=config.mlp_ratio,
            cpb_hidden=config.cpb_hidden,
        )
        self.layers = nn.ModuleList(
            EncoderStage(blocks=blocks, downsample=PatchMerging(dims[i]) if i < 3 else None) for i, blocks in enumerate(stages)
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x, h, w = self.patch_embed(images)
        features = []
        for i, layer in enumerate(self.layers):
            for block in layer.blocks:
                x = block(x, h, w)
            out = getattr(self, f"norm{i}")(x)
            features.append(out.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous())
            if layer.downsample is not None:
                x = layer.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return features


class SwinV2Encoder(nn.Module):
    """Wrapper keeping the original key prefix `encoder.backbone.*`."""

    def __init__(self, config: UPOCRConfig) -> None:
        super().__init__()
        self.backbone = SwinV2Backbone(config)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(images)
