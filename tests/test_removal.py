"""Text removal as parts (upocr.removal): the pipeline table, what each pipeline runs, given masks,
the word-detector pipelines end to end, and their CLI options (--removal, --mask, --regions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from upocr.cli import main
from upocr.inpaint import dilate, telea_inpaint
from upocr.io import read_image, write_image
from upocr.predict import Predictor
from upocr.removal import FILLERS, FINDERS, REMOVAL_PIPELINES, removal_pipeline
from upocr.tasks import Task
from test_detector import text_image


class RecordingModel:
    """A model callable that returns a constant grey output and records the tasks it was asked for."""

    def __init__(self) -> None:
        self.calls: list[list[Task]] = []

    def __call__(self, images: torch.Tensor, tasks) -> torch.Tensor:
        self.calls.append([Task.parse(t) for t in tasks])
        return torch.full_like(images, 0.5)

    @property
    def tasks_run(self) -> set[Task]:
        return {task for call in self.calls for task in call}


def test_every_pipeline_is_a_known_finder_and_filler():
    assert {"words-telea", "words-model", "telea-fill", "model-fill", "blend", "raw"} == set(REMOVAL_PIPELINES)
    for name, pipeline in REMOVAL_PIPELINES.items():
        assert pipeline.name == name and pipeline.finder in FINDERS and pipeline.filler in FILLERS and pipeline.summary
    with pytest.raises(ValueError, match="removal must be one of words-telea, .*raw, got 'smudge'"):
        removal_pipeline("smudge")


@pytest.mark.parametrize(("name", "keep", "prompts"), [
    ("words-telea", False, set()),  # the detector finds, Telea fills: no model pass at all
    ("words-telea", True, {Task.TEXT_REMOVAL}),  # the removal output is kept, so it runs
    ("words-model", False, {Task.TEXT_REMOVAL}),
    ("telea-fill", False, {Task.TEXT_SEGMENTATION}),
    ("model-fill", False, {Task.TEXT_REMOVAL, Task.TEXT_SEGMENTATION}),
    ("blend", False, {Task.TEXT_REMOVAL}),
    ("raw", False, {Task.TEXT_REMOVAL}),
])
def test_each_pipeline_runs_the_prompts_it_needs(name, keep, prompts):
    model = RecordingModel()
    image, _ = text_image()
    Predictor(model, removal=name, keep_output=keep, tile=None, size=64).predict(image, "removal")
    assert model.tasks_run == prompts


def test_words_telea_erases_the_words_and_keeps_every_other_pixel():
    image, boxes = text_image()
    prediction = Predictor(RecordingModel(), removal="words-telea", keep_output=False).predict(image, "removal")
    region = prediction.regions.mask(grow=3)
    np.testing.assert_array_equal(prediction.image[~region], image[~region])  # bit-exact outside
    np.testing.assert_array_equal(prediction.image, telea_inpaint(image, region))
    for left, top, right, bottom in boxes:  # the ink is gone (but for a corner pixel or two)
        dark_before = (image[top:bottom, left:right].min(axis=2) < 100).sum()
        dark_after = (prediction.image[top:bottom, left:right].min(axis=2) < 100).sum()
        assert dark_before > 500 and dark_after < 0.01 * dark_before


def test_a_given_mask_replaces_the_finder_and_the_model_finds_nothing():
    image, boxes = text_image()
    mask = np.zeros(image.shape[:2], bool)
    left, top, right, bottom = boxes[0]
    mask[top:bottom, left:right] = True  # only the first word
    model = RecordingModel()
    predictor = Predictor(model, removal="telea-fill", grow=2, keep_output=False, tile=None, size=64)
    prediction = predictor.predict_tasks(image, ["removal"], mask=mask)[0]
    assert model.calls == []  # neither the text prompt (replaced) nor the removal prompt (Telea) ran
    np.testing.assert_array_equal(prediction.image, telea_inpaint(image, dilate(mask, 2)))
    left, top, right, bottom = boxes[1]
    np.testing.assert_array_equal(prediction.image[top:bottom, left:right], image[top:bottom, left:right])
    with pytest.raises(ValueError, match="mask shape"):
        predictor.predict_tasks(image, ["removal"], mask=mask[1:])
    with pytest.raises(ValueError, match="needs a pipeline that fills a region, not 'raw'"):
        predictor.with_options(removal="raw").predict_tasks(image, ["removal"], mask=mask)


def test_words_model_fills_the_regions_with_the_model_output():
    image, _ = text_image()
    prediction = Predictor(RecordingModel(), removal="words-model", keep_output=True, tile=None, size=64).predict(image, "removal")
    region = prediction.regions.mask(grow=3)
    assert np.abs(prediction.image[region].astype(int) - 128).max() <= 1  # the model's grey, inside
    outside = ~dilate(region, 6)  # beyond the feather
    np.testing.assert_array_equal(prediction.image[outside], image[outside])


def test_the_weights_choose_the_default_pipeline(tiny_weights):
    import upocr

    model = upocr.load_model(tiny_weights)
    assert Predictor(model).removal == "telea-fill"  # a file that stores none: the model's own mask + Telea
    model.inference = upocr.InferenceDefaults(input_size=64, removal="words-telea")
    assert Predictor(model).removal == "words-telea"
    assert Predictor(model, removal="raw").removal == "raw"  # an explicit choice wins
    model.inference = upocr.InferenceDefaults(removal="sponge")
    with pytest.raises(ValueError, match="removal must be one of"):
        Predictor(model)


def test_the_bundled_weights_default_to_the_best_measured_pipeline():
    import upocr

    assert upocr.load_model().inference.removal == "words-telea"  # docs/results.md: 29.96 dB on real-dev


# ---------------------------------------------------------------- CLI


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "in"
    for name, words in (("a", ("HELLO", "WORLD")), ("b", ("upocr",))):
        write_image(folder / f"{name}.png", text_image(words)[0])
    return folder


def test_remove_text_with_a_mask_folder_fills_the_masks(tmp_path, photos, tiny_weights, capsys):
    masks = tmp_path / "masks"
    mask = np.zeros((320, 480), np.uint8)
    mask[60:110, 40:200] = 255
    write_image(masks / "a_mask.png", mask)  # segment-text's name
    code = run("remove-text", photos, "-o", tmp_path / "out", "--weights", tiny_weights, "--size", "64",
               "--mask", masks, "--grow", "0")
    assert code == 1  # b has no mask: one line, a is still written
    err = capsys.readouterr().err
    assert err.count("upocr:") == 1 and "b.png" in err and "no mask" in err
    result = read_image(tmp_path / "out" / "a.png")
    image = read_image(photos / "a.png")
    np.testing.assert_array_equal(result, telea_inpaint(image, mask > 0))
    assert not (tmp_path / "out" / "b.png").exists()


def test_remove_text_writes_regions_json_beside_the_image(tmp_path, photos, tiny_weights):
    assert run("remove-text", photos, "-o", tmp_path / "out", "--weights", tiny_weights, "--removal", "words-telea",
               "--regions") == 0
    regions = json.loads((tmp_path / "out" / "a_regions.json").read_text())
    assert (regions["width"], regions["height"]) == (480, 320) and len(regions["regions"]) >= 2
    assert all(len(r["points"]) >= 4 and 0.5 <= r["score"] <= 1 for r in regions["regions"])


def test_regions_without_the_word_detector_is_one_line(tmp_path, photos, tiny_weights, capsys):
    assert run("remove-text", photos, "-o", tmp_path / "out", "--weights", tiny_weights, "--removal", "raw", "--regions") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "word detector" in err and not (tmp_path / "out").exists()


def test_the_old_mode_flag_still_chooses_the_pipeline(tmp_path, photos, tiny_weights):
    out = tmp_path / "out"
    assert run("remove-text", photos / "a.png", "-o", out, "--weights", tiny_weights, "--size", "64", "--mode", "raw") == 0
    raw = Predictor(weights=tiny_weights, size=64, removal="raw").predict(read_image(photos / "a.png"), "removal").image
    np.testing.assert_array_equal(read_image(out / "a.png"), raw)


def test_a_missing_detector_model_is_one_line(tmp_path, photos, tiny_weights, capsys):
    code = run("remove-text", photos / "a.png", "-o", tmp_path / "out", "--weights", tiny_weights,
               "--removal", "words-telea", "--detector-model", tmp_path / "gone.onnx")
    assert code == 1
    err = capsys.readouterr().err
    assert "gone.onnx: detector model not found" in err and "Traceback" not in err


# ---------------------------------------------------------------- segmentation finders


class InkEverywhere(RecordingModel):
    """A model whose segmentation output calls every pixel text."""

    def __call__(self, images: torch.Tensor, tasks) -> torch.Tensor:
        super().__call__(images, tasks)
        return torch.zeros_like(images) + 0.9


def test_the_model_text_finder_fills_the_model_mask_even_when_tampering_ran_the_detector():
    """Regression: with --tampering words the detector's regions exist for the image; telea-fill must still
    fill the model's own text mask (they were filled instead)."""
    image, _ = text_image()
    predictor = Predictor(InkEverywhere(), removal="telea-fill", tile=None, size=64, grow=0, keep_output=True)
    alone = predictor.predict(image, "removal")
    with_words = predictor.with_options(tampering="words").predict_tasks(image, ["removal", "tampering"])[0]
    assert alone.change_mask.all()  # the model calls everything text
    np.testing.assert_array_equal(with_words.image, alone.image)
    np.testing.assert_array_equal(with_words.change_mask, alone.change_mask)
