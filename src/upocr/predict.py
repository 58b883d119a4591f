"""Run a UPOCR model on whole images at their original resolution.

Two ways to fit an image of any size to the model, chosen per image by default (`tile="auto"`):

* resize (the original's way, and the default for images up to 4 x size^2 pixels): the image is resized to `size` x `size` (PIL bicubic, aspect not
  kept, exactly the original's test transform), one forward pass, and the clamped output is resized back
  to the original size (bilinear, align_corners=False, as the original's segmentation/tampering
  evaluation).
* tiled: the model runs on overlapping `tile` x `tile` windows of the image at its native resolution
  (reflect-padded where the image is smaller than a tile); neighbouring tiles are blended with
  complementary raised-cosine ramps across their overlap, so there are no seams and the model's memory
  depends on the tile size, not the image size. `tile="auto"` (default) tiles (with tile = size) images
  with more than 4 x size^2 pixels: shrinking a 1600-px photo to 256 px destroys its small print (on the
  real-image benchmark, docs/results.md, words left after removal 30% -> 1%, ink fgIoU 0.51 -> 0.81).
  `tile=None` always resizes (the papers' evaluation protocol, `upocr evaluate model`).

Text removal has four result modes (`removal=`); all but "raw" keep the input's own pixels outside the
region they erase, so untouched areas stay sharp at the original resolution:

* "raw": the removal prompt's full-resolution output as it is (the original's result);
* "blend": that output, kept only where it changed the image (`removal_change_mask`);
* "model-fill": the text mask from the segmentation prompt (its calibrated threshold, grown by
  `REMOVAL_TEXT_DILATION` pixels, feathered) decides where; the removal prompt's 1/4-resolution output,
  upsampled, fills it. Both come from the one model; the coarse output is used because the model learned
  to erase there far better than at full resolution (docs/results.md);
* "telea-fill" (default): the same model text mask, filled by OpenCV's Telea inpainting: the model finds
  the text, a classical fill paints it. Best on our held-out data (docs/results.md) while the model's
  own fill is undertrained.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, get_args

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from upocr.inpaint import dilate, telea_inpaint
from upocr.io import DEFAULT_MAX_PIXELS, read_image
from upocr.model import SIZE_MULTIPLE
from upocr.model.checkpoint import load_model, resolve_device
from upocr.tasks import Task, decode_segmentation
from upocr.weights import InferenceDefaults

# `tile="auto"` tiles an image when it has more than this many times size x size pixels.
AUTO_TILE_AREA_FACTOR = 4

# Text-removal blend (see removal_change_mask): a pixel counts as changed when the model output differs
# from the input by more than this (max over RGB, after a light blur), on a 0..1 scale (~20/255).
REMOVAL_CHANGE_THRESHOLD = 0.08

RemovalMode = Literal["raw", "blend", "model-fill", "telea-fill"]
REMOVAL_MODES: tuple[str, ...] = get_args(RemovalMode)
DEFAULT_REMOVAL_MODE = "telea-fill"
# Fill modes: the text mask grows by this many pixels at the working resolution, so anti-aliased edges
# and halos just outside the strokes are erased too (3 scored best of 2/3/4/6 on a validation split).
REMOVAL_TEXT_DILATION = 3

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Backend = Literal["pytorch", "onnxruntime"]
BACKENDS: tuple[str, ...] = get_args(Backend)
ModelFn = Callable[[torch.Tensor, Any], Any]


def inference_defaults(model: Any) -> InferenceDefaults:
    """The defaults stored with a model's weights (`model.inference`); the original's (512 px, threshold
    0.4) for callables that carry none."""
    stored = getattr(model, "inference", None)
    return stored if isinstance(stored, InferenceDefaults) else InferenceDefaults()


@dataclass
class Prediction:
    """One task's result for one image, at the image's original resolution.

    `output` is the model's output image (clamped to [0, 1]) resized/blended back to (3, H, W); the decoded
    result is in the field for the task: `image` (removal), `mask` (segmentation), `classes` (tampering).
    """

    task: Task
    output: np.ndarray  # float32 (3, H, W) in [0, 1]
    image: np.ndarray | None = None  # uint8 (H, W, 3): text removed
    mask: np.ndarray | None = None  # bool (H, W): text pixels
    classes: np.ndarray | None = None  # uint8 (H, W): 0 background, 1 real text, 2 tampered text
    change_mask: np.ndarray | None = field(default=None, repr=False)  # float32 (H, W): removal blend weight

    @property
    def result(self) -> np.ndarray:
        """The decoded result for this task (image, mask or classes)."""
        value = getattr(self, self.task.spec.result_field)
        assert value is not None
        return value


class Predictor:
    """Applies a model to images of any size and decodes the result for a task.

    `model` is a UPOCR model or any callable with its signature `model(images (B,3,h,w) in [0,1], tasks)`
    returning a tensor or a list of tensors whose last is the full-resolution (B,3,h,w) output. With
    model=None the weights at `weights` (None: the bundled default) are loaded via `upocr.load_model`.

    tile: "auto" (default) -> tiled with tile = size for images of more than 4 x size^2 pixels, else
    resize; None -> always resize (the original's protocol); an int (multiple of 32) -> always tiled
    with that tile size. overlap: pixels shared by
    neighbouring tiles (default: tile / 8, i.e. 64 for 512).
    precision: "fp32", "bf16" (autocast; CPU or CUDA), "fp16" (autocast; CUDA only) or "int8" (Linear
    layers dynamically quantized, `upocr.model.quantize`; CPU only; a given model is copied, not changed).
    backend: "pytorch" or "onnxruntime" (fp32; `weights` may then be a `.onnx` file from `upocr export-onnx`,
    else the model is exported in memory; `upocr.export`).
    removal: how text removal builds its result: "raw", "blend", "model-fill" or "telea-fill" (module
    docstring); the fill modes also run the segmentation prompt for the text mask.
    """

    def __init__(
        self,
        model: torch.nn.Module | ModelFn | None = None,
        *,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        size: int | None = None,
        tile: int | Literal["auto"] | None = "auto",
        overlap: int | None = None,
        batch_size: int = 1,
        precision: Precision = "fp32",
        threshold: float | None = None,
        removal: RemovalMode = DEFAULT_REMOVAL_MODE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        backend: Backend = "pytorch",
    ) -> None:
        # The options as given (None: from the weights), for `with_options`: every argument but these three.
        self._options = {k: v for k, v in locals().items() if k not in ("self", "model", "weights", "device")}
        self.device = resolve_device(device)
        loaded_here = model is None
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "onnxruntime":  # `upocr.export`: an ONNX Runtime session called like the model
            from upocr.export import onnx_runner

            model, weights = onnx_runner(model, weights, device=self.device, precision=precision, size=size), None
        if model is None:
            model = load_model(weights, device=str(self.device))
        elif weights is not None:
            raise ValueError("give either a model or weights, not both")
        stored = inference_defaults(model)
        if size is None:  # the resolution the weights were trained at (512 for the original's)
            size = stored.input_size
        self.size = _check_multiple("size", size)
        if tile not in (None, "auto"):
            tile = _check_multiple("tile", tile)
        self.tile = tile
        tile_size = self.size if tile in (None, "auto") else int(tile)
        if overlap is None:
            overlap = tile_size // 8  # 64 for 512 tiles
        if tile is not None and not 0 <= overlap <= tile_size // 2:
            raise ValueError(f"overlap must be between 0 and half the tile size ({tile_size // 2}), got {overlap}")
        self.overlap = int(overlap)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 or int8 on CPU")
        if precision == "int8" and (self.device.type != "cpu" or not isinstance(model, torch.nn.Module)):
            raise ValueError("precision int8 (dynamic quantization) needs a torch model on the CPU")
        self.precision = precision
        self.backend = backend
        if threshold is None:  # the threshold calibrated for these weights (0.4, the original's, if none)
            threshold = stored.segmentation_threshold
        self.threshold = float(threshold)
        if removal not in REMOVAL_MODES:
            raise ValueError(f"removal must be one of {', '.join(REMOVAL_MODES)}, got {removal!r}")
        self.removal = removal
        self.max_pixels = max_pixels
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        if precision == "int8":
            from upocr.model.quantize import is_quantized, quantize_int8

            if not is_quantized(model):  # a quantized model (`with_options`) is shared as it is
                model = quantize_int8(model, inplace=loaded_here)
        self.model = model

    def with_options(self, **changes: Any) -> "Predictor":
        """A predictor like this one with some options changed (any keyword argument of `__init__` but
        model, weights and device), checked as `__init__` checks them. It shares this one's model: no
        weights are loaded or copied (switching to int8 quantizes a copy; switching from int8 needs the
        unquantized model, so it is refused)."""
        fixed = sorted({"model", "weights", "device"} & set(changes))
        if fixed:
            raise TypeError(f"with_options keeps the model and device (got {', '.join(fixed)}); make a new Predictor for others")
        if self.precision == "int8" and changes.get("precision", "int8") != "int8":
            raise ValueError("with_options cannot undo int8 (the model is quantized); make a new Predictor from the weights")
        return Predictor(self.model, device=self.device, **{**self._options, **changes})

    # ------------------------------------------------------------------ public API

    def predict(self, image: np.ndarray | str | os.PathLike, task: Task | str | int) -> Prediction:
        """Run one task on one image (array (H,W,3) uint8 RGB, or a path read with `upocr.io.read_image`)."""
        return self.predict_tasks(image, [task])[0]

    def predict_tasks(
        self, image: np.ndarray | str | os.PathLike, tasks: Sequence[Task | str | int]
    ) -> list[Prediction]:
        """Run several tasks on one image; every (tile, task) pair goes through the model in shared batches."""
        pixels = self._as_pixels(image)
        task_list = [Task.parse(t) for t in tasks]
        run_list = list(task_list)
        if self._fills_text() and Task.TEXT_REMOVAL in task_list and Task.TEXT_SEGMENTATION not in task_list:
            run_list.append(Task.TEXT_SEGMENTATION)  # the text mask of the fill modes
        tile = self._tile_for(pixels.shape[:2])
        if tile is None:
            outputs, model_pairs = self._run_resized(pixels, run_list)
        else:
            outputs, model_pairs = self._run_tiled(pixels, run_list, tile), None
        text_output = outputs[run_list.index(Task.TEXT_SEGMENTATION)] if Task.TEXT_SEGMENTATION in run_list else None
        if tile is not None and self.tile == "auto" and self._fills_text() and Task.TEXT_REMOVAL in task_list:
            # Two scales find the text to erase: native tiles see small print, the whole image resized sees
            # characters larger than a tile (posters), of which tiles find only the edges. On real photos
            # (`upocr evaluate real`) the union erased more words than either scale alone.
            whole, _ = self._run_resized(pixels, [Task.TEXT_SEGMENTATION])
            text_output = np.maximum(text_output, whole[0])
        return [
            self._decode(pixels, task, output, None if model_pairs is None else model_pairs[i], text_output, tile)
            for i, (task, output) in enumerate(zip(task_list, outputs))
        ]

    def uses_tiles(self, height: int, width: int) -> bool:
        """Whether an image of this size is processed in tiles (else resized)."""
        return self._tile_for((height, width)) is not None

    # ------------------------------------------------------------------ internals

    def _as_pixels(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            return read_image(Path(image), max_pixels=self.max_pixels)
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {pixels.dtype} {pixels.shape}")
        return pixels

    def _tile_for(self, shape: tuple[int, int]) -> int | None:
        if self.tile is None:
            return None
        if self.tile == "auto":
            return self.size if shape[0] * shape[1] > AUTO_TILE_AREA_FACTOR * self.size**2 else None
        return int(self.tile)

    def _fills_text(self) -> bool:
        return self.removal in ("model-fill", "telea-fill")

    def _forward(self, batch: torch.Tensor, tasks: list[Task]) -> np.ndarray:
        """(B,3,h,w) float in [0,1] -> clamped float32 (B,3,h,w) full-resolution output as numpy.

        With removal="model-fill", removal items give the model's coarsest (1/4) output, upsampled."""
        with torch.inference_mode():
            with self._autocast():
                result = self.model(batch.to(self.device), list(tasks))
            if isinstance(result, (list, tuple)):
                full = result[-1]
                removal_items = [i for i, t in enumerate(tasks) if t == Task.TEXT_REMOVAL]
                if self.removal == "model-fill" and removal_items and len(result) > 1:
                    full = full.clone()
                    coarse = F.interpolate(result[0][removal_items].float(), size=full.shape[-2:], mode="bilinear", align_corners=False)
                    full[removal_items] = coarse.to(full.dtype)
                result = full
            if tuple(result.shape) != tuple(batch.shape):
                raise RuntimeError(f"model returned shape {tuple(result.shape)} for input {tuple(batch.shape)}")
            return result.float().clamp(0, 1).cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision in ("fp32", "int8"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _run_resized(
        self, pixels: np.ndarray, tasks: list[Task]
    ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
        """Resize mode. Returns outputs at the original size and, per task, (model input, model output)
        at the working size (uint8 HWC and float CHW), which the removal blend compares."""
        height, width = pixels.shape[:2]
        # PIL bicubic on uint8, as the original's test transform (antialiased when shrinking).
        small = np.array(Image.fromarray(pixels).resize((self.size, self.size), Image.Resampling.BICUBIC))
        tensor = torch.from_numpy(small).permute(2, 0, 1).float().div_(255)
        outputs: list[np.ndarray] = []
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(tasks), self.batch_size):
            chunk = tasks[start : start + self.batch_size]
            result = self._forward(tensor.unsqueeze(0).expand(len(chunk), -1, -1, -1), chunk)
            for one in result:
                pairs.append((small, one))
                if (height, width) != (self.size, self.size):
                    resized = F.interpolate(
                        torch.from_numpy(one)[None], size=(height, width), mode="bilinear", align_corners=False
                    )
                    one = resized[0].clamp_(0, 1).numpy()
                outputs.append(one)
        return outputs, pairs

    def _run_tiled(self, pixels: np.ndarray, tasks: list[Task], tile: int) -> list[np.ndarray]:
        """Tiled mode: weighted average of overlapping tile outputs at native resolution."""
        height, width = pixels.shape[:2]
        # Reflect-pad images smaller than a tile (numpy repeats the reflection if needed).
        padded_h, padded_w = max(height, tile), max(width, tile)
        if (padded_h, padded_w) != (height, width):
            pixels = np.pad(pixels, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="reflect")
        rows = tile_starts(padded_h, tile, self.overlap)
        cols = tile_starts(padded_w, tile, self.overlap)
        row_weights = tile_weights(rows, tile)
        col_weights = tile_weights(cols, tile)
        sums = [np.zeros((3, padded_h, padded_w), np.float32) for _ in tasks]
        total = np.zeros((padded_h, padded_w), np.float32)
        for r, top in enumerate(rows):
            for c, left in enumerate(cols):
                total[top : top + tile, left : left + tile] += np.outer(row_weights[r], col_weights[c])
        jobs = [(r, c, t) for r in range(len(rows)) for c in range(len(cols)) for t in range(len(tasks))]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            batch = torch.stack(
                [
                    torch.from_numpy(
                        np.ascontiguousarray(pixels[rows[r] : rows[r] + tile, cols[c] : cols[c] + tile])
                    ).permute(2, 0, 1)
                    for r, c, _ in chunk
                ]
            ).float().div_(255)
            result = self._forward(batch, [tasks[t] for _, _, t in chunk])
            for (r, c, t), one in zip(chunk, result):
                weight = np.outer(row_weights[r], col_weights[c])
                top, left = rows[r], cols[c]
                sums[t][:, top : top + tile, left : left + tile] += one * weight
        return [np.clip(s[:, :height, :width] / total[:height, :width], 0, 1) for s in sums]

    def _decode(
        self,
        pixels: np.ndarray,
        task: Task,
        output: np.ndarray,
        model_pair: tuple[np.ndarray, np.ndarray] | None,
        text_output: np.ndarray | None = None,
        tile: int | None = None,
    ) -> Prediction:
        output = output.astype(np.float32, copy=False)
        spec = task.spec
        result = spec.decode(torch.from_numpy(output), self.threshold).numpy()
        if task != Task.TEXT_REMOVAL or self.removal == "raw":
            return Prediction(task, output, **{spec.result_field: result})
        removed = result  # text removal's result modes build on the decoded output
        if self._fills_text():
            assert text_output is not None
            text = decode_segmentation(torch.from_numpy(text_output.astype(np.float32, copy=False)), self.threshold).numpy()
            # Grow by REMOVAL_TEXT_DILATION working-resolution pixels, in original-resolution pixels.
            scale = 1.0 if tile is not None else math.sqrt(text.shape[0] * text.shape[1]) / self.size
            text = dilate(text, max(1, round(REMOVAL_TEXT_DILATION * scale)))
            if self.removal == "telea-fill":
                return Prediction(task, output, image=telea_inpaint(pixels, text), change_mask=text.astype(np.float32))
            radius = max(1.0, REMOVAL_TEXT_DILATION * scale)
            weight = np.clip(cv2.GaussianBlur(text.astype(np.float32), (0, 0), radius / 2), 0, 1)
            weight = np.maximum(weight, text)  # feathered outside, the whole mask inside
            return Prediction(task, output, image=composite(removed, pixels, weight), change_mask=weight)
        if model_pair is None:  # tiled: model input and output are already at the original resolution
            weight = removal_change_mask(pixels, output)
        else:  # resized: find the change at the working size, then upsample the (smooth) mask
            weight = removal_change_mask(*model_pair)
            height, width = pixels.shape[:2]
            if weight.shape != (height, width):
                weight = cv2.resize(weight, (width, height), interpolation=cv2.INTER_LINEAR)
        weight = np.clip(weight, 0, 1)
        return Prediction(task, output, image=composite(removed, pixels, weight), change_mask=weight)


def composite(fill: np.ndarray, pixels: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): `weight * fill + (1 - weight) * pixels`, rounded; weight (H, W) in [0, 1]."""
    weight = weight[:, :, None]
    return np.rint(weight * fill + (1 - weight) * pixels).astype(np.uint8)


def removal_change_mask(model_input: np.ndarray, model_output: np.ndarray) -> np.ndarray:
    """Soft (H, W) float32 weight in [0, 1]: where the removal model changed the image.

    model_input: uint8 (H, W, 3) as fed to the model; model_output: float (3, H, W) in [0, 1] at the same
    size. Steps: per-pixel max |output - input| over RGB; a light Gaussian blur (sigma 1) so isolated
    noisy pixels don't count; threshold at REMOVAL_CHANGE_THRESHOLD; dilate by a few pixels (shorter side
    / 200, at least 2) so stroke borders and halos are included; feather with a Gaussian
    (sigma = half the dilation) so the seam between model and input pixels is invisible. Result blend:
    weight * model + (1 - weight) * input.
    """
    difference = np.abs(model_output.transpose(1, 2, 0) - model_input.astype(np.float32) / 255).max(axis=2)
    difference = cv2.GaussianBlur(difference, (0, 0), 1.0)
    changed = (difference > REMOVAL_CHANGE_THRESHOLD).astype(np.uint8)
    radius = max(2, round(min(changed.shape) / 200))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    dilated = cv2.dilate(changed, kernel).astype(np.float32)
    return np.clip(cv2.GaussianBlur(dilated, (0, 0), radius / 2), 0, 1)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Top/left offsets of tiles covering [0, length) with at least `overlap` pixels shared by neighbours,
    spread evenly so that the first starts at 0 and the last ends at `length` (length >= tile)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_weights(starts: list[int], tile: int) -> list[np.ndarray]:
    """1-D blend weights per tile: 1 inside, a raised-cosine ramp across each overlap with a neighbour.

    The ramps of two neighbours are complementary (they sum to 1 across the overlap), and sides without a
    neighbour (the image border) are not tapered. Weights never reach 0, so dividing by their sum is safe.
    """
    weights = []
    for i, start in enumerate(starts):
        weight = np.ones(tile, np.float32)
        if i > 0:
            shared = starts[i - 1] + tile - start
            weight[:shared] *= _ramp(shared)
        if i < len(starts) - 1:
            shared = start + tile - starts[i + 1]
            weight[tile - shared :] *= _ramp(shared)[::-1]
        weights.append(weight)
    return weights


def _ramp(length: int) -> np.ndarray:
    """Rising raised-cosine of `length` samples in (0, 1); ramp + reversed ramp == 1."""
    position = (np.arange(length, dtype=np.float64) + 0.5) / length
    return (0.5 - 0.5 * np.cos(np.pi * position)).astype(np.float32)



def _check_multiple(name: str, value: int) -> int:
    value = int(value)
    if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
        raise ValueError(f"{name} must be a positive multiple of {SIZE_MULTIPLE}, got {value}")
    return value
