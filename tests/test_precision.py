"""Reduced-precision inference (bf16 autocast, int8 dynamic quantization) stays close to fp32."""

import numpy as np
import pytest
from torch.ao.nn.quantized import dynamic as quantized_dynamic

import upocr
from upocr.predict import Predictor


@pytest.fixture(scope="module")
def model():
    """The bundled trained weights (small config): realistic activations, unlike a random model whose
    untrained blocks amplify any rounding."""
    return upocr.load_model(None)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((16, 16, 1)))  # blocks, as in a photo
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_agrees_with_fp32(model, image, precision):
    tasks = ["removal", "segmentation", "tampering"]
    reference = Predictor(model, size=128, removal="raw").predict_tasks(image, tasks)
    reduced = Predictor(model, size=128, removal="raw", precision=precision).predict_tasks(image, tasks)
    assert psnr(reduced[0].image, reference[0].image) >= 40  # the targets
    assert np.mean(reduced[1].mask == reference[1].mask) >= 0.99
    assert np.mean(reduced[2].classes == reference[2].classes) >= 0.99
    # ... and it did compute differently (else this test would check nothing).
    assert not np.array_equal(reduced[0].output, reference[0].output)


def test_int8_quantizes_a_copy_and_keeps_the_position_bias_fp32(model):
    predictor = Predictor(model, precision="int8")
    quantized = {name for name, m in predictor.model.named_modules() if isinstance(m, quantized_dynamic.Linear)}
    assert "decoder.layers.0.blocks.0.attn.qkv" in quantized and "proj" in quantized
    assert not any(".cpb_mlp." in name for name in quantized)
    assert not any(isinstance(m, quantized_dynamic.Linear) for m in model.modules())  # caller's model unchanged


def test_int8_needs_a_torch_model_on_the_cpu():
    with pytest.raises(ValueError, match="int8"):
        Predictor(lambda images, tasks: images, precision="int8")
