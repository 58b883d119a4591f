"""The evaluation's label readers: a TextSeg label is recognised per folder, not per file (finding N9)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upocr.cli import main
from upocr.data import layouts
from upocr.evaluate.readers import check_textseg_label


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_a_textseg_label_without_text_pixels_is_accepted_beside_labels_with_text(tmp_path: Path):
    """Only ignore (255) pixels: valid TextSeg when its folder holds TextSeg labels (100 / 200)."""
    fringe_only = _save(tmp_path / "labels" / "a_maskfg.png", np.array([[0, 255], [0, 0]], np.uint8))
    _save(tmp_path / "labels" / "b_maskfg.png", np.array([[0, 100], [200, 255]], np.uint8))
    check_textseg_label(fringe_only)


def test_a_folder_of_0_255_masks_is_still_refused(tmp_path: Path):
    masks = [_save(tmp_path / "masks" / f"{name}.png", np.array([[0, 255], [255, 0]], np.uint8)) for name in "ab"]
    for mask in masks:
        with pytest.raises(ValueError, match="a 0/255 mask, not a TextSeg label"):
            check_textseg_label(mask)


def test_synthetic_64px_test_labels_evaluate_with_perfect_predictions(tmp_path: Path, capsys):
    """`upocr synth --size 64 --split test` writes TextSeg labels whose only non-background pixels are
    the ignored fringe of tiny glyphs (seed 0, sample 0); `evaluate segmentation` scores them all."""
    root = tmp_path / "data"
    assert main(["synth", "--out", str(root), "--count", "3", "--size", "64", "--split", "test",
                 "--tasks", "segmentation", "--workers", "1"]) == 0
    samples = layouts.segmentation_samples(root, "test")
    values = [set(np.unique(np.asarray(Image.open(s.label))).tolist()) for s in samples]
    assert any(v & {255} and not v & {100, 200} for v in values)  # the case N9 is about is there
    for sample in samples:  # a perfect prediction: a 0/255 mask of the text pixels
        raw = np.asarray(Image.open(sample.label))
        _save(tmp_path / "pred" / f"{sample.name}.png", np.where(raw == layouts.TEXTSEG_TEXT, 255, 0).astype(np.uint8))
    capsys.readouterr()
    gt = root / layouts.SEGMENTATION_DIR / "semantic_label"
    assert main(["evaluate", "segmentation", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--quiet"]) == 0
    assert "TextSeg" not in capsys.readouterr().err
