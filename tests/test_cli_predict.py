"""`upocr remove-text | segment-text | detect-tampering | demo` on files and folders, good and bad."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upocr.cli import main
from upocr.commands.predict import SAMPLES_DIR
from upocr.files import output_names

RNG = np.random.default_rng(1)


def _photo(height=50, width=70) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder with good images of several kinds, bad files, and a name shared across sub-folders."""
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    Image.fromarray(_photo()).save(folder / "a" / "photo.jpg")
    Image.fromarray(_photo(40, 30)).save(folder / "b" / "photo.png")  # same stem, another folder
    Image.fromarray(_photo()[:, :, 0]).save(folder / "grey.png")
    Image.fromarray((RNG.integers(0, 65535, (30, 20))).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(np.dstack([_photo(), np.full((50, 70), 128, np.uint8)]), "RGBA").save(folder / "alpha.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    whole = folder / "a" / "photo.jpg"
    (folder / "cut.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    return folder


GOOD = {"a/photo": (50, 70), "b/photo": (40, 30), "grey": (50, 70), "deep16": (30, 20), "alpha": (50, 70)}
BAD = ["empty.png", "text.jpg", "cut.jpg"]


def _run(*argv) -> int:
    return main([str(a) for a in argv])


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_remove_text_processes_good_inputs_and_reports_each_bad_one(tmp_path, inputs, tiny_weights, capsys):
    out = tmp_path / "out"
    code = _run("remove-text", inputs, tmp_path / "missing.png", "-o", out, "--weights", tiny_weights, "--size", "64")
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("upocr: ")]
    assert len(errors) == len(BAD) + 1
    for name in BAD:
        assert any(line.startswith(f"upocr: {inputs / name}: ") for line in errors)
    assert any("missing.png: no such file" in line for line in errors)
    # every good input gives its file at its own resolution; nothing else (no temporaries) is left
    assert _files(out) == sorted(f"{name}.png" for name in GOOD)
    for name, shape in GOOD.items():
        picture = np.asarray(Image.open(out / f"{name}.png"))
        assert picture.shape == (*shape, 3) and picture.dtype == np.uint8


def test_segment_text_writes_binary_masks_and_overlays(tmp_path, inputs, tiny_weights):
    out = tmp_path / "out"
    assert _run("segment-text", inputs / "a", "-o", out, "--weights", tiny_weights, "--size", "64", "--threshold", "1e-9") == 0
    mask = np.asarray(Image.open(out / "photo_mask.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    assert (mask == 255).all()  # threshold ~0: every pixel with any score is text
    overlay = np.asarray(Image.open(out / "photo_mask_overlay.jpg"))
    assert overlay.shape == (50, 70, 3)
    assert _files(out) == ["photo_mask.png", "photo_mask_overlay.jpg"]


def test_every_task_can_write_into_one_folder(tmp_path, inputs, tiny_weights):
    """Segmentation and tampering both wrote `{stem}_overlay.jpg`: the second command skipped the image."""
    out = tmp_path / "out"
    for verb in ("remove-text", "segment-text", "detect-tampering"):
        assert _run(verb, inputs / "a", "-o", out, "--weights", tiny_weights, "--size", "64") == 0, verb
    assert _files(out) == ["photo.png", "photo_classes.png", "photo_classes_overlay.jpg", "photo_mask.png", "photo_mask_overlay.jpg"]


def test_detect_tampering_writes_class_maps_in_tiles(tmp_path, inputs, tiny_weights):
    out = tmp_path / "out"
    argv = ["detect-tampering", inputs / "grey.png", inputs / "alpha.png", "-o", out, "--weights", tiny_weights]
    assert _run(*argv, "--size", "64", "--tile", "32", "--overlap", "8", "--batch-size", "8") == 0
    for name in ("grey", "alpha"):
        classes = np.asarray(Image.open(out / f"{name}_classes.png"))
        assert classes.shape == (50, 70) and set(np.unique(classes)) <= {0, 1, 2}
        assert np.asarray(Image.open(out / f"{name}_classes_overlay.jpg")).shape == (50, 70, 3)


def test_exif_rotated_input_gives_upright_output(tmp_path, tiny_weights):
    image = Image.fromarray(_photo(30, 60))
    exif = image.getexif()
    exif[0x0112] = 8  # rotate 90 CCW to view
    image.save(tmp_path / "turned.jpg", exif=exif)
    assert _run("remove-text", tmp_path / "turned.jpg", "-o", tmp_path / "out", "--weights", tiny_weights, "--size", "64") == 0
    assert np.asarray(Image.open(tmp_path / "out" / "turned.png")).shape == (60, 30, 3)


def test_pixel_limit_option_rejects_large_images(tmp_path, inputs, tiny_weights, capsys):
    out = tmp_path / "out"
    code = _run("remove-text", inputs / "grey.png", inputs / "deep16.png", "-o", out,
                "--weights", tiny_weights, "--size", "64", "--max-pixels", "1000")
    assert code == 1
    assert f"upocr: {inputs / 'grey.png'}: image too large" in capsys.readouterr().err
    assert _files(out) == ["deep16.png"]  # 600 pixels: under the limit


def test_inputs_are_never_overwritten(tmp_path, tiny_weights, capsys):
    Image.fromarray(_photo()).save(tmp_path / "keep.png")
    before = (tmp_path / "keep.png").read_bytes()
    assert _run("remove-text", tmp_path / "keep.png", "-o", tmp_path, "--weights", tiny_weights, "--size", "64") == 1
    assert "would overwrite an input" in capsys.readouterr().err
    assert (tmp_path / "keep.png").read_bytes() == before


def test_model_problems_are_one_clear_line(tmp_path, inputs, capsys):
    assert _run("remove-text", inputs / "grey.png", "-o", tmp_path / "o", "--weights", tmp_path / "nowhere") == 1
    assert _run("remove-text", inputs / "grey.png", "-o", tmp_path / "o", "--size", "100", "--weights", tmp_path) == 1
    if not torch.cuda.is_available():
        assert _run("remove-text", inputs / "grey.png", "-o", tmp_path / "o", "--device", "cuda") == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("upocr: ") for line in errors) and len(errors) == (2 if torch.cuda.is_available() else 3)
    assert not (tmp_path / "o").exists()


def test_empty_folder_is_reported(tmp_path, tiny_weights, capsys):
    (tmp_path / "none").mkdir()
    assert _run("segment-text", tmp_path / "none", "-o", tmp_path / "o", "--weights", tiny_weights) == 1
    assert "no images found" in capsys.readouterr().err


def test_output_names_keep_folders_and_resolve_clashes(tmp_path):
    for name in ["x/a.jpg", "y/a.jpg", "y/b.jpg", "y/b.png", "z/s/c.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    items = [
        (tmp_path / "x/a.jpg", None),  # files named directly: their stem, unless it clashes
        (tmp_path / "y/a.jpg", None),
        (tmp_path / "y/b.jpg", None),
        (tmp_path / "y/b.png", None),
        (tmp_path / "z/s/c.png", tmp_path / "z"),  # found in folder z: path below it
    ]
    assert output_names(items) == [Path("x/a"), Path("y/a"), Path("b_jpg"), Path("b_png"), Path("s/c")]


def test_demo_writes_one_side_by_side_picture(tmp_path, tiny_weights, capsys):
    samples = sorted(SAMPLES_DIR.glob("*.jpg"))
    assert 3 <= len(samples) <= 8 and all(p.stat().st_size < 100_000 for p in samples)
    # --tile off: the samples are larger than 4 x 64^2, and 64-px tiles of them would only add minutes here
    assert _run("demo", "-o", tmp_path / "demo", "--weights", tiny_weights, "--size", "64", "--tile", "off") == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "demo" / "demo.png") in printed and "weights:" in printed
    grid = np.asarray(Image.open(tmp_path / "demo" / "demo.png"))
    assert grid.ndim == 3 and grid.shape[0] > 240 * len(samples) and grid.shape[1] > 4 * 240


def test_existing_outputs_are_refused_with_a_hint(tmp_path, tiny_weights, capsys):
    """D1: `remove-text photos/*.jpg -o photos` used to replace the user's photos/holiday.png."""
    Image.fromarray(_photo()).save(tmp_path / "holiday.jpg")
    Image.fromarray(_photo()).save(tmp_path / "holiday.png")
    Image.fromarray(_photo()).save(tmp_path / "beach.jpg")
    before = (tmp_path / "holiday.png").read_bytes()
    argv = ["remove-text", tmp_path / "holiday.jpg", tmp_path / "beach.jpg", "-o", tmp_path, "--weights", tiny_weights, "--size", "64"]
    assert _run(*argv) == 1
    err = capsys.readouterr().err
    assert f"upocr: {tmp_path / 'holiday.jpg'}: output {tmp_path / 'holiday.png'} exists (use --overwrite)\n" in err
    assert (tmp_path / "holiday.png").read_bytes() == before and (tmp_path / "beach.png").exists()
    assert _run(*argv) == 1  # a second run into the same folder: both refused, and told what to do
    assert "2 image(s) skipped because their outputs exist" in capsys.readouterr().err
    assert _run(*argv, "--overwrite") == 0
    assert (tmp_path / "holiday.png").read_bytes() != before


@pytest.mark.parametrize(
    "option, value",
    [("--threshold", "0"), ("--threshold", "1"), ("--threshold", "-1"), ("--threshold", "1.5"),
     ("--threshold", "nan"), ("--threshold", "inf"), ("--max-pixels", "0"), ("--max-pixels", "-1"),
     ("--size", "100000"), ("--size", "0")],
)
def test_bad_option_values_are_argparse_errors(tmp_path, option, value, capsys):
    """D21: these were accepted (all text / no text, every image "a decompression bomb", out of memory)."""
    with pytest.raises(SystemExit) as stopped:
        _run("segment-text", tmp_path, "-o", tmp_path / "o", option, value)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"upocr segment-text: error: argument {option}")  # after the usage lines
    assert sum("error" in line for line in err) == 1
    if value == "100000":
        assert "--tile" in err[-1]


def test_ctrl_c_during_a_folder_is_one_line_and_exit_130(tmp_path, inputs, tiny_weights, monkeypatch, capsys):
    """D12: Ctrl-C used to print a 53-line traceback and no summary."""
    from upocr.predict import Predictor

    calls = {"n": 0}
    real_predict = Predictor.predict_many

    def predict_many(self, images, tasks, **options):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_predict(self, images, tasks)

    monkeypatch.setattr(Predictor, "predict_many", predict_many)
    assert _run("segment-text", inputs / "grey.png", inputs / "alpha.png", inputs / "deep16.png", "-o", tmp_path / "o",
                "--weights", tiny_weights, "--size", "64") == 130
    err = capsys.readouterr().err
    assert err == "upocr: interrupted after 2 of 3 image(s); outputs written so far are complete\n"
    assert _files(tmp_path / "o") == ["alpha_mask.png", "alpha_mask_overlay.jpg", "grey_mask.png", "grey_mask_overlay.jpg"]


def test_ctrl_c_reaching_main_is_one_line_and_exit_130(tmp_path, inputs, monkeypatch, capsys):
    import upocr.commands.predict as predict_command

    def load(args):
        raise KeyboardInterrupt  # e.g. while the weights load

    monkeypatch.setattr(predict_command, "build_predictor", load)
    assert _run("remove-text", inputs / "grey.png", "-o", tmp_path / "o") == 130
    assert capsys.readouterr().err == "upocr: interrupted\n"


def test_images_wider_than_jpeg_allows_get_png_overlays(tmp_path, tiny_weights, capfd):
    """D13: a 65,600 px wide image failed with "broken data stream" and a stray libjpeg line."""
    Image.fromarray(np.full((2, 65_600), 128, np.uint8)).save(tmp_path / "wide.png")
    assert _run("segment-text", tmp_path / "wide.png", "-o", tmp_path / "o", "--weights", tiny_weights, "--size", "64",
                "--tile", "off") == 0  # 1,000+ tiles of 64 px otherwise: minutes of CPU for a test about PNGs
    assert _files(tmp_path / "o") == ["wide_mask.png", "wide_mask_overlay.png"]
    assert Image.open(tmp_path / "o" / "wide_mask_overlay.png").size == (65_600, 2)
    assert capfd.readouterr().err == ""


def test_a_newline_in_a_file_name_does_not_split_the_error_line(tmp_path, tiny_weights, capsys):
    (tmp_path / "bad\nname.png").write_text("not a picture")
    (tmp_path / "fifo.png").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "fifo.png")
    assert _run("remove-text", tmp_path, "-o", tmp_path / "o", "--weights", tiny_weights, "--size", "64") == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"upocr: {tmp_path}/bad\\nname.png: not an image file (or an unsupported format)"]


def test_remove_text_grow_reaches_the_predictor_and_refuses_bad_values(tiny_weights, tmp_path, capsys):
    from upocr.cli import build_parser
    from upocr.commands.predict import build_predictor

    args = build_parser().parse_args(["remove-text", str(tmp_path), "-o", str(tmp_path / "o"), "--weights", str(tiny_weights), "--grow", "7"])
    assert build_predictor(args).grow == 7
    args = build_parser().parse_args(["remove-text", str(tmp_path), "-o", str(tmp_path / "o"), "--weights", str(tiny_weights)])
    assert build_predictor(args).grow == 3  # the default, REMOVAL_TEXT_DILATION
    for value in ("-1", "1.5"):
        with pytest.raises(SystemExit) as stopped:
            _run("remove-text", tmp_path, "-o", tmp_path / "o", "--grow", value)
        assert stopped.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("upocr remove-text: error: argument --grow")
