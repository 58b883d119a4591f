"""Acceptance: the original's own checkpoint loads and reproduces the original's outputs (<= 1e-4)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import upocr
from upocr import Task

COMPAT = Path(__file__).resolve().parents[1].parent / "shared" / "compat"
CHECKPOINT = COMPAT / "upocr-mini.pth"
IO = COMPAT / "upocr-mini-io.npz"
CASES = ["256x256", "192x320"]



@pytest.fixture(scope="module")
def model():
    assert CHECKPOINT.exists(), f"compat fixtures missing: expected {COMPAT} beside the repository"
    return upocr.load_model(CHECKPOINT)


@pytest.fixture(scope="module")
def io():
    return np.load(IO)


def test_architecture_is_read_from_the_checkpoint_args(model):
    assert model.config == upocr.UPOCRConfig.preset("mini")
    assert model.num_parameters == 5_749_135
    assert not model.training


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("task", list(Task))
def test_outputs_match_original(model, io, case, task):
    with torch.no_grad():
        outputs = model(torch.from_numpy(io[f"input_{case}"]), [task])
    for scale, output in enumerate(outputs):
        expected = torch.from_numpy(io[f"out_{case}_task{int(task)}_scale{scale}"])
        assert output.shape == expected.shape
        assert (output - expected).abs().max().item() <= 1e-4, (case, task, scale)


@pytest.mark.parametrize("case", CASES)
def test_mixed_batch_matches_original(model, io, case):
    images = torch.from_numpy(io[f"input_{case}"]).repeat(3, 1, 1, 1)
    with torch.no_grad():
        final = model(images, ["text removal", "tampered text detection", "text segmentation"])[-1]
    assert (final - torch.from_numpy(io[f"mixed_{case}_final"])).abs().max().item() <= 1e-4
