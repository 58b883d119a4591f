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
    assert json.loads(metadata["upocr_inference"]) == {"input_size": 64, "segmentation_threshold": 0.25, "removal": "telea-fill",
                                                       "segmentation": "model", "tampering": "model"}
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


@pytest.mark.parametrize("stored, legacy, problem", [
    ('{"input_size": 100}', {"segmentation_threshold": 1.5}, "input_size must be a positive multiple of 32, got 100"),
    # N6: --size refused 8192, but a weights file saying so made a 160x128 image take 4.9 GB before failing
    ('{"input_size": 8192}', {"input_size": 8192}, "input_size 8192 is too large (at most 4096)"),
])
def test_bad_inference_defaults_name_the_file(tiny, tmp_path, stored, legacy, problem):
    """In upocr_inference, and (older files) among the config's fields."""
    path = tmp_path / "bad.safetensors"
    save_file(dict(tiny.state_dict()), str(path), metadata={"upocr_config": tiny.config.to_json(), "upocr_inference": stored})
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: invalid inference defaults in the safetensors metadata "
                                              rf"\(upocr_inference\) \({re.escape(problem)}\)$"):  # fmt: skip
        upocr.load_model(path)
    old = save_old_style(tiny, tmp_path / "old.safetensors", **legacy)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(old))}: invalid inference defaults in the model config \("):
        upocr.load_model(old)
    assert InferenceDefaults(input_size=4096).input_size == InferenceDefaults.MAX_INPUT_SIZE == 4096


@pytest.mark.parametrize("name", ["fifo.pth", "fifo.safetensors", "folder/model.safetensors"])
def test_special_files_as_weights_are_refused_without_opening_them(tmp_path, name):
    """N17: a FIFO as --weights blocked forever (load_file opens it and waits for a writer); /dev/zero
    said "file is empty"."""
    import os
    import threading

    fifo = tmp_path / name
    fifo.parent.mkdir(exist_ok=True)
    os.mkfifo(fifo)
    weights = fifo if fifo.parent == tmp_path else fifo.parent
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_weights(weights)
        except BaseException as error:  # noqa: BLE001 - the test looks at it
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the reader so the test run can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail(f"reading {name} blocked")
    assert isinstance(outcome[0], CheckpointError) and str(outcome[0]) == f"{fifo}: not a regular file (a FIFO)"
    with pytest.raises(CheckpointError, match=r"^/dev/zero: not a regular file \(a device\)$"):
        read_weights("/dev/zero")


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


def test_only_upocr_weights_reads_weight_files():
    """One safe reader: the FID Inception, the VGG16 of the perceptual loss and training checkpoints read
    through `upocr.weights` (read_weights / torch_load_safely), not with torch.load or safetensors of their own."""
    import ast
    from pathlib import Path

    package = Path(upocr.__file__).resolve().parent
    readers = []
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "weights" and path.parent.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and called.attr == "load" and ast.unparse(called.value) == "torch":
                readers.append(f"{path.relative_to(package)}:{node.lineno} torch.load")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors"):
                readers.append(f"{path.relative_to(package)}:{node.lineno} from {node.module} import ...")
    assert readers == []


def test_vgg_and_fid_weights_go_through_read_weights(tmp_path, monkeypatch):
    from upocr.evaluate import inception
    from upocr.train import vgg

    calls = []
    real_read_weights = vgg.read_weights

    def spy(path):
        calls.append(path)
        return real_read_weights(path)

    monkeypatch.setattr(vgg, "read_weights", spy)
    monkeypatch.setattr(inception, "read_weights", spy)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth: no VGG16 weights"):
        vgg.load_vgg16(tmp_path / "partial.pth")
    with pytest.raises(inception.FIDWeightsError, match="partial.pth: not pytorch-fid's"):
        inception.load_fid_inception(tmp_path / "partial.pth")
    assert calls == [tmp_path / "partial.pth"] * 2
