"""Text removal as parts: a *finder* says where the text is, a *region* step grows it, a *filler* paints it.

Every way `remove-text` can build its result is one `RemovalPipeline` in `REMOVAL_PIPELINES`, a
(finder, filler) pair with a name; the Predictor asks the pipeline which model prompts to run and how to
compose the result, and nothing else in the package reads a pipeline's name.

Finders (where the text is):
* "words": the pretrained PP-OCR word detector's polygons (`upocr.detector`), grown by `grow` pixels of
  the image. Best on real photos with the bundled synthetic-trained weights (docs/results.md);
* "model-text": the model's segmentation prompt at the weights' threshold, grown by `grow` pixels of the
  working resolution (on large tiled photos the tiles' mask united with the whole image's);
* "model-change": where the model's removal output differs from the input (the "blend" pipeline);
* None: no finder, the model's output everywhere ("raw", the original's result).
A mask the user gives (`--mask`, `predict_many(masks=...)`) replaces the finder of any fill pipeline.

Fillers (what paints the region):
* "telea": OpenCV's Telea inpainting (`upocr.inpaint.telea_inpaint`); the removal prompt is not run
  unless its output is kept;
* "model-coarse": the removal prompt's 1/4-resolution output, upsampled, feathered into the input (the
  model learned to erase far better at that scale than at full resolution, docs/results.md);
* "model": the removal prompt's full-resolution output (feathered by the change weight, or as it is).

Outside the region every pipeline but "raw" keeps the input bit-exact at its own resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Fill pipelines grow the found text by this many pixels, so anti-aliased edges and halos just outside the
# strokes are erased too (3 scored best of 2/3/4/6 on a validation split, and of 2/3/4/6 for the word
# polygons on real-dev: docs/results.md).
DEFAULT_GROW = 3

# "blend" (see removal_change_mask): a pixel counts as changed when the model output differs from the
# input by more than this (max over RGB, after a light blur), on a 0..1 scale (~20/255).
REMOVAL_CHANGE_THRESHOLD = 0.08
CHANGE_BLUR_SIGMA = 1.0  # the light blur before that threshold

FINDERS = ("words", "model-text", "model-change", None)
FILLERS = ("telea", "model-coarse", "model")


@dataclass(frozen=True)
class RemovalPipeline:
    """One way to remove text: `finder` (see module docstring) finds it, `filler` paints it."""

    name: str
    finder: str | None
    filler: str
    summary: str  # one line for --help, the demo and the page

    def __post_init__(self) -> None:
        if self.finder not in FINDERS or self.filler not in FILLERS:
            raise ValueError(f"{self.name}: unknown finder {self.finder!r} or filler {self.filler!r}")

    @property
    def fills_region(self) -> bool:
        """Whether the result fills a found region (a bool mask), so that a given mask can replace the finder."""
        return self.finder in ("words", "model-text")

    @property
    def coarse_output(self) -> bool:
        """Whether the removal prompt's 1/4-resolution output replaces its full-resolution one."""
        return self.filler == "model-coarse"

    def runs_removal_prompt(self, keep_output: bool) -> bool:
        """Telea does not read the removal prompt's output: it runs only when that output is kept."""
        return self.filler != "telea" or keep_output

    def describe(self) -> str:
        return f"{self.name}: {self.summary}"


REMOVAL_PIPELINES: dict[str, RemovalPipeline] = {
    pipeline.name: pipeline
    for pipeline in (
        RemovalPipeline("words-telea", "words", "telea",
                        "the word detector's polygons filled by Telea inpainting (best on real photos)"),
        RemovalPipeline("words-model", "words", "model-coarse",
                        "the word detector's polygons filled by the model's own (coarse) removal output"),
        RemovalPipeline("telea-fill", "model-text", "telea", "the model's text mask filled by Telea inpainting"),
        RemovalPipeline("model-fill", "model-text", "model-coarse",
                        "the model's text mask filled by its own (coarse) removal output"),
        RemovalPipeline("blend", "model-change", "model", "the model's removal output where it changed the image"),
        RemovalPipeline("raw", None, "model", "the model's removal output as it is (the original's result)"),
    )
}


# Text segmentation reuses the finders: which parts decide the text mask (`--segmentation`, `segmentation=`).
@dataclass(frozen=True)
class SegmentationFinder:
    """One way to decide the text mask: the model's mask, optionally snapped to the ink of the image
    (`upocr.strokes.snap_to_ink`) and optionally kept only where its strokes touch the word detector's
    regions grown by WORDS_SEGMENTATION_MARGIN px (`upocr.strokes.confirmed_strokes`): the detector drops
    the model's false positives (barcodes, textures), whole strokes keep the ascenders its polygons cut, and
    on a page where the words confirm nearly all strokes the rest are kept too (handwriting it misses)."""

    name: str
    snaps_to_ink: bool
    in_words: bool
    summary: str  # one line for --help

    def describe(self) -> str:
        return f"{self.name}: {self.summary}"


SEGMENTATION_FINDERS: dict[str, SegmentationFinder] = {
    finder.name: finder
    for finder in (
        SegmentationFinder("model", False, False, "the model's text mask as it is (the original's result)"),
        SegmentationFinder("model-ink", True, False, "the model's text mask, its edges snapped to the image's ink"),
        SegmentationFinder("model-in-words", True, True,
                           "the model's strokes that touch the word detector's regions, snapped to the ink "
                           "(best on real images)"),
    )
}
WORDS_SEGMENTATION_MARGIN = 3


def removal_pipeline(name: str) -> RemovalPipeline:
    """The pipeline called `name`, or a ValueError listing the names."""
    try:
        return REMOVAL_PIPELINES[name]
    except (KeyError, TypeError):
        raise ValueError(f"removal must be one of {', '.join(REMOVAL_PIPELINES)}, got {name!r}") from None


def pipelines_help() -> str:
    """The pipelines, one per line, for --help and docs."""
    return "; ".join(pipeline.describe() for pipeline in REMOVAL_PIPELINES.values())


# ---------------------------------------------------------------- composing a result


def feather_text(text: np.ndarray, radius: float) -> np.ndarray:
    """Fill weight of the model fillers: a bool text mask feathered outside (Gaussian, sigma radius / 2), whole inside."""
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
