"""Reading and writing model weights.

`load_model` accepts, and tells apart:
- our format: a directory with `model.safetensors` + `config.json` (`save_pretrained`), or a lone
  `.safetensors` file whose metadata carries the config;
- an original UPOCR checkpoint: `{'model': state_dict, 'args': argparse.Namespace, ...}` (the architecture
  is read from `args`; `vgg16.*` training-only keys are dropped);
- a training checkpoint of ours: `{'model': state_dict, 'config': dict, ...}`;
- a bare state dict (the architecture is inferred from the tensor shapes).

Pickles are opened with `torch.load(weights_only=True)` and an allow-list of exactly one extra class
(`argparse.Namespace`, which the original pickles); anything else is refused, never executed.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from upocr.model.config import UPOCRConfig
from upocr.model.swinv2 import relative_coords_table, relative_position_index
from upocr.model.upocr import UPOCR
from upocr.utils import atomic_output

# Classes a checkpoint pickle may construct beyond tensors and plain containers.
ALLOWED_GLOBALS = [argparse.Namespace]
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Weights bundled inside the package: what `load_model()` uses when no path is given.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
# Keys that the original keeps but we derive (buffers) or don't need at inference (the loss network).
DERIVED_KEY = re.compile(r"\.attn\.(relative_coords_table|relative_position_index)$")
DROPPED_PREFIXES = ("vgg16.",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        message = str(error)
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
        if found:
            raise CheckpointError(
                f"{path}: refuses to unpickle {found.group(1)} (not in the allow-list); "
                "only tensors, plain containers and argparse.Namespace are loaded"
            ) from None
        if "weights only" in message.lower() or "weights_only" in message:
            raise CheckpointError(f"{path}: the pickle asks for objects outside the allow-list; refused") from None
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a PyTorch file: {_short(error)})") from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` block of a safetensors file (header only; no tensors are read)."""
    with open(path, "rb") as handle:  # header: 8-byte little-endian length + JSON
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    return header.get("__metadata__") or {}


def training_record(path: str | Path | None = None) -> dict[str, Any] | None:
    """How a saved model was trained (`save_pretrained(..., training=...)`), None when not recorded.

    path: a weights directory or .safetensors file; None -> the bundled default weights."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if path.is_dir():
        path = path / WEIGHTS_FILE
    try:
        record = safetensors_metadata(path).get("upocr_training")
        return json.loads(record) if record else None
    except (OSError, ValueError):
        return None


def training_stages(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A training record and the records of the weights it continued (`init_record`, and so on down),
    newest first: one entry per training stage."""
    stages: list[dict[str, Any]] = []
    while isinstance(record, dict) and len(stages) < 64:  # a chain of stages, never a cycle
        stages.append(record)
        record = record.get("init_record")
    return stages


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], UPOCRConfig | None]:
    try:
        state = load_file(path, device="cpu")
        metadata = safetensors_metadata(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_short(error)})") from None
    config = UPOCRConfig.from_dict(json.loads(metadata["upocr_config"])) if "upocr_config" in metadata else None
    return state, config


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], UPOCRConfig]:
    """Any supported checkpoint -> (state dict without derived/training-only keys, config)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    config: UPOCRConfig | None = None
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{path}: directory has no {WEIGHTS_FILE} (write one with model.save_pretrained)")
        state, config = _safetensors_load(weights)
        if (path / CONFIG_FILE).is_file():
            try:
                config = UPOCRConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
            except (ValueError, TypeError) as error:
                raise CheckpointError(f"{path / CONFIG_FILE}: invalid model config ({_short(error)})") from None
    elif path.suffix == ".safetensors":
        state, config = _safetensors_load(path)
    else:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: file is empty")
        obj = _torch_load(path)
        state, config = _unwrap(obj, path)
    state = {key.removeprefix("module."): value for key, value in state.items()}  # saved from a DDP wrapper
    if config is None:
        config = config_from_state_dict(state, path)
    return _clean_state_dict(state, config, path), config


def _unwrap(obj: Any, path: Path) -> tuple[Mapping[str, Any], UPOCRConfig | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors or a checkpoint dict, found {type(obj).__name__}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        config = None
        # Our training checkpoints keep the model's config under "model_config" ("config" is the run's).
        stored = obj.get("model_config", obj.get("config"))
        if isinstance(stored, Mapping):
            try:
                config = UPOCRConfig.from_dict(dict(stored))
            except (ValueError, TypeError) as error:
                raise CheckpointError(f"{path}: invalid model config ({_short(error)})") from None
        elif isinstance(obj.get("args"), argparse.Namespace):
            config = UPOCRConfig.from_original_args(obj["args"])
        return obj["model"], config
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return obj["state_dict"], None
    return obj, None


def _clean_state_dict(state: Mapping[str, Any], config: UPOCRConfig, path: Path) -> dict[str, torch.Tensor]:
    """Drop training-only keys; check stored derived buffers against the config, then drop them too."""
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if key.startswith(DROPPED_PREFIXES):
            continue
        if DERIVED_KEY.search(key):
            expected = _derived_buffer(key, config)
            if expected.shape != value.shape or not torch.allclose(expected.to(value.dtype), value, atol=1e-5):
                raise CheckpointError(f"{path}: {key} does not match the window sizes of its config ({config})")
            continue
        cleaned[key] = value
    if not cleaned:
        raise CheckpointError(f"{path}: holds no model weights")
    return cleaned


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
        depths, heads = [], []
        for i in range(stages):
            blocks = {int(m.group(1)) for k in state if (m := re.match(rf"{prefix}\.layers\.{i}\.blocks\.(\d+)\.", k))}
            depths.append(len(blocks))
            scale = state.get(f"{prefix}.layers.{i}.blocks.0.attn.logit_scale")
            heads.append(int(scale.shape[0]) if scale is not None else 1)
        return depths, heads

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
        embed_dim = int(state["encoder.backbone.patch_embed.proj.weight"].shape[0])
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


def _check_keys(model: UPOCR, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(shape)}" for k, shape in expected.items() if k in state and state[k].shape != shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"{path}: does not fit the model config: {'; '.join(problems)}")


def load_into_extended_model(model: UPOCR, path: str | Path) -> list[str]:
    """Load a checkpoint into `model`, whose architecture may add modules that start neutral
    (`UPOCR.NEUTRAL_ADDITIONS`, e.g. the image-skip fusions) to the checkpoint's. Every other key must
    be present and fit. Returns the added modules' names; CheckpointError otherwise."""
    path = Path(path)
    state, _ = read_checkpoint(path)
    expected = model.state_dict()
    added = {k for k in set(expected) - set(state) if k.startswith(UPOCR.NEUTRAL_ADDITIONS)}
    try:
        _check_keys(model, {**state, **{k: expected[k] for k in added}}, path)
    except CheckpointError as error:
        raise CheckpointError(f"{error} (only {', '.join(UPOCR.NEUTRAL_ADDITIONS)} may be new)") from None
    model.load_state_dict(state, strict=False)
    return sorted({k.rsplit(".", 3)[0] for k in added})


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here; use --device cpu")
    return device


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> UPOCR:
    """Load any supported checkpoint (None: the bundled default weights) as an eval-mode UPOCR."""
    if path is None:
        path = DEFAULT_WEIGHTS
        if not (path / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{path}: the bundled default weights are missing (reinstall upocr or pass --weights)")
    path = Path(path)
    device = resolve_device(device)
    state, config = read_checkpoint(path)
    model = UPOCR(config)
    _check_keys(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def save_pretrained(
    model: UPOCR,
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors` (config also in its metadata) and `config.json`, each atomically.

    `dtype=torch.float16` halves the file (used for the bundled weights); loading casts back to float32.
    `training`: a JSON-able record of how the weights were trained (read back by `training_record`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_json = model.config.to_json()
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {"upocr_config": config_json, "format": "upocr"}
    if training is not None:
        metadata["upocr_training"] = json.dumps(training, sort_keys=True)
    with atomic_output(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    with atomic_output(directory / CONFIG_FILE) as tmp:
        tmp.write_text(config_json + "\n")
    return directory
