"""upocr.weights: files read without the network, and the inference defaults stored with the weights."""

import argparse
import json
import re

import pytest
import torch
from safetensors.torch import save_file

import upocr
from upocr.predict import Predictor
from upocr.weights import (
    CONFIG_FILE,
    DEFAULT_WEIGHTS,
    WEIGHTS_FILE,
    CheckpointError,
    InferenceDefaults,
    read_weights,
    safetensors_metadata,
    training_record,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return upocr.build_model("tiny").eval()


def save_old_style(model, path, **config_fields):
    """A lone safetensors file as written before the inference defaults left the config."""
    config = {**model.config.to_dict(), **config_fields}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"upocr_config": json.dumps(config)})
    return path


def test_inference_defaults_are_stored_with_the_weights_not_in_the_config(tiny, tmp_path):
    tiny.inference = InferenceDefaults(input_size=64, segmentation_threshold=0.25)
    try:
        tiny.save_pretrained(tmp_path / "m")
    finally:
        tiny.inference = InferenceDefaults()
    stored = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert "input_size" not in stored and "segmentation_threshold" not in stored and stored == tiny.config.to_dict()
    metadata = safetensors_metadata(tmp_path / "m" / WEIGHTS_FILE)
    assert json.loads(metadata["upocr_inference"]) == {"input_size": 64, "segmentation_threshold": 0.25, "removal": "telea-fill"}
    for path in (tmp_path / "m", tmp_path / "m" / WEIGHTS_FILE):
        loaded = upocr.load_model(path)
        assert loaded.inference == InferenceDefaults(64, 0.25) and loaded.config == tiny.config
        predictor = Predictor(loaded)
        assert (predictor.size, predictor.threshold) == (64, 0.25)


def test_old_files_keep_the_defaults_they_stored_in_their_config(tiny, tmp_path):
    path = save_old_style(tiny, tmp_path / "old.safetensors", input_size=128, segmentation_threshold=0.3)
    loaded = upocr.load_model(path)
    assert loaded.config == tiny.config and loaded.inference == InferenceDefaults(128, 0.3)
    # An old save_pretrained folder: config.json with the fields.
    tiny.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps({**tiny.config.to_dict(), "input_size": 96}))
    save_file(dict(tiny.state_dict()), str(tmp_path / "m" / WEIGHTS_FILE), metadata={"upocr_config": tiny.config.to_json()})
    assert upocr.load_model(tmp_path / "m").inference == InferenceDefaults(input_size=96)
    # An old training checkpoint: the fields among model_config.
    torch.save({"model": dict(tiny.state_dict()), "model_config": {**tiny.config.to_dict(), "input_size": 64}}, tmp_path / "t.pt")
    assert upocr.load_model(tmp_path / "t.pt").inference == InferenceDefaults(input_size=64)
    # Files that carry neither (bare state dicts, original checkpoints): the original's 512 and 0.4.
    torch.save(dict(tiny.state_dict()), tmp_path / "bare.pth")
    assert upocr.load_model(tmp_path / "bare.pth").inference == InferenceDefaults(512, 0.4)


def test_an_old_training_checkpoint_resumes_with_its_defaults(tiny):
    from upocr.train.checkpoint import model_from_checkpoint

    state = {"model": dict(tiny.state_dict()), "model_config": {**tiny.config.to_dict(), "segmentation_threshold": 0.2}}
    model = model_from_checkpoint(state)
    assert model.config == tiny.config and model.inference.segmentation_threshold == 0.2
    state["inference"] = {"input_size": 64, "segmentation_threshold": 0.35}  # what the trainer writes now
    assert model_from_checkpoint(state).inference == InferenceDefaults(64, 0.35)


def test_bad_inference_defaults_name_the_file(tiny, tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file(dict(tiny.state_dict()), str(path), metadata={"upocr_config": tiny.config.to_json(), "upocr_inference": '{"input_size": 100}'})
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: invalid inference defaults in the safetensors metadata "
                                              r"\(upocr_inference\) \(input_size must be a positive multiple of 32, got 100\)$"):  # fmt: skip
        upocr.load_model(path)
    old = save_old_style(tiny, tmp_path / "old.safetensors", segmentation_threshold=1.5)
    with pytest.raises(CheckpointError, match=r"old\.safetensors: invalid inference defaults in the model config \(segmentation_threshold"):
        upocr.load_model(old)


def test_files_are_read_without_building_a_network(tiny, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("read_weights built a network")

    monkeypatch.setattr(upocr.UPOCR, "__init__", no_network)
    args = argparse.Namespace(swin_enc_embed_dim=16)
    torch.save({"module." + k: v for k, v in tiny.state_dict().items()} | {"vgg16.w": torch.zeros(1)}, tmp_path / "a.pth")
    torch.save({"model": dict(tiny.state_dict()), "args": args}, tmp_path / "orig.pth")
    bare, original = read_weights(tmp_path / "a.pth"), read_weights(tmp_path / "orig.pth")
    assert bare.config is None and "vgg16.w" in bare.state and not any(k.startswith("module.") for k in bare.state)
    assert original.original_args == args and original.config is None and original.inference == InferenceDefaults()


def test_the_bundled_weights_run_at_the_size_they_were_trained_at():
    """The bundle predates stored inference defaults: its config's input_size is read, and agrees with the
    size its last training stage records."""
    model = upocr.load_model()
    assert model.inference.input_size == training_record(DEFAULT_WEIGHTS).input_size
    assert Predictor(model).size == model.inference.input_size


def test_other_files_have_no_training_record_and_are_never_read_whole(tmp_path):
    """describe_weights reads the record of any --weights: a .pth zip or an .onnx file gave a nonsense header
    length and a MemoryError (seen with `serve --weights model.onnx`)."""
    from upocr import describe_weights
    from upocr.weights import training_record

    pth = tmp_path / "upocr.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, pth)  # a zip: its first 8 bytes read as a huge length
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(100))
    for path in (pth, onnx):
        assert training_record(path) is None
        with pytest.raises(ValueError, match="not a safetensors file"):
            safetensors_metadata(path)
        assert describe_weights(path) == f"{path} - no training record"
