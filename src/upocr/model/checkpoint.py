"""Loading weights into the network and saving them from it.

`upocr.weights` reads every supported file without knowing the network; here its tensors meet the
network: the config is settled (`upocr.model.convert.stored_config`), the original's keys are filtered
(`checkpoint_filter_fn`), the tensors checked, and the network is built holding them. The inference
defaults stored with the weights (`upocr.weights.InferenceDefaults`) travel as `model.inference`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from upocr.model.config import UPOCRConfig
from upocr.model.convert import checkpoint_filter_fn, derived_buffer_bytes, stored_config
from upocr.model.upocr import UPOCR
from upocr.weights import (
    DEFAULT_WEIGHTS,
    WEIGHTS_FILE,
    CheckpointError,
    InferenceDefaults,
    check_finite,
    check_state_fits,
    read_weights,
    short_reason,
)

# Derived position buffers (recomputed from the window sizes, never stored) may take this much beyond the
# weights before a config's window sizes are called implausible: paper's take 13 MB for 430 MB of weights.
BUFFER_ALLOWANCE_BYTES = 256 * 2**20


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], UPOCRConfig]:
    """Any supported checkpoint -> (state dict without derived/training-only keys, config)."""
    state, config, _ = _read_for_network(Path(path))
    return state, config


def _read_for_network(path: Path) -> tuple[dict[str, torch.Tensor], UPOCRConfig, InferenceDefaults]:
    stored = read_weights(path)
    config = stored_config(stored)
    state = checkpoint_filter_fn(stored.state, config, path)
    check_finite(state, path)
    return state, config, stored.inference


def load_into_extended_model(model: UPOCR, path: str | Path) -> list[str]:
    """Load a checkpoint into `model`, whose architecture may add modules that start neutral
    (`UPOCR.NEUTRAL_ADDITIONS`, e.g. the image-skip fusions) to the checkpoint's. Every other key must
    be present and fit. Returns the added modules' names; CheckpointError otherwise."""
    path = Path(path)
    state, _ = read_checkpoint(path)
    expected = model.state_dict()
    added = {k for k in set(expected) - set(state) if k.startswith(UPOCR.NEUTRAL_ADDITIONS)}
    try:
        check_state_fits(_shapes(model), {**state, **{k: expected[k] for k in added}}, path)
    except CheckpointError as error:
        raise CheckpointError(f"{error} (only {', '.join(UPOCR.NEUTRAL_ADDITIONS)} may be new)") from None
    model.load_state_dict(state, strict=False)
    return sorted({k.rsplit(".", 3)[0] for k in added})


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from its name; "auto" is CUDA where available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here; use --device cpu")
    return device


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> UPOCR:
    """Load any supported checkpoint (None: the bundled default weights) as an eval-mode UPOCR whose
    `inference` holds the defaults stored with the weights."""
    if path is None:
        path = DEFAULT_WEIGHTS
        if not (path / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{path}: the bundled default weights are missing (reinstall upocr or pass --weights)")
    path = Path(path)
    device = resolve_device(device)
    state, config, inference = _read_for_network(path)
    model = _build_checked(config, state, path)
    model.inference = inference
    return model.to(device).eval()


def save_pretrained(model: UPOCR, directory: str | Path, **kwargs: Any) -> Path:
    """`model.save_pretrained(directory, dtype=..., training=...)`: see `UPOCR.save_pretrained`."""
    return model.save_pretrained(directory, **kwargs)


def _shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in model.state_dict().items()}


class _ParametersOnMeta(TorchFunctionMode):
    """Inside: the tensor factories that create parameters (`torch.empty` in nn.Linear etc., `torch.zeros`,
    `torch.full`) make shape-only meta tensors. Unlike `with torch.device("meta")`, everything else stays
    real, so construction code that reads values (`torch.linspace(...).tolist()` for drop-path rates) runs."""

    FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.full)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes its tensor by keyword
        if name.endswith("_") and not name.startswith("_") and isinstance(target, torch.Tensor) and target.is_meta:
            # In-place initialisation (normal_, zero_, ...) of a shape-only tensor: nothing to do, the file's
            # values replace it. Running it would route through a Python meta kernel whose first call imports
            # torch._dynamo: 1.5 s of every command's start-up.
            return target
        return func(*args, **kwargs)


def _build_checked(config: UPOCRConfig, state: dict[str, torch.Tensor], path: Path) -> UPOCR:
    """The config's network holding the file's tensors. Nothing is allocated before the config is checked
    against the file: the window sizes against a memory allowance, then every parameter's shape on a
    shape-only (meta) build, whose parameters are then replaced by the file's tensors (no random init)."""
    buffers = derived_buffer_bytes(config)
    weights = sum(t.numel() * t.element_size() for t in state.values())
    if buffers > weights + BUFFER_ALLOWANCE_BYTES:
        raise CheckpointError(
            f"{path}: config's window sizes (encoder {config.encoder_window}, decoder {config.decoder_window}) "
            f"need {buffers / 2**30:.1f} GiB of position buffers for {weights / 2**20:.0f} MiB of weights"
        )
    try:
        with _ParametersOnMeta():
            skeleton = UPOCR(config)
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: invalid model config ({short_reason(error)})") from None
    check_state_fits(_shapes(skeleton), state, path)
    expected = skeleton.state_dict()
    try:
        # assign=True keeps the given tensors' dtype: cast (fp16 files) to the network's own.
        skeleton.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    except (MemoryError, RuntimeError) as error:  # e.g. "DefaultCPUAllocator: can't allocate memory"
        raise CheckpointError(f"{path}: cannot build the model its config describes ({short_reason(error)})") from None
    return skeleton
