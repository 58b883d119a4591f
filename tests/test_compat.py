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


def require_compat_file(path: Path, folder: Path = COMPAT) -> Path:
    """`path`, or a failure (never a skip: these tests are the acceptance check) in one line that says
    which folder or file is missing and where it should be."""
    if not folder.is_dir():
        pytest.fail(f"compat folder missing: {folder} does not exist; put ../shared/compat (upocr-mini.pth, "
                    "upocr-mini-io.npz) beside the repository", pytrace=False)  # fmt: skip
    if not path.is_file():
        pytest.fail(f"compat file missing: {path} (the compat folder {folder} lacks {path.name})", pytrace=False)
    return path


@pytest.fixture(scope="module")
def model():
    return upocr.load_model(require_compat_file(CHECKPOINT))


@pytest.fixture(scope="module")
def io():
    return np.load(require_compat_file(IO))


def test_missing_compat_folder_fails_saying_where_it_should_be(tmp_path):
    folder = tmp_path / "shared" / "compat"
    with pytest.raises(pytest.fail.Exception, match=rf"^compat folder missing: {folder} does not exist; put ../shared/compat"):
        require_compat_file(folder / "upocr-mini.pth", folder)
    folder.mkdir(parents=True)
    with pytest.raises(pytest.fail.Exception, match=rf"^compat file missing: {folder}/upocr-mini.pth"):
        require_compat_file(folder / "upocr-mini.pth", folder)


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
