"""Checkpoints of the original UPOCR (and bare state dicts) -> our network's state dict and config.

timm's `checkpoint_filter_fn` pattern: the loader reads any file generically (`upocr.weights`), then
`checkpoint_filter_fn` maps its tensors onto this network: keys the original keeps for training only
(the VGG16 loss network) are dropped, and the position buffers every attention block derives from its
window size are checked against the config (a mismatch means a wrong config) and dropped. The original's
key names are already ours, so nothing is renamed. Files without a config get one from the original's
pickled args, or from the tensor shapes.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from upocr.model.config import UPOCRConfig
from upocr.model.swinv2 import relative_coords_table, relative_position_index
from upocr.model.upocr import UPOCR
from upocr.weights import CheckpointError, StoredWeights, short_reason

# Keys that the original keeps but we derive (buffers) or don't need at inference (the loss network).
DERIVED_KEY = re.compile(r"\.attn\.(relative_coords_table|relative_position_index)$")
DROPPED_PREFIXES = ("vgg16.",)
PATCH_EMBED_KEY = "encoder.backbone.patch_embed.proj.weight"
# Stages of the encoder and the decoder: (config field, key prefix, number of stages).
BLOCK_STAGES = (("encoder_depths", "encoder.backbone", 4), ("decoder_depths", "decoder", 5))


def stored_config(stored: StoredWeights) -> UPOCRConfig:
    """The architecture of a file: its config, else the original's args, else inferred from the shapes;
    checked against the tensors' widths and depths before anything is built from it."""
    if stored.config is not None:
        try:
            config = UPOCRConfig.from_dict(stored.config.data)
        except (ValueError, TypeError) as error:
            raise stored.config.error(short_reason(error)) from None
    elif stored.original_args is not None:
        config = config_from_original_args(stored.original_args, stored.path)
    else:
        config = config_from_state_dict(stored.state, stored.path)
    check_config_matches_shapes(stored.state, config, stored.path)
    return config


def config_from_original_args(args: argparse.Namespace, path: Path) -> UPOCRConfig:
    try:
        return UPOCRConfig.from_original_args(args)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: invalid model config in the checkpoint's args ({short_reason(error)})") from None


def checkpoint_filter_fn(state: Mapping[str, torch.Tensor], config: UPOCRConfig, path: Path) -> dict[str, torch.Tensor]:
    """Drop training-only keys; check stored derived buffers against the config, then drop them too."""
    kept = {}
    for key, value in state.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        if DERIVED_KEY.search(key):
            # Shapes first: a config claiming a huge window must not get its buffers computed.
            if derived_buffer_shape(key, config) != tuple(value.shape):
                raise CheckpointError(f"{path}: {key} {list(value.shape)} does not match the window sizes of its config ({config})")
            if not torch.allclose(_derived_buffer(key, config).to(value.dtype), value, atol=1e-5):
                raise CheckpointError(f"{path}: {key} does not match the window sizes of its config ({config})")
            continue
        kept[key] = value
    if not kept:
        raise CheckpointError(f"{path}: holds no model weights")
    return kept


def _block_counts(state: Mapping[str, Any], prefix: str, stages: int) -> list[int]:
    """Blocks per stage that the state dict holds weights for (keys `<prefix>.layers.<i>.blocks.<j>.…`)."""
    pattern = re.compile(rf"{re.escape(prefix)}\.layers\.(\d+)\.blocks\.(\d+)\.")
    blocks: list[set[int]] = [set() for _ in range(stages)]
    for key in state:
        found = pattern.match(key)
        if found and int(found.group(1)) < stages:
            blocks[int(found.group(1))].add(int(found.group(2)))
    return [len(stage) for stage in blocks]


def check_config_matches_shapes(state: Mapping[str, Any], config: UPOCRConfig, path: Path) -> None:
    """Check the config's width and depths against the tensors before anything is built from it: a
    small file whose config claims embed_dim 16384 or a depth of 10**6 would otherwise allocate gigabytes
    (or build a million modules) before the key check could refuse it."""
    patch = state.get(PATCH_EMBED_KEY)
    if isinstance(patch, torch.Tensor) and patch.ndim and patch.shape[0] != config.embed_dim:
        raise CheckpointError(f"{path}: config says embed_dim {config.embed_dim} but {PATCH_EMBED_KEY} is {list(patch.shape)}")
    for field, prefix, stages in BLOCK_STAGES:
        claimed, held = list(getattr(config, field)), _block_counts(state, prefix, stages)
        if claimed != held:
            raise CheckpointError(f"{path}: config says {field} {claimed} but the file holds blocks for {held}")


def derived_buffer_shape(key: str, config: UPOCRConfig) -> tuple[int, ...]:
    window = config.encoder_window if key.startswith("encoder.") else config.decoder_window
    if key.endswith("relative_position_index"):
        return (window * window, window * window)
    return (1, 2 * window - 1, 2 * window - 1, 2)


def derived_buffer_bytes(config: UPOCRConfig) -> int:
    """Bytes of the position buffers every attention block derives from its window size (int64 index,
    float32 table), computed from the config alone."""
    total = 0
    for field, prefix, _ in BLOCK_STAGES:
        blocks = sum(getattr(config, field))
        for name, item_size in (("relative_position_index", 8), ("relative_coords_table", 4)):
            total += blocks * item_size * math.prod(derived_buffer_shape(f"{prefix}.x.attn.{name}", config))
    return total


def _derived_buffer(key: str, config: UPOCRConfig) -> torch.Tensor:
    encoder = key.startswith("encoder.")
    window = config.encoder_window if encoder else config.decoder_window
    if key.endswith("relative_position_index"):
        return relative_position_index(window)
    pretrained = config.encoder_pretrained_window if encoder else config.decoder_pretrained_window
    return relative_coords_table(window, pretrained)


def config_from_state_dict(state: Mapping[str, torch.Tensor], path: str | Path = "<state dict>") -> UPOCRConfig:
    """Infer the architecture from tensor shapes (for bare state dicts that carry no config)."""

    def depth_and_heads(prefix: str, stages: int) -> tuple[list[int], list[int]]:
        heads = []
        for i in range(stages):
            scale = state.get(f"{prefix}.layers.{i}.blocks.0.attn.logit_scale")
            heads.append(int(scale.shape[0]) if scale is not None else 1)
        return _block_counts(state, prefix, stages), heads

    def windows(prefix: str, default: int) -> tuple[int, int]:
        """(window, pretrained window) read off the stored derived buffers, when the file has them."""
        table = state.get(f"{prefix}.layers.0.blocks.0.attn.relative_coords_table")
        if table is None:
            return default, default
        window = (table.shape[1] + 1) // 2
        # The table's largest entry is log2((window-1)/(pretrained-1)*8 + 1)/3: invert it.
        largest = float(table.max())
        pretrained = round((window - 1) * 8 / (2 ** (3 * largest) - 1) + 1) if window > 1 else window
        return window, pretrained

    try:
        embed_dim = int(state[PATCH_EMBED_KEY].shape[0])
        enc_depths, enc_heads = depth_and_heads("encoder.backbone", 4)
        dec_depths, dec_heads = depth_and_heads("decoder", 5)
        cpb_hidden = int(state["encoder.backbone.layers.0.blocks.0.attn.cpb_mlp.0.weight"].shape[0])
        num_tasks = int(state["task_prompt.task_embedding.weight"].shape[0])
    except KeyError as error:
        raise CheckpointError(f"{path}: not an UPOCR state dict (missing {error.args[0]})") from None
    image_skip = any(k.startswith(UPOCR.NEUTRAL_ADDITIONS) for k in state)
    paper = UPOCRConfig.preset("paper")
    enc_window, enc_pretrained = windows("encoder.backbone", paper.encoder_window)
    dec_window, dec_pretrained = windows("decoder", paper.decoder_window)
    try:
        return UPOCRConfig(
            embed_dim=embed_dim,
            encoder_depths=enc_depths,
            encoder_heads=enc_heads,
            encoder_window=enc_window,
            encoder_pretrained_window=enc_pretrained,
            decoder_depths=dec_depths,
            decoder_heads=dec_heads,
            decoder_window=dec_window,
            decoder_pretrained_window=dec_pretrained,
            cpb_hidden=cpb_hidden,
            num_tasks=num_tasks,
            # Fusion weights show image_skip; removal_residual leaves no trace in the weights, and every
            # model of ours with the one has the other (files with a config say so explicitly).
            image_skip=image_skip,
            removal_residual=image_skip,
        )
    except ValueError as error:
        raise CheckpointError(f"{path}: cannot infer the architecture ({error})") from None
