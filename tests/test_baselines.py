"""Classical baselines do what their names say on tiny images."""

from __future__ import annotations

import numpy as np

from upocr.evaluate.baselines import (
    all_real_classes,
    detect_text_strokes,
    detected_word_boxes,
    otsu_text_mask,
    sauvola_text_mask,
)
from upocr.inpaint import dilate, telea_inpaint


def _gradient_with_strokes(dark: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A smooth horizontal gradient with three thin vertical 'strokes' (3 px wide)."""
    ramp = np.linspace(90, 170, 96).astype(np.uint8)
    image = np.repeat(np.repeat(ramp[None, :, None], 64, axis=0), 3, axis=2).copy()
    strokes = np.zeros((64, 96), bool)
    for x in (20, 45, 70):
        strokes[20:44, x : x + 3] = True
    image[strokes] = 10 if dark else 250
    return image, strokes


def test_dilate_grows_by_the_given_pixels():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    assert dilate(mask, 2).sum() == 17  # OpenCV's 5x5 ellipse: 1 + 3 rows of 5 + 1
    assert dilate(mask, 2)[4].sum() == 5 and dilate(mask, 2)[:, 4].sum() == 5
    assert dilate(mask, 0).sum() == 1


def test_telea_fills_the_masked_region_from_its_surroundings():
    image = np.full((32, 32, 3), 120, np.uint8)
    image[12:18, 12:18] = 0
    mask = np.zeros((32, 32), bool)
    mask[12:18, 12:18] = True
    filled = telea_inpaint(image, mask)
    assert np.abs(filled.astype(int) - 120).max() <= 2
    assert np.array_equal(filled[~mask], image[~mask])


def test_stroke_detector_finds_thin_strokes_not_a_flat_image():
    image, strokes = _gradient_with_strokes()
    found = detect_text_strokes(image)
    assert found[strokes].mean() > 0.95
    assert found[~dilate(strokes, 4)].mean() < 0.02
    assert not detect_text_strokes(np.full((32, 32, 3), 128, np.uint8)).any()


def test_otsu_takes_the_minority_side_as_text_in_both_polarities():
    for dark in (True, False):
        image, strokes = _gradient_with_strokes(dark)
        background = np.full_like(image, 128 if dark else 100)
        background[strokes] = image[strokes]
        assert np.array_equal(otsu_text_mask(background), strokes)


def test_sauvola_handles_an_uneven_background_and_both_polarities():
    for dark in (True, False):
        image, strokes = _gradient_with_strokes(dark)
        mask = sauvola_text_mask(image)
        assert mask[strokes].mean() > 0.9
        assert mask[~strokes].mean() < 0.05


def test_all_real_marks_every_text_pixel_real():
    gt = np.array([[0, 1, 2], [2, 0, 1]], np.uint8)
    assert all_real_classes(gt).tolist() == [[0, 1, 1], [1, 0, 1]]


def test_word_boxes_merge_nearby_strokes_into_one_filled_box():
    image = np.full((64, 96, 3), 128, np.uint8)
    word = np.zeros((64, 96), bool)
    for x in (30, 36, 42):  # three letters 3 px apart: one word
        word[24:40, x : x + 2] = True
    image[word] = 10
    boxes = detected_word_boxes(image)
    ys, xs = np.nonzero(boxes)
    assert boxes[24:40, 30:44].all()  # the gaps between letters are inside the word box
    assert boxes.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # one filled rectangle
    assert not detected_word_boxes(np.full((32, 32, 3), 128, np.uint8)).any()
