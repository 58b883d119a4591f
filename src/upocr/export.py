"""ONNX export of a UPOCR model and an ONNX Runtime backend for `upocr.Predictor`.

The exported graph takes `images` (B, 3, H, W) float32 in [0, 1] and `tasks` (B,) int64 task indices (one
per image, so one batch may mix tasks) and returns the model's three outputs `quarter`, `half` and `full`
(raw values, as `UPOCR.forward`). Batch, height and width are all dynamic (H and W multiples of 32, as for
the model): the SwinV2 window padding and shift masks are built from the map sizes with tensor operations
that the TorchScript-based exporter (`torch.onnx.export(dynamo=False)`) records symbolically. (The dynamo
exporter also traces them, but its symbolic-shape simplification did not finish in 8 minutes for the
4-block `tiny` config.) The export is checked against PyTorch at the export size and at a second,
non-square size. The model's config and its inference defaults (working size, segmentation threshold)
travel in the file's metadata, so a Predictor on the ONNX file knows its size and threshold.
`onnx`/`onnxruntime` are optional: `pip install 'upocr[onnx]'`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from upocr.model.config import UPOCRConfig
from upocr.weights import InferenceDefaults
from upocr.model.upocr import SIZE_MULTIPLE, UPOCR, check_input_size
from upocr.tasks import Task, task_indices, task_order
from upocr.utils import atomic_output, special_file_kind

INPUT_NAMES = ("images", "tasks")
OUTPUT_NAMES = ("quarter", "half", "full")
CONFIG_METADATA_KEY = "upocr_config"
INFERENCE_METADATA_KEY = "upocr_inference"
# The `tasks` input's meaning: the task names in index order (0 removal, 1 tampering, 2 segmentation).
TASKS_METADATA_KEY = "upocr_tasks"
# The exported model must agree with PyTorch to this (max abs difference of the raw outputs).
EXPORT_TOLERANCE = 1e-4
OPSET = 17
# Batch, height and width of every input and output may differ from the traced example.
DYNAMIC_AXES = {
    "images": {0: "batch", 2: "height", 3: "width"},
    "tasks": {0: "batch"},
    **{name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in OUTPUT_NAMES},
}
INSTALL_HINT = "pip install 'upocr[onnx]'"


class ExportError(RuntimeError):
    """An export that failed, or whose model disagrees with PyTorch; the message is one line."""


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float  # largest |ONNX - PyTorch| over every output of the check inputs
    checked_shapes: list[tuple[int, ...]]  # (B, 3, H, W) of each check batch


def require(module: str) -> Any:
    """Import an optional ONNX package or fail with one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the ONNX backend needs the {module} package: {INSTALL_HINT}") from None


class TaskIndexedModel(nn.Module):
    """`UPOCR.forward_indices` as the exported signature: (images, int64 task indices) -> 3 outputs."""

    def __init__(self, model: UPOCR) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tasks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.forward_indices(images, tasks))


def onnx_bytes(model: UPOCR, *, size: int | None = None) -> bytes:
    """The serialized ONNX model, traced at size x size (default: the config's input size; also the working
    size stored in its metadata), with dynamic batch, height and width. Raises ExportError (one line) when
    the exporter fails."""
    onnx = require("onnx")
    size = size or model.inference.input_size
    check_input_size(size, size)
    wrapper = TaskIndexedModel(model.float().cpu().eval()).eval()
    # Batch 2 with two tasks: a batch of one could let the tracer treat the batch size as a constant.
    example = (torch.rand(2, 3, size, size), torch.tensor([int(Task.TEXT_REMOVAL), int(Task.TEXT_SEGMENTATION)]))
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values: the fixed size, by design
            torch.onnx.export(
                wrapper, example, buffer, dynamo=False, opset_version=OPSET,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_axes=DYNAMIC_AXES,
            )
    except Exception as error:  # noqa: BLE001 - the exporter's errors span pages: keep the first line
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"ONNX export failed: {first_line}") from error
    proto = onnx.load_from_string(buffer.getvalue())
    inference = dataclasses.replace(model.inference, input_size=size)  # the size the file accepts
    onnx.helper.set_model_props(proto, {CONFIG_METADATA_KEY: model.config.to_json(), INFERENCE_METADATA_KEY: inference.to_json(),
                                        TASKS_METADATA_KEY: json.dumps(task_order())})
    return proto.SerializeToString()


def export_onnx(model: UPOCR, path: str | os.PathLike, *, size: int | None = None) -> ExportReport:
    """Export `model` to `path` (written atomically) and check it against PyTorch on random inputs.

    The check runs every task in one batch (3 images, a batch size the trace did not see), one image alone
    and one image of another, non-square size (the height and width are dynamic); it raises ExportError,
    leaving no file, when any output differs by more than EXPORT_TOLERANCE."""
    size = size or model.inference.input_size
    data = onnx_bytes(model, size=size)
    runner = OnnxRunner(data)
    other = (max(SIZE_MULTIPLE, size // 2 // SIZE_MULTIPLE * SIZE_MULTIPLE), size + SIZE_MULTIPLE)
    shapes = [(len(Task), 3, size, size), (1, 3, size, size), (1, 3, *other)]
    difference = max_difference(model, runner, shapes)
    path = Path(path)
    if difference > EXPORT_TOLERANCE:
        raise ExportError(f"{path}: the exported model differs from PyTorch by {difference:.2e} (more than "
                          f"{EXPORT_TOLERANCE:.0e}); nothing written")
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return ExportReport(path, difference, shapes)


def max_difference(model: UPOCR, runner: "OnnxRunner", shapes: Sequence[tuple[int, ...]], seed: int = 0) -> float:
    """Largest |ONNX - PyTorch| over all outputs for random images of `shapes`, tasks cycling through all."""
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in shapes:
        images = torch.rand(shape, generator=generator)
        tasks = [Task(i % len(Task)) for i in range(shape[0])]
        with torch.inference_mode():
            expected = model(images, tasks)
        for ours, theirs in zip(runner(images, tasks), expected):
            worst = max(worst, float((ours - theirs.float()).abs().max()))
    return worst


class OnnxRunner:
    """An exported UPOCR under ONNX Runtime, called like the model: `runner(images, tasks)` -> the three
    (B, 3, h, w) outputs as CPU tensors. `config` and `inference` (its export size and threshold) are the
    exported model's, from the file's metadata.

    source: a path to a `.onnx` file or its bytes. threads: ONNX Runtime's intra-op threads (default:
    torch's, so both backends use the same cores)."""

    def __init__(self, source: str | os.PathLike | bytes, *, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        ort = require("onnxruntime")
        self.name = "ONNX model" if isinstance(source, bytes) else str(source)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
        providers = ["CUDAExecutionProvider"] if torch.device(device).type == "cuda" else ["CPUExecutionProvider"]
        if providers[0] not in ort.get_available_providers():
            raise ValueError(f"onnxruntime here has no {providers[0]} (install onnxruntime-gpu for --device cuda)")
        try:
            self.session = ort.InferenceSession(source if isinstance(source, bytes) else os.fspath(source),
                                                options, providers=providers)
        except Exception as error:  # noqa: BLE001 - ORT raises its own classes; one line with the file
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"{self.name}: not a loadable ONNX model ({first_line})") from None
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if tuple(names[0]) != INPUT_NAMES or tuple(names[1]) != OUTPUT_NAMES:
            raise ValueError(f"{self.name}: not a UPOCR export (inputs {names[0]}, outputs {names[1]}); "
                             "make one with `upocr export-onnx`")
        metadata = self.session.get_modelmeta().custom_metadata_map
        size = self.session.get_inputs()[0].shape[2]
        self.config = self._metadata(metadata, CONFIG_METADATA_KEY, UPOCRConfig.from_dict, None)
        self.inference = self._metadata(metadata, INFERENCE_METADATA_KEY, InferenceDefaults.from_dict,
                                        InferenceDefaults(input_size=size) if isinstance(size, int) else InferenceDefaults())
        self._check_finite(source)

    def _metadata(self, metadata: dict[str, str], key: str, parse: Any, default: Any) -> Any:
        """`parse(json object)` of one metadata entry, `default` without it; ValueError naming the file."""
        if key not in metadata:
            return default
        try:
            data = json.loads(metadata[key])
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, found {type(data).__name__}")
            return parse(data)
        except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"{self.name}: invalid {key} metadata ({reason})") from None

    def _check_finite(self, source: str | os.PathLike | bytes) -> None:
        """Refuse weights with NaN or Inf values: they give blank results without any error (the torch
        path refuses them on loading). External-data tensors are not read."""
        onnx = require("onnx")
        from onnx import numpy_helper

        proto = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(os.fspath(source), load_external_data=False)
        for initializer in proto.graph.initializer:
            if initializer.data_location == onnx.TensorProto.EXTERNAL:
                continue
            values = numpy_helper.to_array(initializer)
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                raise ValueError(f"{self.name}: {initializer.name} has NaN/Inf values")

    def __call__(self, images: torch.Tensor, tasks: Sequence[Task | str | int] | Task | str | int | torch.Tensor) -> list[torch.Tensor]:
        fixed = tuple(self.session.get_inputs()[0].shape[2:])
        if all(isinstance(side, int) for side in fixed) and tuple(images.shape[-2:]) != fixed:  # an older export
            raise ValueError(f"{self.name} takes {fixed[0]}x{fixed[1]} images (its export size), got "
                             f"{images.shape[-2]}x{images.shape[-1]}; use size {fixed[0]}, or export it again")
        check_input_size(*images.shape[-2:])  # the graph itself would fail with a reshape error
        indices = task_indices(tasks, images.shape[0])
        feed = {"images": np.ascontiguousarray(images.detach().float().cpu().numpy()), "tasks": indices.numpy()}
        return [torch.from_numpy(output) for output in self.session.run(list(OUTPUT_NAMES), feed)]


def onnx_runner(
    model: Any, weights: str | os.PathLike | None, *, device: torch.device, precision: str, size: int | None = None
) -> OnnxRunner:
    """The Predictor's `backend="onnxruntime"`: a `.onnx` file at `weights`, or else the torch `model` (or
    the checkpoint at `weights`, None: the bundled default) exported in memory (traced at `size`, None: its own;
    any size runs)."""
    if precision != "fp32":
        raise ValueError(f"backend onnxruntime runs fp32 only, got precision {precision}")
    if isinstance(model, OnnxRunner):
        return model
    if model is None and weights is not None and Path(weights).suffix.lower() == ".onnx":
        if not Path(weights).exists():
            raise FileNotFoundError(f"{weights}: no such ONNX file")
        kind = special_file_kind(Path(weights).stat().st_mode)
        if kind is not None or Path(weights).is_dir():  # ONNX Runtime would block on a FIFO
            raise ValueError(f"{weights}: not a regular file ({kind or 'a folder'})")
        runner = OnnxRunner(weights, device=device)
        fixed = runner.session.get_inputs()[0].shape[-1]
        if isinstance(fixed, int) and size is not None and size != fixed:  # exported before sizes were dynamic
            raise ValueError(f"{weights} was exported for {fixed}x{fixed} images, not size {size}; "
                             f"use size {fixed} or export it again")
        return runner
    if model is None:
        from upocr.model.checkpoint import load_model

        model = load_model(weights)
    elif weights is not None:
        raise ValueError("give either a model or weights, not both")
    if not isinstance(model, UPOCR):
        raise ValueError(f"backend onnxruntime needs a UPOCR model or a .onnx file, got {type(model).__name__}")
    runner = OnnxRunner(onnx_bytes(model, size=size), device=device)
    runner.name = "exported model"
    return runner
