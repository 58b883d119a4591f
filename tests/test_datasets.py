"""Datasets and paired transforms: aligned tensors ready for training and evaluation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upocr.data import transforms
from upocr.data.datasets import build_dataset
from upocr.tasks import IGNORE_VALUE, Task

REAL = Path(__file__).parent / "fixtures" / "real_formats"
ALLOWED_TARGET_VALUES = (0.0, 1.0, IGNORE_VALUE)


def value_set(tensor: torch.Tensor) -> set[float]:
    """Distinct values, each snapped to the allowed target value it equals (float32 tolerance)."""
    snapped = set()
    for value in torch.unique(tensor).tolist():
        match = [a for a in ALLOWED_TARGET_VALUES if abs(value - a) < 1e-6]
        snapped.add(match[0] if match else value)
    return snapped


def test_removal_items_are_aligned_and_resized():
    dataset = build_dataset("removal", REAL, "test", size=64, augment=False)
    item = dataset[0]
    assert item["image"].shape == item["target"].shape == (3, 64, 64)
    assert item["mask"].shape == (1, 64, 64)
    assert item["task"] == int(Task.TEXT_REMOVAL) and item["name"] == "img_1"
    assert set(torch.unique(item["mask"]).tolist()) == {0.0, 1.0}
    # The text block (rows 12-22 of 40, cols 8-36 of 48) is dark in the input, light in the target
    # and 0 in the mask; the corner is background everywhere.
    assert item["mask"][0, 27, 35] == 0 and item["mask"][0, 2, 2] == 1
    assert item["image"][:, 27, 35].mean() < 0.2 < 0.6 < item["target"][:, 27, 35].mean()
    assert torch.allclose(item["image"][:, 2, 2], item["target"][:, 2, 2], atol=0.03)


def test_segmentation_train_is_train_plus_val_and_targets_encode_ignore():
    train = build_dataset(Task.TEXT_SEGMENTATION, REAL, "train", size=40, augment=False)
    assert [train[i]["name"] for i in range(len(train))] == ["a00001", "a00002"]
    item = build_dataset("segmentation", REAL, "test", size=40, augment=False)[0]
    target = item["target"]
    assert target.shape == (3, 40, 40) and torch.equal(item["mask"], torch.ones(1, 40, 40))
    assert value_set(target) == {0.0, 1.0, IGNORE_VALUE}  # nearest resize keeps the value set


def test_tampering_targets_are_one_hot_boxes():
    item = build_dataset("tampering", REAL, "test", size=50, augment=False)[0]
    target = item["target"]
    assert target.shape == (3, 50, 50)
    assert torch.equal(target.sum(0), torch.ones(50, 50))  # one-hot everywhere (no ignore without rotation)
    classes = target.argmax(0)
    assert set(torch.unique(classes).tolist()) == {0, 1, 2}
    assert classes[0, 49] == 0


@pytest.mark.parametrize("task", list(Task))
def test_augmented_items_keep_shapes_and_value_sets(task: Task):
    dataset = build_dataset(task, REAL, "train", size=48, augment=True, rng=random.Random(3))
    for _ in range(6):
        item = dataset[0]
        assert item["image"].shape == (3, 48, 48) and item["target"].shape == (3, 48, 48)
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        if task == Task.TEXT_REMOVAL:
            assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        else:
            assert value_set(item["target"]) <= set(ALLOWED_TARGET_VALUES)


def test_rotation_fills_mask_as_non_text_and_labels_as_ignore():
    rng = random.Random(0)
    image = Image.new("RGB", (20, 10), (255, 255, 255))
    sample = {"image": image, "label": image.copy(), "mask": Image.new("L", (20, 10), 0)}
    rotated = transforms.rotate(sample, rng, 30, transforms.NEW_PIXEL_FILL[Task.TEXT_REMOVAL])
    assert rotated["image"].size == rotated["mask"].size != (20, 10)  # expand=True
    assert np.asarray(rotated["mask"])[0, 0] == 1 and np.asarray(rotated["image"])[0, 0].tolist() == [0, 0, 0]
    seg = {"image": image, "label": Image.new("L", (20, 10), 1)}
    rotated = transforms.rotate(seg, random.Random(0), 30, transforms.NEW_PIXEL_FILL[Task.TEXT_SEGMENTATION])
    assert np.asarray(rotated["label"])[0, 0] == 255


def test_crop_and_flip_move_all_entries_together():
    rng = random.Random(1)
    grid = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    sample = {"image": Image.fromarray(np.repeat(grid[..., None], 3, 2)), "label": Image.fromarray(grid)}
    cropped = transforms.hflip(transforms.random_crop(sample, rng, 0.5, 0.8))
    assert np.array_equal(np.asarray(cropped["image"])[..., 0], np.asarray(cropped["label"]))
    assert cropped["label"].size != (16, 12)


def test_native_window_keeps_pixels_unresampled_and_pads_with_ignore():
    grid = np.arange(30 * 50, dtype=np.uint16).reshape(30, 50) % 251
    grid = grid.astype(np.uint8)
    sample = {"image": Image.fromarray(np.repeat(grid[..., None], 3, 2)), "label": Image.fromarray(grid)}
    fills = transforms.NEW_PIXEL_FILL[Task.TAMPERED_TEXT_DETECTION]
    window = transforms.native_window(sample, 40, fills, random.Random(2))
    image, label = np.asarray(window["image"])[..., 0], np.asarray(window["label"])
    assert window["image"].size == window["label"].size == (40, 40)
    # Wider than the window: a random 40-column slice, every pixel a copy (no resampling), same for both.
    left = int(np.flatnonzero(grid[0] == image[0, 0])[0])
    assert np.array_equal(image[:30], grid[:, left:left + 40]) and np.array_equal(label[:30], image[:30])
    # Shorter than the window: rows 30-39 are padding, black in the image and ignore in the label.
    assert (image[30:] == 0).all() and (label[30:] == 255).all()
    # Without an rng (evaluation) the window is the top-left one.
    top_left = transforms.native_window(sample, 40, fills)
    assert np.array_equal(np.asarray(top_left["label"])[:30], grid[:, :40])


def test_native_tampering_dataset_sees_the_file_at_its_own_resolution():
    resized = build_dataset("tampering", REAL, "test", size=32, augment=False)[0]
    native = build_dataset("tampering", REAL, "test", size=32, augment=False, native=True)[0]
    pixels = np.asarray(Image.open(next((REAL / "TamperedTextDetection").rglob("test_img/*.*"))).convert("RGB"))
    h, w = min(32, pixels.shape[0]), min(32, pixels.shape[1])
    assert torch.allclose(native["image"][:, :h, :w], torch.from_numpy(pixels[:h, :w].copy()).permute(2, 0, 1) / 255.0)
    assert not torch.equal(native["image"], resized["image"])
    augmented = build_dataset("tampering", REAL, "train", size=32, augment=True, rng=random.Random(0), native=True)
    assert augmented[0]["image"].shape == (3, 32, 32)


def test_color_jitter_changes_only_the_image_colours():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    jittered = transforms.color_jitter(image, random.Random(5), 0.5, 0.5, 0.5, 0.5)
    assert jittered.size == image.size and jittered.mode == "RGB"
    assert not np.array_equal(np.asarray(jittered), np.asarray(image))


def test_removal_label_or_mask_of_another_size_is_an_error_unless_a_pixel_or_two_off(tmp_path):
    from upocr.data.layouts import LayoutError

    base = tmp_path / "TextRemoval" / "SCUT-ENS" / "train"
    for folder in ("image", "label", "mask"):
        (base / folder).mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(base / "image" / "a.jpg")
    Image.new("RGB", (65, 63), (10, 200, 10)).save(base / "label" / "a.jpg")  # rounding: resized onto the input
    Image.new("L", (64, 64), 255).save(base / "mask" / "a.jpg")
    dataset = build_dataset("removal", tmp_path, "train", size=64, augment=False)
    assert dataset[0]["target"].shape == (3, 64, 64)
    Image.new("RGB", (7, 300), (10, 200, 10)).save(base / "label" / "a.jpg")  # the 7x300 label of D14
    with pytest.raises(LayoutError, match=r"label/a.jpg: size 7x300 differs from .*image/a.jpg 64x64"):
        dataset[0]
    with pytest.raises(LayoutError, match=r"label/a.jpg: size 7x300"):
        dataset.check_sample(0, full=False)
