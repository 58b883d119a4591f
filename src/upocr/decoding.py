"""From the model's outputs to the tasks' results: `Prediction`, and the band decoder behind `Predictor`.

The Predictor (`upocr.predict`) runs the model on a resized image or on tiles; the outputs reach
`BandDecoder` in row bands, which decodes each task's result at the original resolution as they arrive
and, once all bands are in, composes text removal as the Predictor's pipeline says (`upocr.removal`):
region from the finder (the model's text mask, the word detector's polygons, a given mask, the model's
change), filled by the filler (Telea, the model's output). Nothing here runs the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from upocr.inpaint import dilate, telea_inpaint
from upocr.removal import (
    CHANGE_BLUR_SIGMA,
    SEGMENTATION_FINDERS,
    WORDS_SEGMENTATION_MARGIN,
    change_difference,
    change_radius,
    changed_pixels,
    composite,
    feather_text,
    removal_change_mask,
    spread_change,
)
from upocr.strokes import confirmed_strokes, snap_to_ink
from upocr.tasks import Task
from upocr.tiling import BAND_ROWS, RowFilterStream, filter_rows, gaussian_reach, resize_rows

if TYPE_CHECKING:
    from upocr.forensics.detect import WordTampering
    from upocr.predict import Predictor


@dataclass
class Prediction:
    """One task's result for one image, at the image's original resolution.

    `output` is the model's output image (clamped to [0, 1]) resized/blended back to (3, H, W) (kept with
    Predictor(keep_output=True), the default; 12 bytes a pixel, so the CLI and server drop it); the decoded
    result is in the field for the task: `image` (removal), `mask` (segmentation), `classes` (tampering).
    `regions`: the word detector's polygons where a pipeline used it (`upocr.detector.WordRegions`).
    """

    task: Task
    output: np.ndarray | None  # float32 (3, H, W) in [0, 1]; None unless the Predictor keeps outputs
    image: np.ndarray | None = None  # uint8 (H, W, 3): text removed
    mask: np.ndarray | None = None  # bool (H, W): text pixels
    classes: np.ndarray | None = None  # uint8 (H, W): 0 background, 1 real text, 2 tampered text
    change_mask: np.ndarray | None = field(default=None, repr=False)  # float32 (H, W): removal blend weight
    regions: Any = field(default=None, repr=False)  # WordRegions | None
    # tampering "words": the per-word decisions the class map was painted from (`upocr.forensics.detect`)
    word_tampering: WordTampering | None = field(default=None, repr=False)

    @property
    def words(self) -> list[dict] | None:
        """tampering "words": each word's box, polygon, probability and flag (JSON-able); None otherwise."""
        return None if self.word_tampering is None else self.word_tampering.words()

    @property
    def result(self) -> np.ndarray:
        """The decoded result for this task (image, mask or classes)."""
        value = getattr(self, self.task.spec.result_field)
        assert value is not None
        return value


class BandDecoder:
    """Decodes one image's model outputs, arriving in row bands, into the tasks' results at full size.

    Full-size arrays are the results themselves (uint8 image, bool mask, uint8 classes), the model-text
    finder's bool text mask and the tiled blend's uint8 change map; float maps exist per band only, unless
    the predictor keeps the float outputs (`keep_output`). `finder`: the removal pipeline's finder for
    this image (None when there is no removal, or a given mask replaces it)."""

    def __init__(
        self,
        predictor: Predictor,
        pixels: np.ndarray,
        tasks: list[Task],
        run_list: list[Task],
        tile: int | None,
        whole_text: np.ndarray | None,
        finder: str | None,
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
        self.finder = finder
        self.text = np.empty((height, width), bool) if finder == "model-text" else None
        self.changes: RowFilterStream | None = None
        if finder == "model-change" and tile is not None:  # tiled: the change at full size
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

    def finish(self, task: Task, model_pair: tuple[np.ndarray, np.ndarray] | None,
               mask: np.ndarray | None, regions: Any) -> Prediction:
        """The Prediction of `task` once every band was added (removal: its pipeline's composition)."""
        output = self.outputs.get(task)
        result = self.results[task]
        pipeline = self.predictor.pipeline
        if task == Task.TAMPERED_TEXT_DETECTION and self.predictor.tampering == "words":
            return self._tampered_words(output, regions)
        if task == Task.TEXT_SEGMENTATION:
            return self._segmentation(output, result, regions)
        if task != Task.TEXT_REMOVAL or (pipeline.finder is None and mask is None):
            return Prediction(task, output, **{task.spec.result_field: result})
        predictor, pixels = self.predictor, self.pixels
        height, width = pixels.shape[:2]
        region, scale = self._region(mask, regions)
        if region is not None and pipeline.filler == "telea":
            change = region.astype(np.float32) if predictor.keep_output else None
            return Prediction(task, output, image=telea_inpaint(pixels, region), change_mask=change, regions=regions)
        if region is not None:  # the model's output, feathered outside the region
            feather = max(1.0, predictor.grow * scale)

            def weight_rows(top: int, bottom: int) -> np.ndarray:
                return filter_rows(region, top, bottom, gaussian_reach(feather / 2), lambda rows: feather_text(rows, feather))

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
        return Prediction(task, output, image=result, change_mask=change_mask, regions=regions)

    def _segmentation(self, output: np.ndarray | None, mask: np.ndarray, regions: Any) -> Prediction:
        """The text mask as the predictor's segmentation finder decides (`upocr.removal.SEGMENTATION_FINDERS`):
        snapped to the ink first (it may join a stroke's pieces), then the strokes the words confirm
        (`upocr.strokes.confirmed_strokes`: all of them on a page where the words confirm nearly all)."""
        finder = SEGMENTATION_FINDERS[self.predictor.segmentation]
        if finder.snaps_to_ink:
            mask = snap_to_ink(self.pixels, mask)
        if finder.in_words:
            mask = confirmed_strokes(mask, regions.mask(WORDS_SEGMENTATION_MARGIN))
        return Prediction(Task.TEXT_SEGMENTATION, output, mask=mask, regions=regions if finder.in_words else None)

    def _tampered_words(self, output: np.ndarray | None, regions: Any) -> Prediction:
        """Tampering by words: the detector's regions split into words, each judged by the forensic
        classifier against the image's other words (`upocr.forensics`) and painted grown to a word's extent
        as the labels draw it; the model's output is kept as is."""
        from upocr.forensics.detect import detect_tampered_words, split_into_words_and_extents

        words, extents = split_into_words_and_extents(self.pixels, regions.polygons)  # painted: the labels' extent
        found = detect_tampered_words(self.pixels, regions=words, extents=extents,
                                      threshold=self.predictor.tampering_threshold,
                                      classifier=self.predictor.word_classifier)
        return Prediction(Task.TAMPERED_TEXT_DETECTION, output, classes=found.classes, regions=regions,
                          word_tampering=found)

    def _region(self, mask: np.ndarray | None, regions: Any) -> tuple[np.ndarray | None, float]:
        """The region to fill, grown (None: the model-change finder), and the growth's pixel scale: a
        given mask and the word polygons grow in image pixels, the model's text mask in working-resolution
        pixels (converted to original-resolution pixels)."""
        grow = self.predictor.grow
        if mask is not None:
            return dilate(mask, grow), 1.0
        if self.finder == "words":  # (other tasks may have run the detector too: only this finder fills its regions)
            return regions.mask(grow), 1.0
        if self.text is None:
            return None, 1.0
        height, width = self.pixels.shape[:2]
        scale = 1.0 if self.tile is not None else math.sqrt(height * width) / self.predictor.size
        return dilate(self.text, max(1, round(grow * scale)) if grow else 0), scale
