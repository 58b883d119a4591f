"""Predictor.with_options: a copy with some options changed, sharing the model, checked as __init__ checks."""

import pytest
import torch

import upocr
from upocr.predict import Predictor


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return upocr.build_model("tiny").eval()


def test_with_options_changes_only_what_it_is_given_and_shares_the_model(tiny):
    tiny.inference = upocr.InferenceDefaults(input_size=64, segmentation_threshold=0.3)
    base = Predictor(tiny, removal="telea-fill", tile=64)
    raw = base.with_options(removal="raw", tile=128)
    assert raw is not base and raw.model is base.model
    assert (raw.removal, raw.tile, raw.overlap) == ("raw", 128, 16)  # overlap re-derived for the new tile
    assert (raw.size, raw.threshold, raw.batch_size) == (64, 0.3, 1)  # the weights' defaults, as before
    assert (base.removal, base.tile, base.overlap) == ("telea-fill", 64, 8)  # the original is untouched
    assert base.with_options(threshold=0.6).threshold == 0.6


@pytest.mark.parametrize(("changes", "message"), [({"removal": "erase"}, "removal must be one of"),
                                                   ({"size": 100}, "multiple of 32"),
                                                   ({"batch_size": 0}, "batch_size must be at least 1")])
def test_with_options_refuses_what_init_refuses(tiny, changes, message):
    with pytest.raises(ValueError, match=message):
        Predictor(tiny, **changes)
    with pytest.raises(ValueError, match=message):
        Predictor(tiny).with_options(**changes)


def test_with_options_keeps_model_and_device(tiny):
    with pytest.raises(TypeError, match="keeps the model and device"):
        Predictor(tiny).with_options(device="cpu")
    with pytest.raises(TypeError):
        Predictor(tiny).with_options(colour="red")


def test_int8_predictor_shares_its_quantized_model(tiny):
    quantized = Predictor(tiny, precision="int8")
    assert quantized.model is not tiny  # a given model is copied, then quantized
    raw = quantized.with_options(removal="raw")
    assert raw.model is quantized.model and raw.precision == "int8"
    with pytest.raises(ValueError, match="cannot undo int8"):
        quantized.with_options(precision="fp32")
