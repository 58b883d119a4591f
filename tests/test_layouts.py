"""Readers of the three benchmark layouts, on hand-made files in the real formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upocr.data import layouts
from upocr.tasks import Task

REAL = Path(__file__).parent / "fixtures" / "real_formats"


@pytest.fixture
def real_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(REAL, root)
    return root


def test_available_tasks_lists_the_three_layouts(real_root: Path, tmp_path: Path):
    assert layouts.available_tasks(real_root) == [Task.TEXT_REMOVAL, Task.TAMPERED_TEXT_DETECTION,
                                                  Task.TEXT_SEGMENTATION]
    shutil.rmtree(real_root / "TextSegmentation")
    assert layouts.available_tasks(real_root) == [Task.TEXT_REMOVAL, Task.TAMPERED_TEXT_DETECTION]
    assert layouts.available_tasks(tmp_path / "nothing") == []


def test_removal_samples_pair_image_label_and_mask():
    samples = layouts.removal_samples(REAL, "test")
    assert [s.name for s in samples] == ["img_1"]
    sample = samples[0]
    assert sample.label == REAL / "TextRemoval/SCUT-ENS/test/label/img_1.jpg"
    assert sample.mask == REAL / "TextRemoval/SCUT-ENS/test/mask/img_1.jpg"


def test_removal_mask_is_one_outside_text_zero_on_text():
    mask = layouts.read_removal_mask(REAL / "TextRemoval/SCUT-ENS/test/mask/img_1.jpg")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert mask[12:22, 8:36].max() == 0  # black polygon = text
    assert mask[:8].min() == 1 and mask[30:].min() == 1


def test_missing_removal_label_names_the_file(real_root: Path):
    missing = real_root / "TextRemoval/SCUT-ENS/train/label/img_1.jpg"
    missing.unlink()
    with pytest.raises(layouts.LayoutError, match="label/img_1.jpg: missing"):
        layouts.removal_samples(real_root, "train")


def test_missing_layout_folder_is_named(tmp_path: Path):
    with pytest.raises(layouts.LayoutError, match="SCUT-ENS/train/image: folder not found"):
        layouts.removal_samples(tmp_path, "train")
    with pytest.raises(layouts.LayoutError, match="unknown split"):
        layouts.removal_samples(tmp_path, "val")


def test_segmentation_splits_follow_split_json():
    assert [s.name for s in layouts.segmentation_samples(REAL, "train")] == ["a00001"]
    assert [s.name for s in layouts.segmentation_samples(REAL, "val")] == ["a00002"]
    test = layouts.segmentation_samples(REAL, "test")
    assert test[0].label.name == "a00003_maskfg.png" and test[0].image.name == "a00003.jpg"


def test_segmentation_label_maps_text_effect_and_ignore():
    label = layouts.read_segmentation_label(REAL / "TextSegmentation/TextSeg/semantic_label/a00001_maskfg.png")
    assert label[11, 10] == 1  # 100 text
    assert label[8, 4] == 0  # 200 word effect -> background
    assert label[21, 32] == 255  # 255 ignore
    assert label[0, 0] == 0
    assert set(np.unique(label)) == {0, 1, 255}


def test_segmentation_rejects_bad_split_json_and_missing_files(real_root: Path):
    split = real_root / "TextSegmentation/TextSeg/split.json"
    split.write_text(json.dumps({"train": ["a00001", "zzz"]}))
    with pytest.raises(layouts.LayoutError, match="zzz.jpg: missing"):
        layouts.segmentation_samples(real_root, "train")
    split.write_text("{not json")
    with pytest.raises(layouts.LayoutError, match="split.json: not valid JSON"):
        layouts.segmentation_samples(real_root, "train")


def test_tampering_boxes_parse_real_format_with_spaces_and_blank_lines():
    gt = REAL / "TamperedTextDetection/Tampered-IC13/test_gt/img_1.txt"
    assert layouts.read_tampering_boxes(gt) == [(2, 3, 20, 10, 1), (15, 5, 30, 12, 2), (35, 20, 49, 29, 1)]
    samples = layouts.tampering_samples(REAL, "test")
    assert [(s.name, s.gt.name) for s in samples] == [("img_1", "img_1.txt")]


def test_tampering_label_fills_boxes_in_file_order_corners_inclusive():
    gt = REAL / "TamperedTextDetection/Tampered-IC13/test_gt/img_1.txt"
    classes = layouts.read_tampering_label(gt, size=(30, 50))
    assert classes.shape == (30, 50)
    assert classes[3, 2] == 1 and classes[10, 14] == 1  # first box, inclusive corners
    assert classes[8, 18] == 2  # overlap: the later (tampered) box is on top
    assert classes[12, 30] == 2 and classes[13, 30] == 0
    assert classes[29, 49] == 1
    assert classes[0, 0] == 0
    assert int((classes == 2).sum()) == (30 - 15 + 1) * (12 - 5 + 1)


@pytest.mark.parametrize("line, message", [("1,2,3,4,3", "label must be 1"), ("1,2,3,real", "expected 'x1,y1")])
def test_tampering_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str):
    gt = tmp_path / "img.txt"
    gt.write_text("1,1,2,2,1\n" + line + "\n")
    with pytest.raises(layouts.LayoutError, match=f"img.txt:2: {message}"):
        layouts.read_tampering_boxes(gt)


def test_unreadable_image_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "mask.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(layouts.LayoutError, match="mask.jpg: not a readable image"):
        layouts.read_removal_mask(bad)
    Image.new("L", (4, 4), 100).save(tmp_path / "ok.png")
    assert layouts.read_segmentation_label(tmp_path / "ok.png").min() == 1


# --------------------------------------------------------------------------------------------
# Writers: what `upocr synth` writes, read back by the readers above
# --------------------------------------------------------------------------------------------


def test_each_tasks_writer_writes_what_its_reader_reads(tmp_path: Path):
    ys, xs = np.mgrid[0:24, 0:32]
    image = np.stack([xs * 8, ys * 10, np.full_like(xs, 90)], 2).astype(np.uint8)  # smooth: JPEG keeps it
    mask = np.full((24, 32, 3), 255, np.uint8)
    mask[4:10, 5:20] = 0
    label = np.zeros((24, 32), np.uint8)
    label[5:9, 6:18], label[9, 6:18] = layouts.TEXTSEG_TEXT, layouts.TEXTSEG_IGNORE
    boxes = [(5, 4, 19, 9, layouts.REAL_TEXT), (1, 15, 8, 20, layouts.TAMPERED_TEXT)]
    pixels = {Task.TEXT_REMOVAL: layouts.RemovalPixels(image, image // 2, mask, 90),
              Task.TEXT_SEGMENTATION: layouts.SegmentationPixels(image, label, 90),
              Task.TAMPERED_TEXT_DETECTION: layouts.TamperingPixels(image, 90, boxes)}
    for task in Task:
        layouts.sample_writer(task)(tmp_path, "test", "s_000", pixels[task])
    layouts.add_to_textseg_split(tmp_path, "test", ["s_000"], val_every=8)
    assert layouts.available_tasks(tmp_path) == sorted(Task)
    removal = layouts.task_samples(Task.TEXT_REMOVAL, tmp_path, "test")[0]
    assert np.abs(np.asarray(layouts.read_rgb(removal.image), np.float32) - image).mean() < 3  # JPEG
    assert (layouts.read_removal_mask(removal.mask)[4:10, 5:20] == 0).all()
    segmentation = layouts.task_samples(Task.TEXT_SEGMENTATION, tmp_path, "test")[0]
    assert np.array_equal(layouts.read_segmentation_label(segmentation.label)[5:10, 6:18],
                          np.repeat([[1], [1], [1], [1], [layouts.IGNORE_CLASS]], 12, axis=1))  # PNG: exact
    tampering = layouts.task_samples(Task.TAMPERED_TEXT_DETECTION, tmp_path, "test")[0]
    assert layouts.read_tampering_boxes(tampering.gt) == boxes


def test_a_task_without_a_writer_is_refused_not_written_as_another(tmp_path: Path, monkeypatch):
    from upocr.data.synth import SynthError, generate_dataset

    monkeypatch.delitem(layouts.SAMPLE_WRITERS, Task.TEXT_SEGMENTATION)
    with pytest.raises(ValueError, match="no sample writer for text segmentation"):
        layouts.sample_writer(Task.TEXT_SEGMENTATION)
    with pytest.raises(SynthError, match="no sample writer for text segmentation"):
        generate_dataset(tmp_path / "data", count=1, seed=0, size=32, tasks=["removal", "segmentation"], workers=1,
                         progress=False)
    assert not (tmp_path / "data").exists()  # refused before anything was written
