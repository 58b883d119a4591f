"""The bundled default model: its recorded recipe retrains (smoke test) and the bundle loads."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch
import yaml

import upocr
from upocr.cli import main as cli_main
from upocr.weights import DEFAULT_WEIGHTS, training_record

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "default-model.yaml"  # stage 1: the small config from scratch
RECIPE_STAGE2 = ROOT / "configs" / "default-model-stage2.yaml"  # stage 2: + image skip, residual removal
LATER_STAGES = [ROOT / "configs" / f"default-model-stage{n}.yaml" for n in (3, 4)]  # GPU: larger batches


def _run_script(monkeypatch, script: str, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 0


def test_recorded_recipe_retrains_and_bundles(tmp_path, tiny_data_root, monkeypatch):
    """The exact commands recorded in configs/default-model*.yaml, shortened to 2 steps each at 64x64."""
    recipe, stage2 = yaml.safe_load(RECIPE.read_text()), yaml.safe_load(RECIPE_STAGE2.read_text())
    assert recipe["model"] == "small" and recipe["image_size"] == stage2["image_size"] == 256
    assert stage2["model"] == {"preset": "small", "image_skip": True, "removal_residual": True}
    assert stage2["init"] == recipe["output_dir"] + "/model"
    short = ["--data-root", str(tiny_data_root), "--iterations", "2", "--image-size", "64", "--precision", "fp32",
             "--num-workers", "0", "--no-progress"]  # fmt: skip
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    assert cli_main(["train", "--config", str(RECIPE), *short, "--output", str(first)]) == 0
    assert json.loads((first / "summary.json").read_text())["step"] == 2
    assert cli_main(["train", "--config", str(RECIPE_STAGE2), *short, "--output", str(second), "--init", str(first / "model")]) == 0
    record = training_record(second / "model")
    assert record.trained and record.steps == 2 and record.input_size == 64 and record.init == str(first / "model")
    assert record.config == "small + image_skip=True, removal_residual=True"
    continued = upocr.load_model(second / "model")
    assert continued.config.image_skip and continued.config.removal_residual
    # Stages 3 and 4 continue the previous stage's weights with the same architecture.
    previous, previous_config = second, stage2
    for number, path in enumerate(LATER_STAGES, start=3):
        stage = yaml.safe_load(path.read_text())
        assert stage["model"] == stage2["model"] and stage["init"] == previous_config["output_dir"] + "/model"
        out_dir = tmp_path / f"stage{number}"
        assert cli_main(["train", "--config", str(path), *short, "--batch-per-task", "1", "--output", str(out_dir),
                         "--init", str(previous / "model")]) == 0  # fmt: skip
        assert training_record(out_dir / "model").init == str(previous / "model")
        previous, previous_config = out_dir, stage
    # The bundling step of the recipe: an fp16 copy that loads back as the same architecture and carries
    # every stage's record, down to stage 1.
    out = tmp_path / "bundle"
    _run_script(monkeypatch, "bundle_default_model.py", str(previous / "model"), "--out", str(out))
    bundled = upocr.load_model(out)
    assert bundled.inference.input_size == 64 and bundled.config == continued.config
    stages = training_record(out).stages()
    assert len(stages) == 4 and stages[-1].init is None and stages[-1].config == "small"


def test_time_boxed_training_measures_steps_per_second_after_start_up(tmp_path):
    box = runpy.run_path(str(ROOT / "scripts" / "train_time_boxed.py"))
    log = tmp_path / "train.csv"
    # the first row includes start-up (10 steps in 30 s); then 20 steps every 4 s: 5 steps/s
    log.write_text("step,loss,images_per_s,elapsed_s\n10,1,1,30\n30,1,1,34\n50,1,1,38\n")
    assert box["steady_steps_per_second"](log) == 5.0


def test_bundled_weights_load_and_say_how_they_were_trained():
    model = upocr.load_model()
    assert model.inference.input_size % 32 == 0
    record = training_record(DEFAULT_WEIGHTS)
    assert record is not None and record.trained is True, record
    if record.init_record:  # a multi-stage model says so, with every stage's images counted
        from upocr import describe_weights

        assert "training images in all" in describe_weights(None)
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 64, 64), [0])
    assert outputs[-1].shape == (1, 3, 64, 64)


def test_segmentation_threshold_travels_with_the_weights(tmp_path, tiny_weights, tiny_data_root, monkeypatch, capsys):
    import dataclasses

    import pytest

    model = upocr.load_model(tiny_weights)
    assert upocr.Predictor(model).threshold == 0.4  # the original's, when the weights carry none
    model.inference = dataclasses.replace(model.inference, segmentation_threshold=0.2)
    assert upocr.Predictor(model).threshold == 0.2
    assert upocr.Predictor(model, threshold=0.3).threshold == 0.3
    with pytest.raises(ValueError, match="segmentation_threshold"):
        dataclasses.replace(model.inference, segmentation_threshold=1.5)
    # The calibration script picks one on a validation split and stores it with the weights.
    weights = tmp_path / "w"
    upocr.load_model(tiny_weights).save_pretrained(weights)
    _run_script(monkeypatch, "calibrate_threshold.py", str(weights), "--data-root", str(tiny_data_root), "--split", "train",
                "--limit", "2", "--write")  # fmt: skip
    assert "best threshold on 2 train images" in capsys.readouterr().out
    stored = upocr.load_model(weights).inference.segmentation_threshold
    assert 0.05 <= stored <= 0.5


def test_bundled_model_is_useful_on_a_bundled_sample(tmp_path):
    """The receipt sample (dark print on paper): the defaults find the print and erase it."""
    from upocr.commands.predict import SAMPLES_DIR
    from upocr.io import read_image

    image = read_image(SAMPLES_DIR / "receipt.jpg")
    ink = image.mean(axis=2) < 100
    assert 0.005 < ink.mean() < 0.2
    predictor = upocr.Predictor(upocr.load_model())
    removal, segmentation, tampering = predictor.predict_tasks(image, ["removal", "segmentation", "tampering"])
    assert segmentation.mask[ink].mean() > 0.7 and segmentation.mask.mean() < 0.25  # the print, not the paper
    assert (tampering.classes[ink] == 1).mean() > 0.5  # found as (real) text
    assert (removal.image.mean(axis=2) < 100).sum() < 0.2 * ink.sum()  # most of the print is gone
    untouched = removal.change_mask == 0
    assert untouched.mean() > 0.5
    assert (removal.image[untouched] == image[untouched]).all()
    # the CLI's other modes run on the same weights
    for mode in ("model-fill", "raw"):
        assert cli_main(["remove-text", str(SAMPLES_DIR / "receipt.jpg"), "-o", str(tmp_path / mode), "--mode", mode]) == 0
        assert (tmp_path / mode / "receipt.png").exists()
