"""Stroke clean-up of a text mask (upocr.strokes) and the segmentation finders built on it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from upocr.predict import Predictor
from upocr.removal import SEGMENTATION_FINDERS
from upocr.strokes import components_touching, confirmed_strokes, snap_to_ink
from test_detector import text_image


def stroke_image(height: int = 120, width: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased dark strokes on a textured light background; their ink (pixels darker than halfway)."""
    rng = np.random.default_rng(0)
    background = cv2.resize(rng.integers(190, 240, (height // 10, width // 10, 3)).astype(np.uint8), (width, height))
    image = background.copy()
    for row in range(25, height, 40):
        cv2.putText(image, "Ink 42", (10, row), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (30, 25, 40), 2, cv2.LINE_AA)
    darkness = background.astype(int).mean(axis=2) - image.astype(int).mean(axis=2)
    return image, darkness > 0.5 * darkness.max()


def test_snapping_a_thinned_mask_recovers_the_ink_rim():
    image, ink = stroke_image()
    thin = cv2.erode(ink.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # the model's habit: a stroke's core only
    snapped = snap_to_ink(image, thin)

    def iou(mask: np.ndarray) -> float:
        return (mask & ink).sum() / (mask | ink).sum()

    assert iou(thin) < 0.6 and iou(snapped) > 0.85
    assert not (snapped & ~cv2.dilate(thin.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)).any()  # reach


def test_snapping_in_bands_equals_one_pass_and_keeps_an_empty_mask_empty():
    image, ink = stroke_image(150, 90)
    thin = cv2.erode(ink.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    np.testing.assert_array_equal(snap_to_ink(image, thin, band_rows=7), snap_to_ink(image, thin, band_rows=1000))
    assert not snap_to_ink(image, np.zeros(ink.shape, bool)).any()


def test_snapping_keeps_the_mask_where_no_paper_is_in_reach():
    image = np.full((40, 40, 3), 30, np.uint8)  # ink everywhere: no paper colour to compare with
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    np.testing.assert_array_equal(snap_to_ink(image, np.ones((40, 40), bool)), np.ones((40, 40), bool))
    assert snap_to_ink(image, mask)[10:30, 10:30].all()


def test_components_touching_keeps_whole_components_and_drops_the_others():
    mask = np.zeros((30, 60), bool)
    mask[5:25, 5:8] = True  # a tall stroke: only its middle lies in the region
    mask[10:12, 40:55] = True  # elsewhere
    region = np.zeros_like(mask)
    region[14:16, 0:20] = True
    kept = components_touching(mask, region)
    assert kept[5:25, 5:8].all() and not kept[:, 30:].any()
    assert not components_touching(mask, np.zeros_like(mask)).any()


def test_confirmed_strokes_keeps_everything_only_where_the_words_confirm_nearly_all_of_it():
    mask = np.zeros((40, 100), bool)
    mask[5:35, 5:45] = True  # 1200 px: a word's strokes, in the region
    mask[10:14, 60:70] = True  # 40 px elsewhere (3 % of the mask): a handwritten mark the detector missed
    region = np.zeros_like(mask)
    region[15:25, 0:50] = True
    np.testing.assert_array_equal(confirmed_strokes(mask, region), mask)  # 97 % confirmed: a page it reads
    mask[10:30, 60:100] = True  # now 800 px elsewhere (40 %): clutter on a photo
    kept = confirmed_strokes(mask, region)
    assert kept[5:35, 5:45].all() and not kept[:, 60:].any()
    assert not confirmed_strokes(np.zeros_like(mask), region).any()


class InkEverywhere:
    """A model whose segmentation output marks every pixel as text."""

    def __call__(self, images: torch.Tensor, tasks) -> torch.Tensor:
        return torch.zeros_like(images) + 0.9


class DarkIsText:
    """A model whose segmentation output is the darkness of the (resized) input, eroded: a stroke core."""

    def __call__(self, images: torch.Tensor, tasks) -> torch.Tensor:
        darkness = (images.mean(dim=1, keepdim=True) < 0.35).float()
        core = -torch.nn.functional.max_pool2d(-darkness, 3, stride=1, padding=1)
        return core.expand_as(images).clone()


def test_the_finders_table_names_what_each_finder_does():
    assert list(SEGMENTATION_FINDERS) == ["model", "model-ink", "model-in-words"]
    assert not SEGMENTATION_FINDERS["model"].snaps_to_ink and not SEGMENTATION_FINDERS["model"].in_words
    assert SEGMENTATION_FINDERS["model-in-words"].snaps_to_ink and SEGMENTATION_FINDERS["model-in-words"].in_words
    with pytest.raises(ValueError, match="segmentation must be one of model, model-ink, model-in-words"):
        Predictor(InkEverywhere(), tile=None, size=64, segmentation="ink")


def test_model_in_words_keeps_only_the_strokes_touching_the_detected_words():
    image, boxes = text_image()
    image = image.copy()
    image[250:300, 300:460] = (25, 25, 25)  # a dark block, no text: the model's false positive
    predictor = Predictor(DarkIsText(), tile=64, size=64, keep_output=False)
    model = predictor.predict(image, "segmentation")
    assert model.mask[250:300, 300:460].mean() > 0.9 and model.regions is None
    in_words = predictor.with_options(segmentation="model-in-words").predict(image, "segmentation")
    assert not in_words.mask[250:300, 300:460].any()  # touches no word: dropped
    for left, top, right, bottom in boxes:
        assert in_words.mask[top:bottom, left:right].mean() > 0.1  # the letters stay
    assert in_words.regions is not None and predictor.with_options(segmentation="model-in-words").finds_words("segmentation")
    assert not predictor.with_options(segmentation="model-ink").finds_words("segmentation")
