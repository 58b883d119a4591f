"""Weights files, read and written without building (or importing) any network.

Formats told apart by `read_weights`:
- ours: a directory with `model.safetensors` + `config.json` (`save_weights`), or a lone `.safetensors`
  file whose metadata carries the config (`upocr_config`), the inference defaults (`upocr_inference`)
  and the training record (`upocr_training`);
- a training checkpoint of ours: `{'model': state_dict, 'model_config': dict, 'inference': dict, ...}`;
- an original UPOCR checkpoint: `{'model': state_dict, 'args': argparse.Namespace, ...}`;
- a bare state dict (or `{'state_dict': ...}`).

Pickles are opened with `torch.load(weights_only=True)` and an allow-list of exactly one extra class
(`argparse.Namespace`, which the original pickles); anything else is refused, never executed. Every
error is a CheckpointError: one line that starts with the file's path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from upocr.utils import atomic_output, special_file_kind
from upocr.weights.defaults import InferenceDefaults, split_legacy_fields

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Weights bundled inside the package (this folder): what `load_model()` uses when no path is given.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent
# Keys of the safetensors metadata.
CONFIG_KEY, INFERENCE_KEY, TRAINING_KEY = "upocr_config", "upocr_inference", "upocr_training"
# Classes a checkpoint pickle may construct beyond tensors and plain containers.
ALLOWED_GLOBALS = [argparse.Namespace]
# How torch.save files begin: a zip archive, or (legacy format) a pickled magic number within the first bytes.
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_TORCH_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class StoredConfig:
    """An architecture config as a file stores it (a JSON object), and where it was found, so that a
    network that cannot be built from it is reported against the right file."""

    data: dict[str, Any]
    path: Path
    source: str  # "config.json", "the safetensors metadata (upocr_config)", "the checkpoint"

    def error(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: invalid model config in {self.source} ({problem})")


@dataclass(frozen=True)
class StoredWeights:
    """What a weights file holds. `state`: tensors by name ('module.' prefixes of DDP removed);
    `config`: None when the file stores none (bare state dicts, original checkpoints);
    `original_args`: the original UPOCR's pickled training arguments, which describe its network."""

    path: Path
    state: dict[str, torch.Tensor]
    config: StoredConfig | None
    inference: InferenceDefaults
    original_args: argparse.Namespace | None = None


def short_reason(error: BaseException) -> str:
    """The first line of an exception's message (library errors can run over many lines)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_weights(path: str | Path) -> StoredWeights:
    """Any supported weights file or folder -> StoredWeights; CheckpointError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    kind = special_file_kind(path.stat().st_mode)
    if kind is not None:  # a FIFO would block the reader forever, /dev/zero never end
        raise CheckpointError(f"{path}: not a regular file ({kind})")
    if path.is_dir():
        stored = _read_folder(path)
    elif path.suffix == ".safetensors":
        stored = _read_safetensors(path)
    else:
        stored = _read_torch_file(path)
    state = {}
    for key, value in stored.state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value  # saved from a DDP wrapper
    return StoredWeights(path, state, stored.config, stored.inference, stored.original_args)


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` block of a safetensors file (header only; no tensors are read)."""
    with open(path, "rb") as handle:  # header: 8-byte little-endian length + JSON
        length = int.from_bytes(handle.read(8), "little")
        # Any other file (a .pth zip, an .onnx) gives a nonsense length: refuse it before reading that much.
        if not 2 <= length <= os.fstat(handle.fileno()).st_size - 8:
            raise ValueError(f"{path}: not a safetensors file")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file")
    return header.get("__metadata__") or {}


def bundled_inference_defaults() -> InferenceDefaults:
    """The bundled weights' inference defaults, from the file's header alone (no tensors are read): for
    --help texts and pages that name the default pipeline before any model is loaded."""
    path = DEFAULT_WEIGHTS / WEIGHTS_FILE
    metadata = safetensors_metadata(path)
    legacy = _stored_config(metadata[CONFIG_KEY], path, CONFIG_KEY)[1] if CONFIG_KEY in metadata else {}
    return _inference(metadata.get(INFERENCE_KEY), legacy, path, INFERENCE_KEY)


def _read_folder(path: Path) -> StoredWeights:
    weights = path / WEIGHTS_FILE
    kind = special_file_kind(weights.stat().st_mode) if weights.exists() else None
    if kind is not None:
        raise CheckpointError(f"{weights}: not a regular file ({kind})")
    if not weights.is_file():
        raise CheckpointError(f"{path}: directory has no {WEIGHTS_FILE} (write one with model.save_pretrained)")
    stored = _read_safetensors(weights)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        return stored
    config, legacy = _stored_config(config_file.read_bytes(), config_file, CONFIG_FILE)
    metadata = safetensors_metadata(weights)
    inference = _inference(metadata.get(INFERENCE_KEY), legacy, weights, f"the safetensors metadata ({INFERENCE_KEY})")
    return StoredWeights(path, stored.state, config, inference)


def _read_safetensors(path: Path) -> StoredWeights:
    try:
        state = load_file(path, device="cpu")
        metadata = safetensors_metadata(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({short_reason(error)})") from None
    config, legacy = None, {}
    if CONFIG_KEY in metadata:
        config, legacy = _stored_config(metadata[CONFIG_KEY], path, f"the safetensors metadata ({CONFIG_KEY})")
    inference = _inference(metadata.get(INFERENCE_KEY), legacy, path, f"the safetensors metadata ({INFERENCE_KEY})")
    return StoredWeights(path, state, config, inference)


def _read_torch_file(path: Path) -> StoredWeights:
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    obj = torch_load_safely(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors or a checkpoint dict, found {type(obj).__name__}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        config, legacy = None, {}
        # Our training checkpoints keep the model's config under "model_config" ("config" is the run's).
        stored = obj.get("model_config", obj.get("config"))
        if isinstance(stored, Mapping):
            config, legacy = _stored_config(stored, path, "the checkpoint")
        args = obj.get("args") if config is None and isinstance(obj.get("args"), argparse.Namespace) else None
        inference = _inference(obj.get("inference"), legacy, path, "the checkpoint (inference)")
        return StoredWeights(path, dict(obj["model"]), config, inference, args)
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return StoredWeights(path, dict(obj["state_dict"]), None, InferenceDefaults())
    return StoredWeights(path, dict(obj), None, InferenceDefaults())


def _json_object(data: Any) -> dict[str, Any]:
    if isinstance(data, (str, bytes)):
        data = json.loads(data)  # JSONDecodeError is a ValueError
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    return dict(data)


def _stored_config(data: Any, path: Path, source: str) -> tuple[StoredConfig, dict[str, Any]]:
    """A stored architecture config -> (it, without the inference defaults older files kept among its fields;
    those fields)."""
    config = StoredConfig({}, path, source)
    try:
        architecture, legacy = split_legacy_fields(_json_object(data))
    except ValueError as error:
        raise config.error(short_reason(error)) from None
    return StoredConfig(architecture, path, source), legacy


def _inference(data: Any, legacy: Mapping[str, Any], path: Path, source: str) -> InferenceDefaults:
    """The stored inference defaults; else those an older file kept in its config; else the original's."""
    try:
        if data is not None:
            return InferenceDefaults.from_dict(_json_object(data))
        return InferenceDefaults.from_dict(legacy)
    except (ValueError, TypeError) as error:
        where = source if data is not None else "the model config"
        raise CheckpointError(f"{path}: invalid inference defaults in {where} ({short_reason(error)})") from None


def _check_torch_file(path: Path) -> None:
    """Refuse files that torch.save did not write, before torch's unpickler gives a misleading reason."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(ZIP_MAGIC) or LEGACY_TORCH_MAGIC in head:
        return
    if head.startswith(b"\x80"):  # pickle protocol >= 2 without torch's magic number
        raise CheckpointError(f"{path}: a plain pickle, not a PyTorch checkpoint (write it with torch.save)")
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save file nor safetensors)")


def torch_load_safely(path: Path) -> Any:
    """torch.load with weights_only=True and the allow-list; every failure a one-line CheckpointError."""
    _check_torch_file(path)
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS), warnings.catch_warnings():
            # torch warns (2 lines) about pickle protocols it did not write; the load result says enough.
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path}: {_load_failure(error)}") from None


def _load_failure(error: Exception) -> str:
    message = str(error)
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
    if found:
        return (f"refuses to unpickle {found.group(1)} (not in the allow-list); "
                "only tensors, plain containers and argparse.Namespace are loaded")  # fmt: skip
    operand = re.search(r"Unsupported operand (\d+)", message)
    if operand:  # e.g. 149 (FRAME): torch.save(..., pickle_protocol=4)
        return (f"pickled with an instruction the safe loader cannot read (opcode {operand.group(1)}); "
                "re-save it with torch.save's default pickle protocol")  # fmt: skip
    if "weights only" in message.lower() or "weights_only" in message:
        return "the pickle asks for objects outside the allow-list; refused"
    return f"not a readable checkpoint (truncated or not a PyTorch file: {short_reason(error)})"


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def save_weights(
    directory: str | Path,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    inference: InferenceDefaults,
    *,
    dtype: torch.dtype | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors` (config, inference defaults and training record in its metadata) and
    `config.json`, each atomically. `dtype=torch.float16` halves the file; loading casts back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(dict(config), indent=2, sort_keys=True)
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in state.items()}
    metadata = {CONFIG_KEY: config_json, INFERENCE_KEY: inference.to_json(), "format": "upocr"}
    if training is not None:
        metadata[TRAINING_KEY] = json.dumps(training, sort_keys=True)
    with atomic_output(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    with atomic_output(directory / CONFIG_FILE) as tmp:
        tmp.write_text(config_json + "\n")
    return directory
