"""Acceptance: the original's own checkpoints load and reproduce the original's outputs (<= 1e-4).

`tests/fixtures/compat-micro` ships with the repository (1.5M parameters, 9.5 MB), so a plain clone proves
checkpoint compatibility. The larger `../shared/compat` mini fixture (5.7M parameters) is an extra check
where it exists beside the checkout; without it its cases are simply not generated (not skipped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import upocr
from upocr import Task, UPOCRConfig

SHIPPED = Path(__file__).resolve().parent / "fixtures" / "compat-micro"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "compat"
TOLERANCE = 1e-4


@dataclass(frozen=True)
class CompatFixture:
    """An original-format checkpoint `<name>.pth`, the original code's outputs `<name>-io.npz` and its
    `<name>-meta.json` (architecture arguments, parameter count, cases) in `folder`."""

    name: str
    folder: Path
    config: UPOCRConfig  # the architecture the checkpoint's pickled args describe

    @property
    def checkpoint(self) -> Path:
        return self.folder / f"{self.name}.pth"

    @property
    def io(self) -> Path:
        return self.folder / f"{self.name}-io.npz"

    @property
    def meta(self) -> dict:
        return json.loads((self.folder / f"{self.name}-meta.json").read_text())


MICRO = CompatFixture("upocr-micro", SHIPPED, UPOCRConfig(
    embed_dim=16, encoder_depths=(2, 2, 2, 2), encoder_heads=(1, 1, 2, 4), encoder_window=8, encoder_pretrained_window=8,
    decoder_depths=(2, 2, 2, 2, 2), decoder_heads=(4, 2, 1, 1, 1)))  # fmt: skip
MINI = CompatFixture("upocr-mini", SHARED, UPOCRConfig.preset("mini"))
# The shipped fixture always; the shared one where it exists.
FIXTURES = [fixture for fixture in (MICRO, MINI) if fixture is MICRO or fixture.checkpoint.is_file()]
CASES = [(fixture, case) for fixture in FIXTURES for case in fixture.meta["cases"]] if MICRO.folder.is_dir() else []


def require_compat_file(path: Path) -> Path:
    """`path`, or a failure (never a skip: these tests are the acceptance check) in one line that says
    which file is missing."""
    if not path.is_file():
        pytest.fail(f"compat file missing: {path} (tests/fixtures/compat-micro ships with the repository; "
                    "restore it with git checkout)", pytrace=False)  # fmt: skip
    return path


_loaded: dict[str, tuple[upocr.UPOCR, np.lib.npyio.NpzFile]] = {}


def loaded(fixture: CompatFixture) -> tuple[upocr.UPOCR, np.lib.npyio.NpzFile]:
    """(the model from the original checkpoint, the original's outputs), read once per fixture."""
    if fixture.name not in _loaded:
        _loaded[fixture.name] = upocr.load_model(require_compat_file(fixture.checkpoint)), np.load(require_compat_file(fixture.io))
    return _loaded[fixture.name]


def _id(value) -> str:
    return value.name.removeprefix("upocr-") if isinstance(value, CompatFixture) else str(value)


def test_the_shipped_fixture_is_there_and_a_missing_file_fails_saying_which(tmp_path):
    assert MICRO in FIXTURES and {"128x128", "96x160"} == set(MICRO.meta["cases"])
    assert sum(path.stat().st_size for path in SHIPPED.iterdir()) < 10_000_000  # small enough to ship
    with pytest.raises(pytest.fail.Exception, match=rf"^compat file missing: {tmp_path}/upocr-micro.pth"):
        require_compat_file(tmp_path / "upocr-micro.pth")


@pytest.mark.parametrize("fixture", FIXTURES, ids=_id)
def test_architecture_is_read_from_the_checkpoint_args(fixture):
    model, _ = loaded(fixture)
    assert model.config == fixture.config
    assert model.num_parameters == fixture.meta["n_params"]
    assert not model.training


@pytest.mark.parametrize("fixture, case", CASES, ids=_id)
@pytest.mark.parametrize("task", list(Task))
def test_outputs_match_original(fixture, case, task):
    model, io = loaded(fixture)
    with torch.no_grad():
        outputs = model(torch.from_numpy(io[f"input_{case}"]), [task])
    assert len(outputs) == 3
    for scale, output in enumerate(outputs):
        expected = torch.from_numpy(io[f"out_{case}_task{int(task)}_scale{scale}"])
        assert output.shape == expected.shape
        assert (output - expected).abs().max().item() <= TOLERANCE, (case, task, scale)


@pytest.mark.parametrize("fixture, case", CASES, ids=_id)
def test_mixed_batch_matches_original(fixture, case):
    model, io = loaded(fixture)
    images = torch.from_numpy(io[f"input_{case}"]).repeat(3, 1, 1, 1)
    with torch.no_grad():
        final = model(images, ["text removal", "tampered text detection", "text segmentation"])[-1]
    assert (final - torch.from_numpy(io[f"mixed_{case}_final"])).abs().max().item() <= TOLERANCE
