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

Text removal is a pipeline of parts (`upocr.removal`): a finder (the word detector, the model's text
mask, the model's change, a mask the user gives) and a filler (Telea, the model's own output); the
Predictor runs the prompts a pipeline needs and composes its result band by band.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from upocr.decoding import BandDecoder, Prediction
from upocr.io import read_image
from upocr.model.checkpoint import load_model, resolve_device
from upocr.options import TAMPERING_DECISIONS, PredictorOptions, check_multiple
from upocr.removal import SEGMENTATION_FINDERS, removal_pipeline
from upocr.tasks import Task
from upocr.tiling import AUTO_TILE_AREA_FACTOR, BAND_ROWS, Band, resized_bands, tiled_bands
from upocr.weights import InferenceDefaults

__all__ = ["Prediction", "Predictor", "inference_defaults"]

ModelFn = Callable[[torch.Tensor, Any], Any]


def inference_defaults(model: Any) -> InferenceDefaults:
    """The defaults stored with a model's weights (`model.inference`); the original's (512 px, threshold
    0.4) for callables that carry none."""
    stored = getattr(model, "inference", None)
    return stored if isinstance(stored, InferenceDefaults) else InferenceDefaults()


class Predictor:
    """Applies a model to images of any size and decodes the result for a task.

    `model` is a UPOCR model or any callable with its signature `model(images (B,3,h,w) in [0,1], tasks)`
    returning a tensor or a list of tensors whose last is the full-resolution (B,3,h,w) output. With
    model=None the weights at `weights` (None: the bundled default) are loaded via `upocr.load_model`.

    How it runs is `options` (`upocr.options.PredictorOptions`), or the same names as keywords
    (`Predictor(model, tile=None, removal="raw")`); options left None come from the weights' stored
    inference defaults (working size, threshold, removal pipeline). In short:
    tile: "auto" (default) -> tiled with tile = size for images of more than 4 x size^2 pixels, else
    resize; None -> always resize (the original's protocol); an int (multiple of 32) -> always tiled
    with that tile size. overlap: pixels shared by neighbouring tiles (default: tile / 8, i.e. 64 for 512).
    batch_size: (tile or image, task) pairs per forward pass: the tiles of one image, or, in `predict_many`
    and folders (`upocr.files`), several resized images together.
    precision: "fp32", "bf16" (autocast; CPU or CUDA), "fp16" (autocast; CUDA only) or "int8" (Linear
    layers dynamically quantized, `upocr.model.quantize`; CPU only; a given model is copied, not changed).
    backend: "pytorch" or "onnxruntime" (fp32; `weights` may then be a `.onnx` file from `upocr export-onnx`,
    else the model is exported in memory; `upocr.export`).
    removal: the text-removal pipeline's name (`upocr.removal.REMOVAL_PIPELINES`); grow: pixels its fill
    region grows by (the model's text mask: working-resolution pixels).
    keep_output: keep the full-size float32 outputs (`Prediction.output`, `.change_mask`). False bounds
    memory by the decoded results: outputs are decoded in row bands as tiles finish; Telea-filled
    pipelines then skip the removal prompt's forward passes, whose output only `.output` would show.
    """

    def __init__(
        self,
        model: torch.nn.Module | ModelFn | None = None,
        options: PredictorOptions | None = None,
        *,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        **option_values: Any,
    ) -> None:
        options = options if options is not None else PredictorOptions()
        self.options = options.replace(**option_values) if option_values else options  # as given (None: weights')
        options = self.options
        self.device = resolve_device(device)
        loaded_here = model is None
        if options.backend == "onnxruntime":  # `upocr.export`: an ONNX Runtime session called like the model
            from upocr.export import onnx_runner

            model, weights = onnx_runner(model, weights, device=self.device, precision=options.precision, size=options.size), None
        if model is None:
            model = load_model(weights, device=str(self.device))
        elif weights is not None:
            raise ValueError("give either a model or weights, not both")
        stored = inference_defaults(model)
        # The resolution the weights were trained at (512 for the original's) unless given.
        self.size = check_multiple("size", options.size if options.size is not None else stored.input_size)
        self.tile = options.tile
        tile_size = self.size if self.tile in (None, "auto") else int(self.tile)
        overlap = options.overlap if options.overlap is not None else tile_size // 8  # 64 for 512 tiles
        if self.tile is not None and not 0 <= overlap <= tile_size // 2:
            raise ValueError(f"overlap must be between 0 and half the tile size ({tile_size // 2}), got {overlap}")
        self.overlap = int(overlap)
        self.batch_size = options.batch_size
        self.precision, self.backend = options.precision, options.backend
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 or int8 on CPU")
        if self.precision == "int8" and (self.device.type != "cpu" or not isinstance(model, torch.nn.Module)):
            raise ValueError("precision int8 (dynamic quantization) needs a torch model on the CPU")
        # The threshold calibrated for these weights (0.4, the original's, if none) unless given.
        self.threshold = float(options.threshold if options.threshold is not None else stored.segmentation_threshold)
        self.pipeline = removal_pipeline(options.removal if options.removal is not None else stored.removal)
        self.removal = self.pipeline.name
        self.segmentation = options.segmentation if options.segmentation is not None else stored.segmentation
        if self.segmentation not in SEGMENTATION_FINDERS:
            raise ValueError(f"segmentation must be one of {', '.join(SEGMENTATION_FINDERS)}, got {self.segmentation!r}")
        self.grow, self.max_pixels, self.keep_output = options.grow, options.max_pixels, options.keep_output
        self.detector_model = options.detector_model
        self.tampering = options.tampering if options.tampering is not None else stored.tampering
        if self.tampering not in TAMPERING_DECISIONS:
            raise ValueError(f"tampering must be one of {', '.join(TAMPERING_DECISIONS)}, got {self.tampering!r}")
        self.tampering_threshold = options.tampering_threshold
        # A classifier file is read now, so that a bad one stops the run before any image (None: the bundled one;
        # read once per file: `with_options`, e.g. per server request, finds it loaded).
        self.word_classifier = None
        if options.tampering_classifier is not None:
            from upocr.forensics.detect import load_word_classifier

            self.word_classifier = load_word_classifier(options.tampering_classifier)
        self._word_detector: Any = None  # upocr.detector.WordDetector, opened when a pipeline first needs it
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        if self.precision == "int8":
            from upocr.model.quantize import is_quantized, quantize_int8

            if not is_quantized(model):  # a quantized model (`with_options`) is shared as it is
                model = quantize_int8(model, inplace=loaded_here)
        self.model = model

    def with_options(self, **changes: Any) -> "Predictor":
        """A predictor like this one with some options changed (any `PredictorOptions` field), checked as
        `__init__` checks them. It shares this one's model and word detector: nothing is loaded or copied
        (switching to int8 quantizes a copy; switching from int8 needs the unquantized model: refused)."""
        fixed = sorted({"model", "weights", "device", "options"} & set(changes))
        if fixed:
            raise TypeError(f"with_options keeps the model and device (got {', '.join(fixed)}); make a new Predictor for others")
        if self.precision == "int8" and changes.get("precision", "int8") != "int8":
            raise ValueError("with_options cannot undo int8 (the model is quantized); make a new Predictor from the weights")
        twin = Predictor(self.model, self.options.replace(**changes), device=self.device)
        if twin.detector_model == self.detector_model:
            twin._word_detector = self._word_detector
        return twin

    def finds_words(self, task: Task | str) -> bool:
        """Whether this predictor runs the word detector for `task` (and so gives `Prediction.regions`)."""
        task = Task.parse(task)
        return (task == Task.TEXT_REMOVAL and self.pipeline.finder == "words"
                or task == Task.TEXT_SEGMENTATION and SEGMENTATION_FINDERS[self.segmentation].in_words
                or task == Task.TAMPERED_TEXT_DETECTION and self.tampering == "words")

    @property
    def word_detector(self) -> Any:
        """The word detector of the "words" finders (`upocr.detector.WordDetector`), opened on first use."""
        if self._word_detector is None:
            from upocr.detector import WordDetector

            self._word_detector = WordDetector(self.detector_model)
        return self._word_detector

    # ------------------------------------------------------------------ public API

    def predict(self, image: np.ndarray | str | os.PathLike, task: Task | str | int) -> Prediction:
        """Run one task on one image (array (H,W,3) uint8 RGB, or a path read with `upocr.io.read_image`)."""
        return self.predict_tasks(image, [task])[0]

    def predict_tasks(
        self, image: np.ndarray | str | os.PathLike, tasks: Sequence[Task | str | int], *, mask: np.ndarray | None = None
    ) -> list[Prediction]:
        """Run several tasks on one image; every (tile, task) pair goes through the model in shared batches.

        The model's outputs reach the decoder in row bands (`_tiled_bands`, `resized_bands`), so besides
        the input and the decoded results only a few tile heights of float maps are held (keep_output=False).
        mask: where the text is, bool (H, W), for the removal fill (it replaces the pipeline's finder)."""
        return self.predict_many([image], tasks, masks=None if mask is None else [mask])[0]

    def predict_many(
        self, images: Sequence[np.ndarray | str | os.PathLike], tasks: Sequence[Task | str | int],
        *, masks: Sequence[np.ndarray | None] | None = None,
    ) -> list[list[Prediction]]:
        """Run several tasks on several images: per image, one Prediction per task (as `predict_tasks`).

        Images that are resized (all with tile=None; with tile="auto" those up to 4 x size^2 pixels) share
        forward passes, `batch_size` (image, task) pairs each: a folder of photos keeps a GPU busy. Tiled
        images run one after another, their tiles batched. Results equal `predict_tasks` image by image.
        masks: per image a bool (H, W) text mask or None (see `predict_tasks`)."""
        pixels_list = [self._as_pixels(image) for image in images]
        masks = list(masks) if masks is not None else [None] * len(pixels_list)
        if len(masks) != len(pixels_list):
            raise ValueError(f"got {len(masks)} masks for {len(pixels_list)} images")
        masks = [self._check_mask(mask, pixels.shape[:2]) for mask, pixels in zip(masks, pixels_list)]
        if any(mask is not None for mask in masks) and not self.pipeline.fills_region:
            raise ValueError(f"a text mask needs a pipeline that fills a region, not {self.removal!r}")
        task_list = [Task.parse(t) for t in tasks]
        run_list = self._prompts(task_list, masks_given=all(mask is not None for mask in masks))
        resized = [i for i, pixels in enumerate(pixels_list) if self._tile_for(pixels.shape[:2]) is None]
        model_pairs = dict(zip(resized, self._run_resized([pixels_list[i] for i in resized], run_list)))
        return [self._decode(pixels, task_list, run_list, model_pairs.get(i), mask)
                for i, (pixels, mask) in enumerate(zip(pixels_list, masks))]

    def _prompts(self, task_list: list[Task], *, masks_given: bool) -> list[Task]:
        """The model prompts to run for these tasks: the removal pipeline may add the text prompt (its
        finder) and drop the removal prompt (a Telea fill whose model output would not be kept)."""
        run_list = list(task_list)
        if Task.TEXT_REMOVAL in task_list:
            if self.pipeline.finder == "model-text" and not masks_given and Task.TEXT_SEGMENTATION not in run_list:
                run_list.append(Task.TEXT_SEGMENTATION)
            if not self.pipeline.runs_removal_prompt(self.keep_output):
                run_list.remove(Task.TEXT_REMOVAL)
        if Task.TAMPERED_TEXT_DETECTION in task_list and self.tampering == "words" and not self.keep_output:
            run_list.remove(Task.TAMPERED_TEXT_DETECTION)  # the words' classes come from the detector + classifier
        return run_list

    def _decode(
        self, pixels: np.ndarray, task_list: list[Task], run_list: list[Task],
        model_pairs: list[tuple[np.ndarray, np.ndarray]] | None, mask: np.ndarray | None = None,
    ) -> list[Prediction]:
        """One image's results: from its resized model outputs (`model_pairs`), or, for None, its tiles."""
        height, width = pixels.shape[:2]
        tile = self._tile_for(pixels.shape[:2])
        if model_pairs is not None:
            bands = resized_bands([pair[1] for pair in model_pairs], height, width, BAND_ROWS)
        else:
            assert tile is not None
            bands = self._tiled_bands(pixels, run_list, tile)
        removal = Task.TEXT_REMOVAL in task_list
        finder = self.pipeline.finder if removal and mask is None else None
        whole_text = None
        if finder == "model-text" and tile is not None and self.tile == "auto":
            # Two scales find the text to erase: native tiles see small print, the whole image resized sees
            # characters larger than a tile (posters), of which tiles find only the edges. On real photos
            # (`upocr evaluate real`) the union erased more words than either scale alone.
            whole_text = self._run_resized([pixels], [Task.TEXT_SEGMENTATION])[0][0][1]
        # One detector pass serves every task that finds words (removal's only when no mask replaces it).
        finds_words = finder == "words" or any(self.finds_words(t) for t in task_list if t != Task.TEXT_REMOVAL)
        regions = self.word_detector.detect(pixels) if finds_words else None
        decoder = BandDecoder(self, pixels, task_list, run_list, tile, whole_text, finder)
        for top, bottom, outputs in bands:
            decoder.add(top, bottom, outputs)
        pairs = dict(zip(run_list, model_pairs)) if model_pairs is not None else {}  # per task the model ran
        return [decoder.finish(task, pairs.get(task), mask, regions) for task in task_list]

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

    @staticmethod
    def _check_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
        if mask is None:
            return None
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask shape {mask.shape} differs from the image's {shape}")
        return mask.astype(bool)

    def _tile_for(self, shape: tuple[int, int]) -> int | None:
        if self.tile is None:
            return None
        if self.tile == "auto":
            return self.size if shape[0] * shape[1] > AUTO_TILE_AREA_FACTOR * self.size**2 else None
        return int(self.tile)

    def _forward(self, batch: torch.Tensor, tasks: list[Task]) -> np.ndarray:
        """(B,3,h,w) float in [0,1] -> clamped float32 (B,3,h,w) full-resolution output as numpy.

        With removal="model-fill", removal items give the model's coarsest (1/4) output, upsampled."""
        with torch.inference_mode():
            with self._autocast():
                result = self.model(batch.to(self.device), list(tasks))
            if isinstance(result, (list, tuple)):
                full = result[-1]
                removal_items = [i for i, t in enumerate(tasks) if t == Task.TEXT_REMOVAL]
                if self.pipeline.coarse_output and removal_items and len(result) > 1:
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
        """Tiled mode (`upocr.tiling.tiled_bands`): tiles `batch_size` (tile, task) pairs per forward pass."""
        return tiled_bands(pixels, tile, self.overlap, len(tasks), self.batch_size,
                           lambda batch, indices: self._forward(batch, [tasks[t] for t in indices]))
