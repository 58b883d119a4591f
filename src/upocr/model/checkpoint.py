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
import math
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

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
PATCH_EMBED_KEY = "encoder.backbone.patch_embed.proj.weight"
# Stages of the encoder and the decoder: (config field, key prefix, number of stages).
BLOCK_STAGES = (("encoder_depths", "encoder.backbone", 4), ("decoder_depths", "decoder", 5))
# How torch.save files begin: a zip archive, or (legacy format) a pickled magic number within the first bytes.
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_TORCH_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# Derived position buffers (recomputed from the window sizes, never stored) may take this much beyond the
# weights before a config's window sizes are called implausible: paper's take 13 MB for 430 MB of weights.
BUFFER_ALLOWANCE_BYTES = 256 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _check_torch_file(path: Path) -> None:
    """Refuse files that torch.save did not write, before torch's unpickler gives a misleading reason."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(ZIP_MAGIC) or LEGACY_TORCH_MAGIC in head:
        return
    if head.startswith(b"\x80"):  # pickle protocol >= 2 without torch's magic number
        raise CheckpointError(f"{path}: a plain pickle, not a PyTorch checkpoint (write it with torch.save)")
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save file nor safetensors)")


def _torch_load(path: Path) -> Any:
    _check_torch_file(path)
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS), warnings.catch_warnings():
            # torch warns (2 lines) about pickle protocols it did not write; the load result says enough.
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        message = str(error)
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
        if found:
            raise CheckpointError(
                f"{path}: refuses to unpickle {found.group(1)} (not in the allow-list); "
                "only tensors, plain containers and argparse.Namespace are loaded"
            ) from None
        operand = re.search(r"Unsupported operand (\d+)", message)
        if operand:  # e.g. 149 (FRAME): torch.save(..., pickle_protocol=4)
            raise CheckpointError(
                f"{path}: pickled with an instruction the safe loader cannot read (opcode {operand.group(1)}); "
                "re-save it with torch.save's default pickle protocol"
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


def _parse_config(data: Any, path: Path, source: str) -> UPOCRConfig:
    """A model config read from a checkpoint -> UPOCRConfig, or CheckpointError naming the file."""
    try:
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        return UPOCRConfig.from_dict(dict(data))
    except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: invalid model config in {source} ({_short(error)})") from None


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], UPOCRConfig | None]:
    try:
        state = load_file(path, device="cpu")
        metadata = safetensors_metadata(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_short(error)})") from None
    if "upocr_config" not in metadata:
        return state, None
    return state, _parse_config(metadata["upocr_config"], path, "the safetensors metadata (upocr_config)")


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
            config = _parse_config((path / CONFIG_FILE).read_bytes(), path / CONFIG_FILE, CONFIG_FILE)
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
    _check_config_matches_shapes(state, config, path)
    return _clean_state_dict(state, config, path), config


def _unwrap(obj: Any, path: Path) -> tuple[Mapping[str, Any], UPOCRConfig | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors or a checkpoint dict, found {type(obj).__name__}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        config = None
        # Our training checkpoints keep the model's config under "model_config" ("config" is the run's).
        stored = obj.get("model_config", obj.get("config"))
        if isinstance(stored, Mapping):
            config = _parse_config(stored, path, "the checkpoint")
        elif isinstance(obj.get("args"), argparse.Namespace):
            try:
                config = UPOCRConfig.from_original_args(obj["args"])
            except (ValueError, TypeError) as error:
                raise CheckpointError(f"{path}: invalid model config in the checkpoint's args ({_short(error)})") from None
        return obj["model"], config
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return obj["state_dict"], None
    return obj, None


def _block_counts(state: Mapping[str, Any], prefix: str, stages: int) -> list[int]:
    """Blocks per stage that the state dict holds weights for (keys `<prefix>.layers.<i>.blocks.<j>.…`)."""
    pattern = re.compile(rf"{re.escape(prefix)}\.layers\.(\d+)\.blocks\.(\d+)\.")
    blocks: list[set[int]] = [set() for _ in range(stages)]
    for key in state:
        found = pattern.match(key)
        if found and int(found.group(1)) < stages:
            blocks[int(found.group(1))].add(int(found.group(2)))
    return [len(stage) for stage in blocks]


def _check_config_matches_shapes(state: Mapping[str, Any], config: UPOCRConfig, path: Path) -> None:
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


def _derived_buffer_shape(key: str, config: UPOCRConfig) -> tuple[int, ...]:
    window = config.encoder_window if key.startswith("encoder.") else config.decoder_window
    if key.endswith("relative_position_index"):
        return (window * window, window * window)
    return (1, 2 * window - 1, 2 * window - 1, 2)


def _clean_state_dict(state: Mapping[str, Any], config: UPOCRConfig, path: Path) -> dict[str, torch.Tensor]:
    """Drop training-only keys; check stored derived buffers against the config, then drop them too.
    Refuse NaN/Inf weights: they load silently and give blank results."""
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if key.startswith(DROPPED_PREFIXES):
            continue
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {key} has NaN/Inf values")
        if DERIVED_KEY.search(key):
            # Shapes first: a config claiming a huge window must not get its buffers computed.
            if _derived_buffer_shape(key, config) != tuple(value.shape):
                raise CheckpointError(f"{path}: {key} {list(value.shape)} does not match the window sizes of its config ({config})")
            expected = _derived_buffer(key, config)
            if not torch.allclose(expected.to(value.dtype), value, atol=1e-5):
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
    return _build_checked(config, state, path).to(device).eval()


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _ParametersOnMeta(TorchFunctionMode):
    """Inside: the tensor factories that create parameters (`torch.empty` in nn.Linear etc., `torch.zeros`,
    `torch.full`) make shape-only meta tensors. Unlike `with torch.device("meta")`, everything else stays
    real, so construction code that reads values (`torch.linspace(...).tolist()` for drop-path rates) runs."""

    FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.full)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _derived_buffer_bytes(config: UPOCRConfig) -> int:
    """Bytes of the position buffers every attention block derives from its window size (int64 index,
    float32 table), computed from the config alone."""
    total = 0
    for field, prefix, _ in BLOCK_STAGES:
        blocks = sum(getattr(config, field))
        for name, item_size in (("relative_position_index", 8), ("relative_coords_table", 4)):
            total += blocks * item_size * math.prod(_derived_buffer_shape(f"{prefix}.x.attn.{name}", config))
    return total


def _build_checked(config: UPOCRConfig, state: Mapping[str, torch.Tensor], path: Path) -> UPOCR:
    """The config's network holding the file's tensors. Nothing is allocated before the config is checked
    against the file: the window sizes against a memory allowance, then every parameter's shape on a
    shape-only (meta) build, whose parameters are then replaced by the file's tensors (no random init)."""
    buffers, weights = _derived_buffer_bytes(config), _tensor_bytes(state.values())
    if buffers > weights + BUFFER_ALLOWANCE_BYTES:
        raise CheckpointError(
            f"{path}: config's window sizes (encoder {config.encoder_window}, decoder {config.decoder_window}) "
            f"need {buffers / 2**30:.1f} GiB of position buffers for {weights / 2**20:.0f} MiB of weights"
        )
    try:
        with _ParametersOnMeta():
            skeleton = UPOCR(config)
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: invalid model config ({_short(error)})") from None
    _check_keys(skeleton, state, path)
    expected = skeleton.state_dict()
    try:
        # assign=True keeps the given tensors' dtype: cast (fp16 files) to the network's own.
        skeleton.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    except (MemoryError, RuntimeError) as error:  # e.g. "DefaultCPUAllocator: can't allocate memory"
        raise CheckpointError(f"{path}: cannot build the model its config describes ({_short(error)})") from None
    return skeleton


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
