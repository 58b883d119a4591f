"""upocr.predict: resize and tiled modes, decoding, the text-removal blend, options and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from upocr.io import write_image
from upocr.model import build_model
from upocr.predict import Predictor
from upocr.removal import removal_change_mask
from upocr.tiling import tile_starts, tile_weights
from upocr.tasks import Task

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (90, 140, 3), dtype=np.uint8)


def identity(images, tasks):
    return [images]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


# ------------------------------------------------------------------ tiling


@pytest.mark.parametrize("length, tile, overlap", [(64, 64, 16), (65, 64, 16), (200, 64, 16), (1000, 96, 0), (300, 64, 32)])
def test_tile_starts_cover_the_image_with_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    shared = [a + tile - b for a, b in zip(starts, starts[1:])]
    assert all(s >= overlap for s in shared)
    assert all(s < tile for s in shared)  # every tile adds new pixels


def test_tile_weights_of_neighbours_sum_to_one():
    starts = tile_starts(300, 64, 16)
    total = np.zeros(300)
    for start, weight in zip(starts, tile_weights(starts, 64)):
        assert weight.min() > 0
        total[start : start + 64] += weight
    np.testing.assert_allclose(total, 1, atol=1e-6)


@pytest.mark.parametrize(
    "shape, tile, overlap, batch", [((90, 140), 32, 8, 1), ((90, 140), 64, 16, 5), ((40, 50), 64, 16, 2), ((64, 64), 64, 0, 3)]
)
def test_tiling_an_identity_model_reproduces_the_input(shape, tile, overlap, batch):
    image = RNG.integers(0, 256, (*shape, 3), dtype=np.uint8)
    predictor = Predictor(identity, tile=tile, overlap=overlap, batch_size=batch, size=64, removal="blend")
    prediction = predictor.predict(image, "removal")
    assert prediction.output.shape == (3, *shape)
    np.testing.assert_allclose(prediction.output, image.transpose(2, 0, 1) / 255, atol=1e-5)
    np.testing.assert_array_equal(prediction.image, image)


def test_tiles_are_blended_without_seams():
    # A model that paints each tile with its own mean: the worst case for seams. Blending must spread
    # each jump between neighbouring tiles across the overlap instead of leaving a step.
    def tile_mean(images, tasks):
        return [images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images).clone()]

    image = np.zeros((64, 256, 3), np.uint8)
    image[:, 128:] = 255  # left tiles dark, right tiles bright
    blended = Predictor(tile_mean, tile=64, overlap=32, size=64).predict(image, "segmentation").output[0]
    hard = Predictor(tile_mean, tile=64, overlap=0, size=64).predict(image, "segmentation").output[0]
    step = lambda out: np.abs(np.diff(out, axis=1)).max()
    assert step(hard) > 0.3  # without overlap the tile edges show
    assert step(blended) < 0.06  # with it, no step is bigger than a few percent
    assert blended[:, 0] == pytest.approx(0) and blended[:, -1] == pytest.approx(1)


def test_tiled_tiny_model_does_not_depend_on_batch_size(tiny_model):
    single = Predictor(tiny_model, tile=64, overlap=16, batch_size=1, size=64).predict(IMAGE, "tampering")
    batched = Predictor(tiny_model, tile=64, overlap=16, batch_size=6, size=64).predict(IMAGE, "tampering")
    np.testing.assert_allclose(single.output, batched.output, atol=1e-4)


def test_auto_tiles_only_large_images():
    predictor = Predictor(identity, tile="auto", size=64)
    assert not predictor.uses_tiles(128, 128)  # 4 x 64^2 pixels: resized
    assert predictor.uses_tiles(129, 128)
    assert not Predictor(identity, size=64, tile=None).uses_tiles(4000, 4000)
    assert Predictor(identity, size=64).tile == "auto"  # the default: small print survives in large photos
    assert Predictor(identity, tile=64, size=64).uses_tiles(10, 10)


# ------------------------------------------------------------------ resize mode and decoding


def test_resize_mode_is_the_original_pipeline(tiny_model):
    prediction = Predictor(tiny_model, size=64).predict(IMAGE, "segmentation")
    # by hand: PIL bicubic to 64x64, forward, clamp, bilinear (align_corners=False) back
    small = np.asarray(Image.fromarray(IMAGE).resize((64, 64), Image.Resampling.BICUBIC))
    with torch.inference_mode():
        out = tiny_model(torch.from_numpy(small.copy()).permute(2, 0, 1)[None].float() / 255, [Task.TEXT_SEGMENTATION])[-1]
    expected = F.interpolate(out.clamp(0, 1), size=(90, 140), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(prediction.output, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(prediction.mask, expected.mean(0).numpy() > 0.4)


@pytest.mark.parametrize("tile", [None, 64])
def test_tiny_model_results_have_the_original_resolution_and_value_sets(tiny_model, tile):
    removal, segmentation, tampering = Predictor(tiny_model, size=64, tile=tile, batch_size=6).predict_tasks(
        IMAGE, ["removal", "segmentation", "tampering"]
    )
    assert removal.task == Task.TEXT_REMOVAL and removal.image.shape == (90, 140, 3) and removal.image.dtype == np.uint8
    assert segmentation.mask.shape == (90, 140) and segmentation.mask.dtype == bool
    assert tampering.classes.shape == (90, 140) and set(np.unique(tampering.classes)) <= {0, 1, 2}
    for prediction in (removal, segmentation, tampering):
        assert prediction.output.shape == (3, 90, 140) and prediction.output.dtype == np.float32
        assert 0 <= prediction.output.min() and prediction.output.max() <= 1


def test_several_tasks_in_one_batch_match_single_runs(tiny_model):
    predictor = Predictor(tiny_model, size=64, batch_size=3)
    together = predictor.predict_tasks(IMAGE, ["tampering", "removal", "segmentation"])
    for prediction in together:
        alone = predictor.predict(IMAGE, prediction.task)
        # float32 kernels sum in another order for batches of 3 than of 1 (1.3e-5 seen); a task mix-up
        # would differ by orders of magnitude more.
        np.testing.assert_allclose(prediction.output, alone.output, atol=1e-4)


def test_several_images_share_forward_passes_and_match_single_runs(tiny_model):
    """A folder's small images go through the model together (`predict_many`); a large one is tiled alone."""
    batches: list[int] = []

    def recording(images, tasks):
        batches.append(len(images))
        return tiny_model(images, tasks)

    rng = np.random.default_rng(5)
    small = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(90, 140, 3), (40, 30, 3), (64, 64, 3)]]
    large = rng.integers(0, 256, (150, 140, 3), dtype=np.uint8)  # > 4 x 64^2 pixels: tiled under "auto"
    tasks = ["removal", "tampering"]  # removal also runs segmentation (the fill's text mask): 3 per image
    predictor = Predictor(recording, size=64, batch_size=4)
    many = predictor.predict_many([small[0], large, small[1], small[2]], tasks)
    assert batches[:3] == [4, 4, 1]  # the 9 (small image, task) pairs, 4 at a time; then the large one's tiles
    alone = Predictor(tiny_model, size=64, batch_size=1)
    for image, predictions in zip([small[0], large, small[1], small[2]], many):
        for prediction, single in zip(predictions, alone.predict_tasks(image, tasks)):
            assert prediction.task == single.task and prediction.result.shape[:2] == image.shape[:2]
            # batches of 4 sum in another order than of 1 (see above); another image's output would not be close
            np.testing.assert_allclose(prediction.output, single.output, atol=1e-4)


def test_segmentation_threshold_and_tampering_argmax():
    half = lambda images, tasks: [torch.full_like(images, 0.5)]
    assert Predictor(half, size=64, threshold=0.4).predict(IMAGE, "segmentation").mask.all()
    assert not Predictor(half, size=64, threshold=0.6).predict(IMAGE, "segmentation").mask.any()

    def tampered_right_half(images, tasks):
        out = torch.zeros_like(images)
        out[:, 0] = 1  # background
        out[:, :, :, images.shape[-1] // 2 :] = torch.tensor([0.0, 0.1, 0.9])[:, None, None]
        return [out]

    classes = Predictor(tampered_right_half, size=64).predict(IMAGE, "tampering").classes
    assert set(np.unique(classes)) == {0, 2}
    assert (classes[:, :60] == 0).all() and (classes[:, 80:] == 2).all()


def test_predict_reads_paths(tmp_path, tiny_model):
    write_image(tmp_path / "in.png", IMAGE)
    from_path = Predictor(tiny_model, size=64).predict(tmp_path / "in.png", "removal")
    from_array = Predictor(tiny_model, size=64).predict(IMAGE, "removal")
    np.testing.assert_array_equal(from_path.image, from_array.image)


def test_bf16_precision_runs_and_stays_close(tiny_model):
    fp32 = Predictor(tiny_model, size=64).predict(IMAGE, "removal").output
    bf16 = Predictor(tiny_model, size=64, precision="bf16").predict(IMAGE, "removal").output
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert np.abs(bf16 - fp32).mean() < 0.05


# ------------------------------------------------------------------ text removal keeps untouched pixels


def erase_square(images, tasks):
    """A fake removal model: paints a fixed square white (in relative coordinates), leaves the rest."""
    out = images.clone()
    h, w = images.shape[-2:]
    out[:, :, h // 4 : h // 2, w // 4 : w // 2] = 1.0
    return [out]


def test_removal_keeps_input_pixels_where_the_model_changed_nothing():
    image = RNG.integers(0, 200, (300, 400, 3), dtype=np.uint8)  # larger than the working size
    prediction = Predictor(erase_square, size=64, tile=None, removal="blend").predict(image, "removal")
    changed = prediction.change_mask > 0
    assert 0.04 < changed.mean() < 0.3  # about the square (1/16 of the image) plus a feathered margin
    assert not changed[:40].any() and not changed[:, -80:].any()
    np.testing.assert_array_equal(prediction.image[~changed], image[~changed])  # sharp, untouched
    assert (prediction.image[90:135, 120:180] >= 250).all()  # the erased area is the model's (white)
    # without the blend, the whole picture is the (blurry) resized model output
    raw = Predictor(erase_square, size=64, tile=None, removal="raw").predict(image, "removal")
    assert raw.change_mask is None
    assert (raw.image[~changed] != image[~changed]).mean() > 0.5


def test_removal_blend_in_tiled_mode_is_exact_outside_the_change():
    image = RNG.integers(0, 200, (100, 150, 3), dtype=np.uint8)
    prediction = Predictor(erase_square, tile=64, overlap=16, size=64, removal="blend").predict(image, "removal")
    unchanged = prediction.change_mask == 0
    assert unchanged.mean() > 0.3
    np.testing.assert_array_equal(prediction.image[unchanged], image[unchanged])


def test_change_mask_is_zero_for_an_unchanged_image_and_covers_a_change():
    image = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    output = image.transpose(2, 0, 1).astype(np.float32) / 255
    assert removal_change_mask(image, output).max() == 0
    output[:, 20:30, 20:30] = 1 - output[:, 20:30, 20:30]
    weight = removal_change_mask(image, output)
    assert weight[22:28, 22:28].min() > 0.95 and weight[0:5, 0:5].max() == 0


def text_on_gradient(height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, clean background, text mask): dark 3-px strokes on a smooth horizontal gradient."""
    ramp = np.linspace(90, 170, width).astype(np.uint8)
    clean = np.repeat(np.repeat(ramp[None, :, None], height, axis=0), 3, axis=2).copy()
    text = np.zeros((height, width), bool)
    for x in range(30, 90, 12):
        text[30:60, x : x + 3] = True
    image = clean.copy()
    image[text] = 10
    return image, clean, text


def text_finder(coarse_value: float = 0.5):
    """A fake model: the segmentation prompt answers "text" for dark pixels (the strokes of
    text_on_gradient, in any tile), the removal prompt's full output is the input unchanged and its
    coarse (1/4) output a flat grey."""

    def model(images, tasks):
        full = images.clone()
        for i, task in enumerate(tasks):
            if task == Task.TEXT_SEGMENTATION:
                full[i] = (images[i].mean(0, keepdim=True) < 0.3).float().expand(3, -1, -1)
        quarter = torch.full_like(images[:, :, ::4, ::4], coarse_value)
        return [quarter, images[:, :, ::2, ::2], full]

    return model


@pytest.mark.parametrize("tile", [None, 64])
def test_telea_fill_erases_the_model_text_mask_and_keeps_everything_else(tile):
    image, clean, text = text_on_gradient()
    prediction = Predictor(text_finder(), size=64, tile=tile, overlap=16, removal="telea-fill").predict(image, "removal")
    erased = prediction.change_mask > 0
    assert erased[text].all()  # every stroke pixel is inside the grown mask
    assert not erased[:20].any() and not erased[70:].any()  # grown by a few pixels, not the whole image
    np.testing.assert_array_equal(prediction.image[~erased], image[~erased])
    # Telea continues the gradient: the strokes are gone (dark 10 -> about the background's 90..170)
    error = np.abs(prediction.image.astype(int) - clean.astype(int))[text]
    assert error.mean() < 8 and np.abs(image.astype(int) - clean.astype(int))[text].mean() > 70


@pytest.mark.parametrize("tile", [None, 64])
def test_grow_sets_how_far_the_fill_reaches_past_the_strokes(tile):
    image, _, text = text_on_gradient()
    erased = {
        grow: Predictor(text_finder(), size=64, tile=tile, overlap=16, removal="telea-fill", grow=grow)
        .predict(image, "removal").change_mask > 0
        for grow in (0, 3, 8)
    }
    if tile is not None:  # native tiles: the model's own text mask, exactly (resized, its edges move a pixel)
        np.testing.assert_array_equal(erased[0], text)
    assert erased[0][text].mean() > 0.9 and erased[0].sum() < 1.5 * text.sum()  # no growth: the strokes
    assert erased[3].sum() > erased[0].sum() and erased[8].sum() > erased[3].sum()
    assert (erased[3] <= erased[8]).all()  # more growth covers all that less growth did


def test_model_fill_paints_the_mask_with_the_coarse_removal_output():
    image, _, text = text_on_gradient()
    prediction = Predictor(text_finder(coarse_value=0.5), size=64, removal="model-fill").predict(image, "removal")
    assert np.abs(prediction.image[text].astype(int) - 128).max() <= 1  # the coarse output's grey
    far = prediction.change_mask == 0
    assert far.mean() > 0.5
    np.testing.assert_array_equal(prediction.image[far], image[far])
    assert prediction.output.shape == (3, *text.shape) and abs(float(prediction.output.mean()) - 0.5) < 1e-6


def test_fill_modes_run_the_segmentation_prompt_once_with_the_removal():
    image, _, text = text_on_gradient()
    seen: list[list[Task]] = []
    finder = text_finder()

    def recording(images, tasks):
        seen.append(list(tasks))
        return finder(images, tasks)

    predictor = Predictor(recording, size=64, batch_size=4, removal="telea-fill")
    removal, segmentation = predictor.predict_tasks(image, ["removal", "segmentation"])
    assert seen == [[Task.TEXT_REMOVAL, Task.TEXT_SEGMENTATION]]  # no extra pass for the mask
    assert segmentation.mask[text].mean() > 0.9
    seen.clear()
    predictor.predict(image, "removal")
    assert seen == [[Task.TEXT_REMOVAL, Task.TEXT_SEGMENTATION]]
    seen.clear()
    Predictor(recording, size=64, removal="raw").predict(image, "removal")
    assert seen == [[Task.TEXT_REMOVAL]]


# ------------------------------------------------------------------ options and their errors


@pytest.mark.parametrize(
    "options, message",
    [
        ({"size": 100}, "multiple of 32"),
        ({"tile": 48}, "multiple of 32"),
        ({"tile": 64, "overlap": 40}, "overlap"),
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "int8"}, "precision"),
        ({"precision": "fp16"}, "CUDA"),
        ({"removal": "smudge"}, "removal must be one of words-telea, words-model, telea-fill, model-fill, blend, raw"),
        ({"grow": -1}, "grow must be a whole number of pixels, 0 or more"),
        ({"grow": 2.5}, "grow must be a whole number"),
    ],
)
def test_bad_options_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        Predictor(identity, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        Predictor(identity, device="cuda")


def test_bad_image_arrays_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        Predictor(identity, size=64).predict(IMAGE.astype(np.float32), "removal")
    with pytest.raises(ValueError, match="unknown task"):
        Predictor(identity, size=64).predict(IMAGE, "colouring")


def test_auto_tiles_find_text_to_erase_at_both_scales():
    """tile="auto" on a large image: the fill modes' text mask is the union of native tiles and the whole
    image resized. A stand-in model calls a whole input "text" when its mean is dark: the resized whole image
    (mostly dark) is text everywhere, while tiles on the light right part are not."""

    def dark_is_text(images: torch.Tensor, tasks) -> torch.Tensor:
        dark = (images.mean(dim=(1, 2, 3), keepdim=True) < 0.5).float()
        return dark.expand_as(images).clone()

    image = np.full((128, 320, 3), 20, np.uint8)
    image[:, 256:] = 230  # a light strip, 64 px wide: its tiles are light
    auto = Predictor(dark_is_text, size=64, tile="auto", removal="telea-fill").predict(image, "removal")
    tiles = Predictor(dark_is_text, size=64, tile=64, removal="telea-fill").predict(image, "removal")
    assert tiles.change_mask[:, -8:].max() == 0  # tiles alone: nothing to erase at the right edge
    assert auto.change_mask.min() == 1  # the union: the resized whole image marks everything
