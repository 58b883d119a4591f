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
* "model-fill": the text mask from the segmentation prompt (its calibrated threshold, grown by `grow`
  working-resolution pixels, default `REMOVAL_TEXT_DILATION`, feathered) decides where; the removal
  prompt's 1/4-resolution output, upsampled, fills it. Both come from the one model; the coarse output is
  used because the model learned to erase there far better than at full resolution (docs/results.md);
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
from typing import Any, Callable, Iterator, Literal, Sequence, get_args

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from upocr.inpaint import dilate, telea_inpaint
from upocr.io import DEFAULT_MAX_PIXELS, read_image
from upocr.model import SIZE_MULTIPLE
from upocr.model.checkpoint import load_model, resolve_device
from upocr.tasks import Task
from upocr.weights import InferenceDefaults

# `tile="auto"` tiles an image when it has more than this many times size x size pixels.
AUTO_TILE_AREA_FACTOR = 4
# Rows per band in which resized outputs are brought to full size and removal results composited.
BAND_ROWS = 256

# Text-removal blend (see removal_change_mask): a pixel counts as changed when the model output differs
# from the input by more than this (max over RGB, after a light blur), on a 0..1 scale (~20/255).
REMOVAL_CHANGE_THRESHOLD = 0.08
CHANGE_BLUR_SIGMA = 1.0  # the light blur before that threshold

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
Band = tuple[int, int, list[np.ndarray]]  # rows [top, bottom) of each task's float32 (3, rows, W) output


def inference_defaults(model: Any) -> InferenceDefaults:
    """The defaults stored with a model's weights (`model.inference`); the original's (512 px, threshold
    0.4) for callables that carry none."""
    stored = getattr(model, "inference", None)
    return stored if isinstance(stored, InferenceDefaults) else InferenceDefaults()


@dataclass
class Prediction:
    """One task's result for one image, at the image's original resolution.

    `output` is the model's output image (clamped to [0, 1]) resized/blended back to (3, H, W) (kept with
    Predictor(keep_output=True), the default; 12 bytes a pixel, so the CLI and server drop it); the decoded
    result is in the field for the task: `image` (removal), `mask` (segmentation), `classes` (tampering).
    """

    task: Task
    output: np.ndarray | None  # float32 (3, H, W) in [0, 1]; None unless the Predictor keeps outputs
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
    batch_size: (tile or image, task) pairs per forward pass: the tiles of one image, or, in `predict_many`
    and folders (`upocr.files`), several resized images together.
    precision: "fp32", "bf16" (autocast; CPU or CUDA), "fp16" (autocast; CUDA only) or "int8" (Linear
    layers dynamically quantized, `upocr.model.quantize`; CPU only; a given model is copied, not changed).
    backend: "pytorch" or "onnxruntime" (fp32; `weights` may then be a `.onnx` file from `upocr export-onnx`,
    else the model is exported in memory; `upocr.export`).
    removal: how text removal builds its result: "raw", "blend", "model-fill" or "telea-fill" (module
    docstring); the fill modes also run the segmentation prompt for the text mask.
    grow: working-resolution pixels the fill modes grow the text mask by before filling it (default
    REMOVAL_TEXT_DILATION, chosen on synthetic validation data); more covers outlines, shadows and halos
    around the strokes, at the cost of repainting more of what surrounds them.
    keep_output: keep the full-size float32 outputs (`Prediction.output`, `.change_mask`). False bounds
    memory by the decoded results: outputs are decoded in row bands as tiles finish; with removal="telea-fill"
    it also skips the removal prompt's forward passes, whose output only `.output` would show.
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
        grow: int = REMOVAL_TEXT_DILATION,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        backend: Backend = "pytorch",
        keep_output: bool = True,
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
        if isinstance(grow, bool) or not isinstance(grow, (int, np.integer)) or grow < 0:
            raise ValueError(f"grow must be a whole number of pixels, 0 or more, got {grow!r}")
        self.grow = int(grow)
        self.max_pixels = max_pixels
        self.keep_output = keep_output
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
        """Run several tasks on one image; every (tile, task) pair goes through the model in shared batches.

        The model's outputs reach the decoder in row bands (`_tiled_bands`, `resized_bands`), so besides
        the input and the decoded results only a few tile heights of float maps are held (keep_output=False)."""
        return self.predict_many([image], tasks)[0]

    def predict_many(
        self, images: Sequence[np.ndarray | str | os.PathLike], tasks: Sequence[Task | str | int]
    ) -> list[list[Prediction]]:
        """Run several tasks on several images: per image, one Prediction per task (as `predict_tasks`).

        Images that are resized (all with tile=None; with tile="auto" those up to 4 x size^2 pixels) share
        forward passes, `batch_size` (image, task) pairs each: a folder of photos keeps a GPU busy. Tiled
        images run one after another, their tiles batched. Results equal `predict_tasks` image by image."""
        pixels_list = [self._as_pixels(image) for image in images]
        task_list = [Task.parse(t) for t in tasks]
        run_list = list(task_list)
        if self._fills_text() and Task.TEXT_REMOVAL in task_list:
            if Task.TEXT_SEGMENTATION not in task_list:
                run_list.append(Task.TEXT_SEGMENTATION)  # the text mask of the fill modes
            if self.removal == "telea-fill" and not self.keep_output:
                # Telea fills the text mask: the removal prompt's output would only be kept (`.output`),
                # so without keep_output its forward passes are skipped (half the model time).
                run_list.remove(Task.TEXT_REMOVAL)
        resized = [i for i, pixels in enumerate(pixels_list) if self._tile_for(pixels.shape[:2]) is None]
        model_pairs = dict(zip(resized, self._run_resized([pixels_list[i] for i in resized], run_list)))
        return [self._decode(pixels, task_list, run_list, model_pairs.get(i)) for i, pixels in enumerate(pixels_list)]

    def _decode(
        self, pixels: np.ndarray, task_list: list[Task], run_list: list[Task],
        model_pairs: list[tuple[np.ndarray, np.ndarray]] | None,
    ) -> list[Prediction]:
        """One image's results: from its resized model outputs (`model_pairs`), or, for None, its tiles."""
        height, width = pixels.shape[:2]
        tile = self._tile_for(pixels.shape[:2])
        if model_pairs is not None:
            bands = resized_bands([pair[1] for pair in model_pairs], height, width, BAND_ROWS)
        else:
            assert tile is not None
            bands = self._tiled_bands(pixels, run_list, tile)
        whole_text = None
        if self._fills_text() and Task.TEXT_REMOVAL in task_list and tile is not None and self.tile == "auto":
            # Two scales find the text to erase: native tiles see small print, the whole image resized sees
            # characters larger than a tile (posters), of which tiles find only the edges. On real photos
            # (`upocr evaluate real`) the union erased more words than either scale alone.
            whole_text = self._run_resized([pixels], [Task.TEXT_SEGMENTATION])[0][0][1]
        decoder = _BandDecoder(self, pixels, task_list, run_list, tile, whole_text)
        for top, bottom, outputs in bands:
            decoder.add(top, bottom, outputs)
        pairs = dict(zip(run_list, model_pairs)) if model_pairs is not None else {}  # per task the model ran
        return [decoder.finish(task, pairs.get(task)) for task in task_list]

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
        self, pixels_list: Sequence[np.ndarray], tasks: list[Task]
    ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Resize mode at the working size: per image, per task, (model input, model output) (uint8 HWC,
        float CHW), which the removal blend compares; `resized_bands` brings the outputs to the original
        size. All (image, task) pairs go through the model `batch_size` at a time."""
        # PIL bicubic on uint8, as the original's test transform (antialiased when shrinking).
        smalls = [np.array(Image.fromarray(p).resize((self.size, self.size), Image.Resampling.BICUBIC)) for p in pixels_list]
        tensors = [torch.from_numpy(small).permute(2, 0, 1).float().div_(255) for small in smalls]
        jobs = [(i, t) for i in range(len(smalls)) for t in range(len(tasks))]
        pairs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in smalls]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            result = self._forward(torch.stack([tensors[i] for i, _ in chunk]), [tasks[t] for _, t in chunk])
            for (i, _), one in zip(chunk, result):
                pairs[i].append((smalls[i], one))
        return pairs

    def _tiled_bands(self, pixels: np.ndarray, tasks: list[Task], tile: int) -> Iterator[Band]:
        """Tiled mode: weighted average of overlapping tile outputs at native resolution, streamed.

        Tiles run in row-major order, `batch_size` (tile, task) pairs per forward pass; the weighted sums
        are kept for the rows that later tiles still touch (at most a few tile heights), and each band of
        rows is yielded, divided by its weight total and clipped, as soon as no later tile touches it."""
        height, width = pixels.shape[:2]
        # Reflect-pad images smaller than a tile (numpy repeats the reflection if needed).
        padded_h, padded_w = max(height, tile), max(width, tile)
        if (padded_h, padded_w) != (height, width):
            pixels = np.pad(pixels, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="reflect")
        rows = tile_starts(padded_h, tile, self.overlap)
        cols = tile_starts(padded_w, tile, self.overlap)
        row_weights = tile_weights(rows, tile)
        col_weights = tile_weights(cols, tile)
        # Rows [window_top, window_top + len(window)) of the weighted sums, one (3, rows, W) per task.
        window_top = 0
        window = np.zeros((len(tasks), 3, 0, padded_w), np.float32)
        jobs = [(r, c, t) for r in range(len(rows)) for c in range(len(cols)) for t in range(len(tasks))]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            bottom = rows[chunk[-1][0]] + tile
            if bottom > window_top + window.shape[2]:  # grow the window down to the chunk's lowest tile
                grow = bottom - window_top - window.shape[2]
                window = np.concatenate([window, np.zeros((len(tasks), 3, grow, padded_w), np.float32)], axis=2)
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
                top, left = rows[r] - window_top, cols[c]
                window[t][:, top : top + tile, left : left + tile] += one * weight
            # Rows above the next tile row (all of them after the last) are final.
            next_job = start + len(chunk)
            done = padded_h if next_job == len(jobs) else rows[jobs[next_job][0]]
            if done > window_top:
                final, window = window[:, :, : done - window_top], window[:, :, done - window_top :].copy()
                kept = min(done, height) - window_top  # rows of the image, not of the padding
                if kept > 0:
                    total = _weight_total(rows, cols, row_weights, col_weights, tile, window_top, done)
                    total = total[:kept, :width]
                    yield window_top, window_top + kept, [np.clip(one[:, :kept, :width] / total, 0, 1) for one in final]
                window_top = done


class _BandDecoder:
    """Decodes one image's model outputs, arriving in row bands, into the tasks' results at full size.

    Full-size arrays are the results themselves (uint8 image, bool mask, uint8 classes), the removal fill
    modes' bool text mask and the tiled blend's uint8 change map; float maps exist per band only, unless
    the predictor keeps the float outputs (`keep_output`)."""

    def __init__(
        self,
        predictor: Predictor,
        pixels: np.ndarray,
        tasks: list[Task],
        run_list: list[Task],
        tile: int | None,
        whole_text: np.ndarray | None,
    ) -> None:
        self.predictor = predictor
        self.pixels = pixels
        self.run_list = run_list
        self.tile = tile
        self.whole_text = whole_text  # (3, size, size) segmentation output of the whole image resized, or None
        height, width = pixels.shape[:2]
        keep = predictor.keep_output
        self.outputs = {task: np.empty((3, height, width), np.float32) for task in tasks} if keep else {}
        self.results = {task: task.spec.empty_result(height, width) for task in tasks}
        removal = Task.TEXT_REMOVAL in tasks
        self.text = np.empty((height, width), bool) if removal and predictor._fills_text() else None
        self.changes: RowFilterStream | None = None
        if removal and predictor.removal == "blend" and tile is not None:  # tiled: the change at full size
            self.changed = np.empty((height, width), np.uint8)
            self.changes = RowFilterStream(height, gaussian_reach(CHANGE_BLUR_SIGMA), changed_pixels)

    def add(self, top: int, bottom: int, outputs: list[np.ndarray]) -> None:
        """Decode rows [top, bottom) of every task's float output (3, rows, W)."""
        for task, output in zip(self.run_list, outputs):
            if task in self.outputs:
                self.outputs[task][:, top:bottom] = output
            if task in self.results:
                self.results[task][top:bottom] = task.spec.decode_array(output, self.predictor.threshold)
            if task == Task.TEXT_SEGMENTATION and self.text is not None:
                if self.whole_text is None and task in self.results:  # the mask just decoded is the text
                    self.text[top:bottom] = self.results[task][top:bottom]
                    continue
                if self.whole_text is not None:
                    height, width = self.pixels.shape[:2]
                    output = np.maximum(output, resize_rows(self.whole_text, height, width, top, bottom))
                self.text[top:bottom] = task.spec.decode_array(output, self.predictor.threshold)
            if task == Task.TEXT_REMOVAL and self.changes is not None:
                difference = change_difference(self.pixels[top:bottom], output)
                for first, last, rows in self.changes.push(top, bottom, difference):
                    self.changed[first:last] = rows

    def finish(self, task: Task, model_pair: tuple[np.ndarray, np.ndarray] | None) -> Prediction:
        """The Prediction of `task` once every band was added (removal: its mode's post-processing)."""
        output = self.outputs.get(task)
        result = self.results[task]
        if task != Task.TEXT_REMOVAL or self.predictor.removal == "raw":
            return Prediction(task, output, **{task.spec.result_field: result})
        predictor, pixels = self.predictor, self.pixels
        height, width = pixels.shape[:2]
        if self.text is not None:
            # Grow by `grow` working-resolution pixels, in original-resolution pixels.
            scale = 1.0 if self.tile is not None else math.sqrt(height * width) / predictor.size
            text = dilate(self.text, max(1, round(predictor.grow * scale)) if predictor.grow else 0)
            if predictor.removal == "telea-fill":
                change = text.astype(np.float32) if predictor.keep_output else None
                return Prediction(task, output, image=telea_inpaint(pixels, text), change_mask=change)
            feather = max(1.0, predictor.grow * scale)

            def weight_rows(top: int, bottom: int) -> np.ndarray:
                return filter_rows(text, top, bottom, gaussian_reach(feather / 2), lambda rows: feather_text(rows, feather))

        elif model_pair is None:  # tiled: model input and output are already at the original resolution
            radius = change_radius((height, width))

            def weight_rows(top: int, bottom: int) -> np.ndarray:
                reach = radius + gaussian_reach(radius / 2)
                return filter_rows(self.changed, top, bottom, reach, lambda rows: spread_change(rows, radius))

        else:  # resized: find the change at the working size, then upsample the (smooth) mask
            weight = removal_change_mask(*model_pair)
            if weight.shape != (height, width):
                weight = cv2.resize(weight, (width, height), interpolation=cv2.INTER_LINEAR)
            weight = np.clip(weight, 0, 1)

            def weight_rows(top: int, bottom: int) -> np.ndarray:
                return weight[top:bottom]

        change_mask = np.empty((height, width), np.float32) if predictor.keep_output else None
        for top in range(0, height, BAND_ROWS):  # composite in bands: its float temporaries stay small
            bottom = min(height, top + BAND_ROWS)
            band_weight = weight_rows(top, bottom)
            result[top:bottom] = composite(result[top:bottom], pixels[top:bottom], band_weight)
            if change_mask is not None:
                change_mask[top:bottom] = band_weight
        return Prediction(task, output, image=result, change_mask=change_mask)


def resized_bands(outputs: list[np.ndarray], height: int, width: int, band_rows: int) -> Iterator[Band]:
    """Working-size outputs (3, s, s), bilinearly resized to (height, width), as bands of `band_rows` rows."""
    if outputs and height * width <= outputs[0].shape[1] * outputs[0].shape[2]:  # no larger: in one piece
        yield 0, height, [_resize_whole(output, height, width) for output in outputs]
        return
    for top in range(0, height, band_rows):
        bottom = min(height, top + band_rows)
        yield top, bottom, [resize_rows(output, height, width, top, bottom) for output in outputs]


def resize_rows(output: np.ndarray, height: int, width: int, top: int, bottom: int) -> np.ndarray:
    """Rows [top, bottom) of `output` (3, h, w) resized to (3, height, width), clipped to [0, 1]: the same
    values as F.interpolate(bilinear, align_corners=False) of the whole, without the whole.

    The width is interpolated by torch on the few source rows the band needs (at their own height, an
    exact copy along the height); the height by torch's index and weight formulas."""
    small_h, small_w = output.shape[1:]
    if (small_h, small_w) == (height, width):
        return output[:, top:bottom]
    first, second, weight_first, weight_second = _linear_indices(small_h, height, top, bottom)
    source_top, source_bottom = int(first.min()), int(second.max()) + 1
    source = torch.from_numpy(np.ascontiguousarray(output[None, :, source_top:source_bottom], dtype=np.float32))
    wide = F.interpolate(source, size=(source_bottom - source_top, width), mode="bilinear", align_corners=False)[0].numpy()
    # w0 * row0 + w1 * row1, the first product fused into the sum as torch's build does (float64 holds
    # the float32 product exactly), so the values match torch's to the bit on this build.
    second_term = (weight_second[:, None] * wide[:, second - source_top]).astype(np.float64)
    rows = (weight_first[:, None].astype(np.float64) * wide[:, first - source_top] + second_term).astype(np.float32)
    return np.clip(rows, 0, 1)


def _resize_whole(output: np.ndarray, height: int, width: int) -> np.ndarray:
    if output.shape[1:] == (height, width):
        return output
    resized = F.interpolate(torch.from_numpy(output)[None], size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].clamp_(0, 1).numpy()


def _linear_indices(source: int, target: int, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For target rows [top, bottom): source rows and weights of torch's bilinear (align_corners=False)
    interpolation, in float32 as torch computes them (aten/src/ATen/native/UpSample.h)."""
    scale = np.float32(source) / np.float32(target)
    # scale * (row + 0.5) - 0.5 rounded once (torch's build contracts it to a fused multiply-add): exact in
    # float64, then rounded to float32.
    position = (np.float64(scale) * (np.arange(top, bottom, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    position = np.maximum(position, np.float32(0))
    first = np.minimum(np.floor(position).astype(np.int64), source - 1)
    weight_second = np.clip(position - first.astype(np.float32), 0, 1).astype(np.float32)
    second = first + (first < source - 1)
    return first, second, (np.float32(1) - weight_second), weight_second


def _weight_total(
    rows: list[int], cols: list[int], row_weights: list[np.ndarray], col_weights: list[np.ndarray],
    tile: int, top: int, bottom: int,
) -> np.ndarray:
    """Rows [top, bottom) of the sum of all tiles' blend weights (summed in the tiles' order)."""
    total = np.zeros((bottom - top, cols[-1] + tile), np.float32)
    for row_weight, row in zip(row_weights, rows):
        first, last = max(top, row), min(bottom, row + tile)
        if first >= last:
            continue
        for col_weight, col in zip(col_weights, cols):
            total[first - top : last - top, col : col + tile] += np.outer(row_weight[first - row : last - row], col_weight)
    return total


def filter_rows(array: np.ndarray, top: int, bottom: int, reach: int, apply: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Rows [top, bottom) of `apply(array)`, computed from those rows and `reach` rows either side, for a
    filter whose rows depend on at most `reach` rows above and below (blurs, dilations)."""
    first, last = max(0, top - reach), min(len(array), bottom + reach)
    return apply(array[first:last])[top - first : bottom - first]


class RowFilterStream:
    """`apply` (a filter with row reach `reach`, as filter_rows) on an image of `height` rows that arrives
    in consecutive row bands: `push` returns the filtered rows whose neighbourhood is complete."""

    def __init__(self, height: int, reach: int, apply: Callable[[np.ndarray], np.ndarray]) -> None:
        self.height, self.reach, self.apply = height, reach, apply
        self.buffer: np.ndarray | None = None  # source rows [buffer_top, last pushed bottom)
        self.buffer_top = 0
        self.emitted = 0  # filtered rows [0, emitted) were returned

    def push(self, top: int, bottom: int, rows: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        if self.buffer is None:
            self.buffer = rows
        else:
            assert top == self.buffer_top + len(self.buffer), "bands must arrive in order"
            self.buffer = np.concatenate([self.buffer, rows])
        ready = bottom if bottom == self.height else bottom - self.reach
        if ready <= self.emitted:
            return []
        context_top = max(0, self.emitted - self.reach)
        filtered = self.apply(self.buffer[context_top - self.buffer_top :])
        done = (self.emitted, ready, filtered[self.emitted - context_top : ready - context_top])
        self.emitted = ready
        keep_top = max(0, ready - self.reach)
        self.buffer, self.buffer_top = self.buffer[keep_top - self.buffer_top :], keep_top
        return [done]


def gaussian_reach(sigma: float) -> int:
    """Rows either side that cv2.GaussianBlur(ksize=(0, 0), sigma) reads on float images (its kernel
    is round(8 sigma + 1) | 1 wide), plus one to spare."""
    return (int(round(sigma * 8 + 1)) | 1) // 2 + 1


def feather_text(text: np.ndarray, radius: float) -> np.ndarray:
    """model-fill weight: a bool text mask feathered outside (Gaussian, sigma radius / 2), whole inside."""
    weight = np.clip(cv2.GaussianBlur(text.astype(np.float32), (0, 0), radius / 2), 0, 1)
    return np.maximum(weight, text)


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
    changed = changed_pixels(change_difference(model_input, model_output))
    return spread_change(changed, change_radius(changed.shape))


def change_difference(model_input: np.ndarray, model_output: np.ndarray) -> np.ndarray:
    """float32 (H, W): per-pixel max over RGB of |output - input| on a 0..1 scale."""
    return np.abs(model_output.transpose(1, 2, 0) - model_input.astype(np.float32) / 255).max(axis=2)


def changed_pixels(difference: np.ndarray) -> np.ndarray:
    """uint8 (H, W): 1 where the lightly blurred difference exceeds REMOVAL_CHANGE_THRESHOLD."""
    difference = cv2.GaussianBlur(difference, (0, 0), CHANGE_BLUR_SIGMA)
    return (difference > REMOVAL_CHANGE_THRESHOLD).astype(np.uint8)


def change_radius(shape: tuple[int, ...]) -> int:
    """Dilation of the changed pixels: the shorter side / 200, at least 2."""
    return max(2, round(min(shape[:2]) / 200))


def spread_change(changed: np.ndarray, radius: int) -> np.ndarray:
    """Changed pixels dilated by `radius` and feathered (sigma radius / 2): the float32 blend weight."""
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
