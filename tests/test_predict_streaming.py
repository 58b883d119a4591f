"""Streamed decoding (upocr.predict, bounded memory): the same results as a straightforward full-size
reference of the algorithm, for every task and removal mode, tiled and resized; and its memory bound."""

from __future__ import annotations

import math
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from upocr.inpaint import dilate, telea_inpaint
from upocr.predict import Predictor
from upocr.removal import composite, removal_change_mask
from upocr.tiling import RowFilterStream, resize_rows, tile_starts, tile_weights
from upocr.tasks import Task, decode_removal, decode_segmentation, decode_tampering

ALL = [Task.TEXT_REMOVAL, Task.TEXT_SEGMENTATION, Task.TAMPERED_TEXT_DETECTION]


def local_model(images: torch.Tensor, tasks) -> list[torch.Tensor]:
    """A stand-in whose outputs depend on neighbouring pixels (so tiles differ from the whole image) and
    on the task: removal lifts dark pixels, segmentation marks them, tampering permutes channels. Returns
    a coarse (1/4) and a full output like the model (model-fill uses the coarse one)."""
    blurred = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
    full = blurred.clone()
    for i, task in enumerate(tasks):
        if task == Task.TEXT_REMOVAL:
            full[i] = torch.where(blurred[i] < 0.45, 0.8, blurred[i])
        elif task == Task.TEXT_SEGMENTATION:
            full[i] = 1 - blurred[i]
        else:
            full[i] = blurred[i].roll(1, dims=0) * torch.linspace(0.5, 1.5, images.shape[-1])
    return [F.avg_pool2d(full, 4), full]


def text_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth light background with dark strokes in several separate rows (several Telea regions)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(120, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.uint8)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    for row in range(8, height, 37):
        cv2.putText(image, "Ab3", (int(rng.integers(0, max(1, width - 30))), row), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (20, 20, 20), 1)
    return image


# ---------------------------------------------------------------------- the reference (full-size maps)


def reference(predictor: Predictor, pixels: np.ndarray, tasks: list[Task]) -> list[dict]:
    """The algorithm with full-size float maps, written plainly: tiled sums over the whole image or the
    resized output upsampled whole, then each task decoded at once."""
    run_list = list(tasks)
    fills = predictor.removal in ("model-fill", "telea-fill") and Task.TEXT_REMOVAL in tasks
    if fills and Task.TEXT_SEGMENTATION not in tasks:
        run_list.append(Task.TEXT_SEGMENTATION)
    height, width = pixels.shape[:2]
    tile = predictor._tile_for((height, width))
    pairs = None
    if tile is None:
        outputs, pairs = _reference_resized(predictor, pixels, run_list)
    else:
        outputs = _reference_tiled(predictor, pixels, run_list, tile)
    text_output = outputs[run_list.index(Task.TEXT_SEGMENTATION)] if fills else None
    if fills and tile is not None and predictor.tile == "auto":
        text_output = np.maximum(text_output, _reference_resized(predictor, pixels, [Task.TEXT_SEGMENTATION])[0][0])
    return [_reference_decode(predictor, pixels, task, outputs[i], None if pairs is None else pairs[i], text_output, tile)
            for i, task in enumerate(tasks)]


def _reference_resized(predictor, pixels, tasks):
    from PIL import Image

    height, width = pixels.shape[:2]
    small = np.array(Image.fromarray(pixels).resize((predictor.size,) * 2, Image.Resampling.BICUBIC))
    tensor = torch.from_numpy(small).permute(2, 0, 1).float().div_(255)
    result = predictor._forward(tensor.unsqueeze(0).expand(len(tasks), -1, -1, -1), tasks)
    outputs = [F.interpolate(torch.from_numpy(one)[None], size=(height, width), mode="bilinear",
                             align_corners=False)[0].clamp_(0, 1).numpy() for one in result]
    return outputs, [(small, one) for one in result]


def _reference_tiled(predictor, pixels, tasks, tile):
    height, width = pixels.shape[:2]
    padded_h, padded_w = max(height, tile), max(width, tile)
    pixels = np.pad(pixels, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="reflect")
    rows, cols = tile_starts(padded_h, tile, predictor.overlap), tile_starts(padded_w, tile, predictor.overlap)
    row_weights, col_weights = tile_weights(rows, tile), tile_weights(cols, tile)
    sums = np.zeros((len(tasks), 3, padded_h, padded_w), np.float32)
    total = np.zeros((padded_h, padded_w), np.float32)
    for r, top in enumerate(rows):
        for c, left in enumerate(cols):
            weight = np.outer(row_weights[r], col_weights[c])
            total[top : top + tile, left : left + tile] += weight
            crop = torch.from_numpy(np.ascontiguousarray(pixels[top : top + tile, left : left + tile]))
            batch = crop.permute(2, 0, 1).float().div(255)[None].expand(len(tasks), -1, -1, -1)
            for t, one in enumerate(predictor._forward(batch, tasks)):
                sums[t][:, top : top + tile, left : left + tile] += one * weight
    return [np.clip(s[:, :height, :width] / total[:height, :width], 0, 1) for s in sums]


def _reference_decode(predictor, pixels, task, output, pair, text_output, tile) -> dict:
    tensor = torch.from_numpy(output)
    if task == Task.TEXT_SEGMENTATION:
        return {"output": output, "mask": decode_segmentation(tensor, predictor.threshold).numpy()}
    if task == Task.TAMPERED_TEXT_DETECTION:
        return {"output": output, "classes": decode_tampering(tensor).numpy()}
    removed = decode_removal(tensor).numpy()
    if predictor.removal == "raw":
        return {"output": output, "image": removed, "change_mask": None}
    height, width = pixels.shape[:2]
    if predictor.removal in ("model-fill", "telea-fill"):
        text = decode_segmentation(torch.from_numpy(text_output), predictor.threshold).numpy()
        scale = 1.0 if tile is not None else math.sqrt(height * width) / predictor.size
        text = dilate(text, max(1, round(predictor.grow * scale)) if predictor.grow else 0)
        if predictor.removal == "telea-fill":
            filled = cv2.inpaint(np.ascontiguousarray(pixels), text.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
            return {"output": output, "image": filled, "change_mask": text.astype(np.float32)}
        radius = max(1.0, predictor.grow * scale)
        weight = np.clip(cv2.GaussianBlur(text.astype(np.float32), (0, 0), radius / 2), 0, 1)
        weight = np.maximum(weight, text)
    elif pair is None:
        weight = removal_change_mask(pixels, output)
    else:
        weight = removal_change_mask(*pair)
        if weight.shape != (height, width):
            weight = cv2.resize(weight, (width, height), interpolation=cv2.INTER_LINEAR)
    return {"output": output, "image": composite(removed, pixels, weight), "change_mask": weight}


# ---------------------------------------------------------------------- streamed == reference

CASES = [  # (height, width), tile, overlap, batch size
    ((90, 140), 32, 8, 1),
    ((150, 97), 64, 16, 3),
    ((40, 50), 64, 16, 2),  # smaller than a tile: reflect-padded
    ((300, 70), 64, 0, 7),  # no overlap; batches span tile rows
    ((129, 131), 32, 16, 64),  # odd size; one batch holds several tile rows
    ((90, 140), None, None, 1),  # resize mode
    ((64, 64), None, None, 2),  # resize mode at the working size
    ((20, 70), None, None, 1),  # resize mode, smaller than the working size
    ((150, 97), "auto", None, 4),  # auto: tiled (> 4 x 32^2 pixels) + the whole image for fill modes
]


@pytest.mark.parametrize("removal", ["raw", "blend", "model-fill", "telea-fill"])
@pytest.mark.parametrize("shape, tile, overlap, batch", CASES)
def test_streamed_results_equal_the_full_size_reference(shape, tile, overlap, batch, removal):
    size = 32 if tile == "auto" else 64
    predictor = Predictor(local_model, size=size, tile=tile, overlap=overlap, batch_size=batch, removal=removal)
    image = text_image(*shape, seed=shape[0])
    for tasks in (ALL, [Task.TEXT_REMOVAL]):  # removal alone: the fill modes add segmentation themselves
        expected = reference(predictor, image, tasks)
        for prediction, wanted in zip(predictor.predict_tasks(image, tasks), expected):
            np.testing.assert_allclose(prediction.output, wanted["output"], atol=1e-6)
            for name in ("mask", "classes", "image"):
                if name in wanted:
                    np.testing.assert_array_equal(getattr(prediction, name), wanted[name], err_msg=name)
            if wanted.get("change_mask") is not None:
                np.testing.assert_allclose(prediction.change_mask, wanted["change_mask"], atol=1e-6)


def test_the_fill_modes_erase_something_in_these_cases():
    """The comparison above means something: the stand-in finds text, and the fill changes pixels."""
    image = text_image(150, 97, seed=150)
    prediction = Predictor(local_model, size=64, tile=64, removal="telea-fill").predict(image, "removal")
    assert 0 < prediction.change_mask.mean() < 0.5
    assert (prediction.image != image).any(axis=2).mean() > 0.01


def test_without_kept_outputs_the_results_are_the_same():
    image = text_image(129, 131)
    kept = Predictor(local_model, size=64, tile=32, removal="blend").predict_tasks(image, ALL)
    dropped = Predictor(local_model, size=64, tile=32, removal="blend", keep_output=False).predict_tasks(image, ALL)
    for one, other in zip(kept, dropped):
        assert other.output is None and other.change_mask is None
        np.testing.assert_array_equal(one.result, other.result)


@pytest.mark.parametrize("tile", [None, 32])
def test_telea_fill_without_kept_outputs_skips_the_removal_prompt(tile):
    """The CLI's removal (telea-fill, keep_output=False) needs only the segmentation prompt's text mask."""
    seen: list[Task] = []

    def recording(images, tasks):
        seen.extend(Task.parse(t) for t in tasks)
        return local_model(images, tasks)

    image = text_image(129, 131)
    kept = Predictor(local_model, size=64, tile=tile, removal="telea-fill").predict(image, "removal")
    dropped = Predictor(recording, size=64, tile=tile, removal="telea-fill", keep_output=False).predict(image, "removal")
    assert seen and Task.TEXT_REMOVAL not in seen and set(seen) == {Task.TEXT_SEGMENTATION}
    assert dropped.output is None
    np.testing.assert_array_equal(kept.image, dropped.image)


def test_tiled_memory_is_bounded_by_the_results_not_the_float_maps():
    """1024 x 1024, 64 px tiles, segmentation + tampering: the float maps of the whole image take 12 bytes
    a pixel per task (24 MB of sums, 4 MB of weight totals, 24 MB of outputs: over 50 MB before streaming);
    streamed, numpy's peak is the two results (2 MB) plus a few tile rows of sums (~12 MB measured)."""
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    predictor = Predictor(local_model, size=64, tile=64, batch_size=16, keep_output=False)
    tracemalloc.start()
    try:
        predictor.predict_tasks(image, [Task.TEXT_SEGMENTATION, Task.TAMPERED_TEXT_DETECTION])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16_000_000, f"peak {peak / 1e6:.1f} MB"


# ---------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("source, target", [((64, 64), (90, 140)), ((64, 64), (1000, 37)), ((32, 48), (32, 300)), ((64, 64), (513, 1001))])
def test_resize_rows_equals_interpolating_the_whole(source, target):
    output = np.random.default_rng(1).random((3, *source), dtype=np.float32)
    whole = F.interpolate(torch.from_numpy(output)[None], size=target, mode="bilinear", align_corners=False)[0].numpy()
    bands = [resize_rows(output, *target, top, min(target[0], top + 17)) for top in range(0, target[0], 17)]
    np.testing.assert_allclose(np.concatenate(bands, axis=1), np.clip(whole, 0, 1), atol=1e-6)
    assert (np.concatenate(bands, axis=1) == np.clip(whole, 0, 1)).mean() > 0.999  # bit-equal but rare double roundings


def test_row_filter_stream_equals_filtering_the_whole():
    image = np.random.default_rng(2).random((203, 50), dtype=np.float32)
    blur = lambda rows: cv2.GaussianBlur(rows, (0, 0), 2.0)  # noqa: E731 - reach 9 rows
    stream = RowFilterStream(len(image), 10, blur)
    pieces, top = [], 0
    for height in [5, 30, 1, 64, 3, 100]:
        for first, last, rows in stream.push(top, top + height, image[top : top + height]):
            assert first == sum(len(p) for p in pieces)
            pieces.append(rows)
        top += height
    np.testing.assert_array_equal(np.concatenate(pieces), blur(image))


def test_telea_on_crops_equals_one_call_on_the_whole_image():
    image = text_image(400, 300, seed=3)
    text = np.zeros((400, 300), bool)
    text[10:20, 30:60] = text[12:30, 250:299] = True  # one row group, two column ranges
    text[24:27, 100:140] = True  # close to the first: the same crop
    text[200:230, 0:40] = text[390:400, 120:200] = True  # further groups, at the image border
    expected = cv2.inpaint(image, text.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    np.testing.assert_array_equal(telea_inpaint(image, text), expected)
    np.testing.assert_array_equal(telea_inpaint(image, np.zeros_like(text)), image)


def test_overlays_hold_no_float_copy_of_the_image():
    """segment-text / detect-tampering overlays used to tint a float32 copy of the whole image (12 bytes a
    pixel, plus its rounded copy): now floats exist for the tinted pixels only."""
    from upocr.visualize import overlay_mask

    image = np.full((1000, 1000, 3), 200, np.uint8)
    mask = np.zeros((1000, 1000), bool)
    mask[100:150] = True  # 5% text
    tracemalloc.start()
    try:
        overlay = overlay_mask(image, mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert overlay[0, 0].tolist() == [200, 200, 200] and overlay[120, 0].tolist() != [200, 200, 200]
    assert peak < 10_000_000, f"peak {peak / 1e6:.1f} MB"  # result 3 MB, class maps 2 MB (float copies: 24 MB)
