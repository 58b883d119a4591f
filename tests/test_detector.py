"""The word detector (upocr.detector): DB post-processing, working sizes, the bundled ONNX file, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from upocr.detector import (
    BUNDLED_DETECTOR,
    MAX_SIDE,
    WordDetector,
    regions_from_probability,
    unclip,
    working_size,
)


def text_image(words=("HELLO", "upocr"), size=(480, 320)) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Dark words on a light background; their (left, top, right, bottom) ink boxes."""
    image = Image.new("RGB", size, (235, 232, 225))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=48)
    boxes = []
    for i, word in enumerate(words):
        xy = (40, 60 + i * 120)
        draw.text(xy, word, fill=(20, 20, 30), font=font)
        boxes.append(draw.textbbox(xy, word, font=font))
    return np.asarray(image), boxes


@pytest.fixture(scope="module")
def detector() -> WordDetector:
    return WordDetector()


@pytest.mark.parametrize(("height", "width"), [(1200, 1600), (9000, 9000), (300, 200), (100, 4000), (37, 53)])
def test_working_size_is_bounded_and_a_multiple_of_32(height, width):
    work_h, work_w = working_size(height, width)
    assert work_h % 32 == 0 and work_w % 32 == 0
    assert max(work_h, work_w) <= max(MAX_SIDE + 32, 736 * max(height, width) / min(height, width) + 32)
    if max(height, width) > MAX_SIDE and min(height, width) * MAX_SIDE / max(height, width) >= 736:
        assert max(work_h, work_w) <= MAX_SIDE + 16  # shrunk: a 9000 x 9000 photo costs what 2000 x 2000 does
    assert abs(work_h / work_w - height / width) < 0.1 * height / width + 32 / work_w


def test_regions_from_a_probability_map_are_grown_and_scored():
    probability = np.zeros((200, 300), np.float32)
    probability[40:60, 30:150] = 0.9  # a word, drawn shrunk as DB predicts it
    probability[120:140, 50:250] = 0.35  # above the binary threshold, but too faint to be text
    regions = regions_from_probability(probability)
    assert len(regions) == 1
    polygon, score = regions[0]
    assert score == pytest.approx(0.9, abs=0.06)  # the 2 x 2 dilation adds a rim of zeros
    left, top = polygon.min(axis=0)
    right, bottom = polygon.max(axis=0)
    assert left < 30 and top < 40 and right > 149 and bottom > 59  # unclipped beyond the shrunk core
    assert right - left < 155 and bottom - top < 55  # by DB's offset (area x 1.6 / perimeter: 14 px), not more
    boxes = regions_from_probability(probability, shape="box")
    assert len(boxes) == 1 and boxes[0][0].shape == (4, 2)


def test_unclip_offsets_by_area_over_perimeter():
    square = np.array([[10, 10], [50, 10], [50, 50], [10, 50]], np.float32)
    grown = unclip(square, ratio=1.6)  # distance = 1600 * 1.6 / 160 = 16 px
    left, top = grown.min(axis=0)
    right, bottom = grown.max(axis=0)
    assert left == pytest.approx(10 - 16, abs=1.5) and right == pytest.approx(50 + 16, abs=1.5)
    assert top == pytest.approx(10 - 16, abs=1.5) and bottom == pytest.approx(50 + 16, abs=1.5)


def test_the_bundled_detector_finds_each_word_and_nothing_else(detector):
    image, boxes = text_image()
    regions = detector.detect(image)
    mask = regions.mask(grow=0)
    assert mask.shape == image.shape[:2]
    ink = np.zeros_like(mask)
    for left, top, right, bottom in boxes:
        ink[top:bottom, left:right] = True
        assert mask[top:bottom, left:right].mean() > 0.8  # the word is covered
    assert mask[~ink].mean() < 0.15  # little beyond the words
    assert regions.mask(grow=3).sum() > mask.sum()
    assert all(0.5 <= score <= 1 for score in regions.scores)
    listed = regions.to_json()
    assert len(listed) == len(regions.polygons) >= 2 and all(len(r["points"]) >= 4 for r in listed)


def test_a_blank_image_has_no_regions(detector):
    regions = detector.detect(np.full((240, 320, 3), 200, np.uint8))
    assert regions.polygons == [] and not regions.mask(3).any()


def test_a_huge_image_runs_at_a_bounded_working_size(detector):
    image = np.full((4800, 2400, 3), 210, np.uint8)  # 11.5 MP: the detector still sees at most 2000 px
    probability = detector.probability(image)
    assert max(probability.shape) <= MAX_SIDE + 16


def test_missing_corrupt_and_foreign_detector_files_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx: detector model not found"):
        WordDetector(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(BUNDLED_DETECTOR.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"corrupt\.onnx: not a readable ONNX detector") as caught:
        WordDetector(corrupt)
    assert "\n" not in str(caught.value)


def test_a_model_that_is_not_a_db_detector_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0)], "not-db",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "mean.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(ValueError, match=r"mean\.onnx: not a DB text detector"):
        WordDetector(path).detect(np.zeros((64, 64, 3), np.uint8))
