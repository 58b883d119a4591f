"""The real-image benchmark (`upocr evaluate real`): reading the layout, the erasure metric, the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from upocr.evaluate import real

BACKGROUND = (180, 170, 160)
WORDS = [(10, 12, 40, 24), (60, 40, 110, 54)]  # x0, y0, x1, y1 of dark "words" on a 128x96 picture


def _quad(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _picture() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image with dark words, text-free label, ink mask)."""
    label = np.empty((96, 128, 3), np.uint8)
    label[:] = BACKGROUND
    image = label.copy()
    ink = np.zeros((96, 128), np.uint8)
    for x0, y0, x1, y1 in WORDS:
        image[y0:y1, x0:x1] = 20
        ink[y0:y1, x0:x1] = 255
    return image, label, ink


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    """A tiny real-dev-layout folder: one removal pair, one box image, one ink-mask image."""
    image, label, ink = _picture()
    polygons = [{"points": _quad(*w), "text": "w", "ignore": False} for w in WORDS]
    for kind, name, extra in [
        ("removal-pairs", "scut_1", {"label": "scut_1_label.png"}),
        ("scene-boxes", "ic15_1", {}),
        ("seg-masks", "dibco_1", {"mask": "dibco_1_mask.png", "mask_type": "stroke"}),
    ]:
        folder = tmp_path / kind
        folder.mkdir()
        Image.fromarray(image).save(folder / f"{name}.png")
        if "label" in extra:
            Image.fromarray(label).save(folder / extra["label"])
        if "mask" in extra:
            Image.fromarray(ink).save(folder / extra["mask"])
        meta = {"image": f"{name}.png", "polygons": polygons, "complete": True, **extra}
        (folder / f"{name}.json").write_text(json.dumps(meta))
    return tmp_path


def dark_box_detector(image: np.ndarray) -> list[np.ndarray]:
    """A perfect detector for the fixture: bounding boxes of dark regions."""
    dark = (image.max(axis=2) < 80).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(dark)
    return [np.array(_quad(x, y, x + w, y + h), np.float32) for x, y, w, h, _ in stats[1:count]]


def paint_background(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[image.max(axis=2) < 80] = BACKGROUND
    return out


def test_reads_the_layout(real_dir: Path) -> None:
    samples = real.read_real_samples(real_dir)
    assert [s.kind for s in samples] == ["removal-pairs", "scene-boxes", "seg-masks"]
    pair = samples[0]
    assert pair.label is not None and pair.label.name == "scut_1_label.png"
    assert pair.source == "scut" and len(pair.words) == 2 and pair.complete
    assert samples[2].mask_type == "stroke"


def test_layout_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no annotated images"):
        real.read_real_samples(tmp_path)
    (tmp_path / "a.json").write_text('{"polygons": []}')
    with pytest.raises(ValueError, match="a.json: its image is missing"):
        real.read_real_samples(tmp_path)


def test_polygon_iou_and_matching() -> None:
    box = np.array(_quad(0, 0, 10, 10), np.float32)
    assert real.polygon_iou(box, box) == pytest.approx(1.0)
    assert real.polygon_iou(box, box + 50) == 0.0
    half = np.array(_quad(0, 0, 10, 5), np.float32)
    assert 0.4 < real.polygon_iou(box, half) < 0.65
    # one detection finds one word at most
    assert real.words_found([box, box.copy()], [box]) == 1
    assert real.words_found([box], [box + 50]) == 0


def test_benchmark_scores_order_methods(real_dir: Path) -> None:
    samples = real.read_real_samples(real_dir)
    result = real.run_real_benchmark(
        samples,
        {"paint": paint_background, "detector + Telea": real.detector_telea(dark_box_detector)},
        {"oracle": lambda im: im.max(axis=2) < 80, "nothing": lambda im: np.zeros(im.shape[:2], bool)},
        dark_box_detector,
        progress=False,
    )
    assert result.before_erasure == 1.0  # the detector finds every word of the input
    summary = {name: scores.summary() for name, scores in result.removal.items()}
    assert summary["input (no change)"]["erasure"] == 1.0
    assert summary["paint"]["erasure"] == 0.0
    assert summary["paint"]["removal_psnr"] is None  # a perfect result is skipped, as the original does
    assert summary["paint"]["outside_change"] == 0.0
    assert summary["detector + Telea"]["erasure"] == 0.0
    assert summary["detector + Telea"]["removal_psnr"] > summary["input (no change)"]["removal_psnr"] + 5
    assert summary["input (no change)"]["removal_psnr_by_source"].keys() == {"scut"}
    oracle = result.segmentation["oracle"].summary()
    assert oracle["ink"]["fg_iou"] == pytest.approx(1.0)
    assert oracle["box_recall"] == 1.0 and oracle["box_precision"] == 1.0
    nothing = result.segmentation["nothing"].summary()
    assert nothing["box_recall"] == 0.0 and nothing["ink"]["fg_iou"] == 0.0
    text, data = real.real_report(result)
    assert "| paint |" in text and "| oracle | 1.000 |" in text
    assert data["removal"]["paint"]["per_image"]["ic15_1"]["erasure"] == 0.0


def test_oracle_rows_undo_false_positives_and_fill_the_words(real_dir: Path) -> None:
    def paint_and_smudge(image: np.ndarray) -> np.ndarray:
        out = paint_background(image)
        out[80:90, 5:40] = 0  # a false positive far from every word
        return out

    samples = real.read_real_samples(real_dir)
    result = real.run_real_benchmark(samples, {"smudge": paint_and_smudge}, {}, dark_box_detector,
                                     oracles=["smudge"], progress=False)
    inside = f"smudge, inside the words{real.ORACLE_TAG}"
    words = f"annotated words + Telea{real.ORACLE_TAG}"
    assert list(result.removal) == ["input (no change)", "smudge", inside, words]
    summary = {name: scores.summary() for name, scores in result.removal.items()}
    assert summary["smudge"]["outside_change"] > 0 and summary["smudge"]["removal_psnr"] < 30
    # inside the words only, the smudge is undone and the painted words stay: a perfect result again
    assert summary[inside]["outside_change"] == 0.0 and summary[inside]["erasure"] == 0.0
    assert summary[inside]["removal_psnr"] is None
    # Telea in the annotated (grown) boxes of flat words on a flat background: all words gone, near-perfect
    assert summary[words]["erasure"] == 0.0
    assert summary[words]["removal_psnr"] is None or summary[words]["removal_psnr"] > 40
    assert f"| {inside} |" in real.real_report(result)[0]
    # without oracles, no oracle rows
    plain = real.run_real_benchmark(samples, {"smudge": paint_and_smudge}, {}, dark_box_detector, progress=False)
    assert list(plain.removal) == ["input (no change)", "smudge"]


def test_tampering_false_alarms_and_recall(real_dir: Path) -> None:
    # Mark the second word of the box image as a constructed forgery; everything else is genuine text.
    sidecar = real_dir / "scene-boxes" / "ic15_1.json"
    meta = json.loads(sidecar.read_text())
    meta["polygons"][1]["tampered"] = True
    sidecar.write_text(json.dumps(meta))
    samples = real.read_real_samples(real_dir)
    assert samples[1].tampered == (False, True) and samples[0].tampered == (False, False)

    def flag_right_half(image: np.ndarray) -> np.ndarray:
        classes = np.where(image.max(axis=2) < 80, 1, 0).astype(np.uint8)
        classes[:, 50:] = 2  # the second word lies right of x = 50, the first left of it
        return classes

    result = real.run_real_benchmark(
        samples, {}, {}, dark_box_detector, progress=False,
        tampering_methods={"right half": flag_right_half, "all real": lambda im: np.ones(im.shape[:2], np.uint8)},
    )
    right, all_real = (result.tampering[name].summary() for name in ("right half", "all real"))
    # 3 images x 2 words: the second word is genuine in two images and flagged there.
    first, second = (int(real.polygon_mask([w], (96, 128)).sum()) for w in samples[0].words)
    assert right["false_alarms"] == pytest.approx(2 * second / (3 * first + 2 * second))
    assert right["tampered_recall"] == 1.0
    assert all_real["false_alarms"] == 0.0 and all_real["tampered_recall"] == 0.0
    # The original's pixel IoU of the tampered class, over the image with the forgery: its word / the right half.
    assert right["tampered_iou"] == pytest.approx(second / (96 * (128 - 50)))
    assert all_real["tampered_iou"] == 0.0
    text, data = real.real_report(result)
    assert "Tampered text detection" in text and data["tampering"]["right half"]["tampered_recall"] == 1.0


def test_copy_moves_constructed_from_the_real_images_are_scored_as_annotated_forgeries(real_dir: Path) -> None:
    from upocr.evaluate.forensic import constructed_forgeries, constructed_forgery_scores

    samples = real.read_real_samples(real_dir)
    made = list(constructed_forgeries(samples, trials=2, progress=False))
    assert len(made) == 3 * 2  # every image has two words of about the same height
    for sample, forged in made:
        assert sample.tampered.count(True) == 1 and len(sample.words) == 2 and forged.shape == (96, 128, 3)
    again = list(constructed_forgeries(samples, trials=2, progress=False))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(made, again))  # reproducible
    scores = constructed_forgery_scores(samples, {"all tampered": lambda im: np.full(im.shape[:2], 2, np.uint8),
                                              "all real": lambda im: np.ones(im.shape[:2], np.uint8)},
                                    trials=2, progress=False)
    flagged, genuine = scores["all tampered"].summary(), scores["all real"].summary()
    assert flagged["tampered_recall"] == 1.0 and flagged["false_alarms"] == 1.0 and 0 < flagged["tampered_iou"] < 1
    assert genuine["tampered_recall"] == 0.0 and genuine["false_alarms"] == 0.0 and genuine["tampered_iou"] == 0.0


def _page_with_a_noisy_word() -> tuple[np.ndarray, list[np.ndarray], int]:
    """A flat page of eight dark words on the 8 x 8 grid, saved once as JPEG; then the fourth word's ink
    replaced by noise (it saves nothing like the others). Returns (image, word boxes, the forged word)."""
    from upocr.data.synth.tampering import jpeg_roundtrip

    image = np.full((96, 400, 3), 200, np.uint8)
    boxes = [np.array([8 + 48 * i, 24, 39 + 48 * i, 39], np.float32) for i in range(8)]
    for x1, y1, x2, y2 in (b.astype(int) for b in boxes):
        image[y1:y2 + 1, x1:x2 + 1] = 40
    image = jpeg_roundtrip(image, 90)
    x1, y1, x2, y2 = boxes[3].astype(int)
    image[y1:y2 + 1, x1:x2 + 1] = np.random.default_rng(0).integers(0, 256, (y2 - y1 + 1, x2 - x1 + 1, 3))
    return image, boxes, 3


def test_the_classical_ela_competitor_flags_the_word_whose_error_level_stands_out() -> None:
    from upocr.evaluate.forensic import ela_word_outliers

    image, boxes, forged = _page_with_a_noisy_word()
    classes = ela_word_outliers(lambda im: (boxes, boxes))(image)
    for index, (x1, y1, x2, y2) in enumerate(b.astype(int) for b in boxes):
        assert np.all(classes[y1:y2 + 1, x1:x2 + 1] == (2 if index == forged else 1)), index
    assert classes[:20].max() == 0  # nothing painted outside the words
    # Too few words to have a median to stand out from: none is flagged.
    few = ela_word_outliers(lambda im: (boxes[2:4], boxes[2:4]))(image)
    assert few.max() == 1


def test_the_deeptrace_ela_competitor_fills_its_anomaly_boxes() -> None:
    from upocr.evaluate.forensic import ela_anomaly_boxes

    image, boxes, forged = _page_with_a_noisy_word()
    classes = ela_anomaly_boxes()(image)
    x1, y1, x2, y2 = boxes[forged].astype(int)
    assert set(np.unique(classes)) <= {0, 2}  # it does not say where real text is
    assert (classes[y1:y2 + 1, x1:x2 + 1] == 2).mean() > 0.5
    assert (classes == 2).mean() < 0.1


def test_the_forgeries_picture_shows_each_forgery_the_truth_and_every_method(real_dir: Path) -> None:
    from upocr.evaluate.forensic import constructed_forgery_picture

    samples = real.read_real_samples(real_dir)
    methods = {"all tampered": lambda im: np.full(im.shape[:2], 2, np.uint8),
               "nothing": lambda im: np.zeros(im.shape[:2], np.uint8)}
    picture = constructed_forgery_picture(samples, methods, kinds=["copy-move"], per_kind=2, height=64)
    assert picture.ndim == 3 and picture.shape[0] > 2 * 64 and picture.shape[1] > 4 * 64  # 2 rows, 4 columns
    red = (picture[..., 0] > 200) & (picture[..., 1] < 150) & (picture[..., 2] < 150)
    assert red.any()  # the truth's forged field and "all tampered" are drawn red
    with pytest.raises(ValueError, match="two words or more"):
        constructed_forgery_picture([], methods)


def test_unreadable_image_is_reported_and_skipped(real_dir: Path) -> None:
    (real_dir / "scene-boxes" / "ic15_1.png").write_bytes(b"not an image")
    result = real.run_real_benchmark(real.read_real_samples(real_dir), {}, {}, dark_box_detector, progress=False)
    assert len(result.errors) == 1 and "ic15_1.png" in result.errors[0]
    assert result.removal["input (no change)"].words == 4  # the other two images were scored


def test_cli(real_dir: Path, tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "upocr.cli", "evaluate", "real", "--data", str(real_dir), "--weights", str(tiny_weights),
        "--detector", "strokes", "--variants", "resize", "tiles", "--pipelines", "words-telea", "raw", "telea-fill", "--quiet",
        "--json", str(out / "real.json"), "--markdown", str(out / "real.md"), "--picture", str(out / "real.png"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| upocr (resize) |" in done.stdout and "| upocr (tiles) |" in done.stdout
    data = json.loads((out / "real.json").read_text())
    oracles = {f"upocr ({v}), inside the words{real.ORACLE_TAG}" for v in ("resize", "tiles")}
    oracles.add(f"annotated words + Telea{real.ORACLE_TAG}")
    pipelines = {"upocr --removal words-telea", "upocr --removal raw"}  # telea-fill is the tiny weights' default row
    assert set(data["removal"]) == {"input (no change)", "upocr (resize)", "upocr (tiles)",
                                    "strokes detector rectangles + Telea", *pipelines, *oracles}
    assert set(data["segmentation"]) == {"upocr (resize)", "upocr (tiles)", "Sauvola", "Otsu",
                                         "upocr --segmentation model-ink", "upocr --segmentation model-in-words"}
    assert set(data["tampering"]) == {"upocr (resize)", "upocr (tiles)", "upocr --tampering words",
                                      "detector words, ELA outliers (classical)", "deeptrace-ela anomaly boxes"}
    copy_moves = data["constructed_forgeries"]["copy-move"]  # --forgeries 2 by default
    assert set(copy_moves) == set(data["tampering"]) and all(row["tampered_recall"] is not None for row in copy_moves.values())
    assert set(data["constructed_forgeries"]) == {"copy-move", "retyped digits"}
    assert Image.open(out / "real.png").size[0] > 500
    # ... and the constructed forgeries with every tampering method's verdict: forgery, truth, 5 methods per row
    assert Image.open(out / "real_tampering.png").size[0] > 7 * 64


def _one_sample(tmp_path: Path, sidecar: dict) -> Path:
    image, _, _ = _picture()
    Image.fromarray(image).save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps({"image": "a.png", "complete": True, **sidecar}))
    return tmp_path / "a.json"


GOOD_POLYGON = {"points": _quad(*WORDS[0])}


@pytest.mark.parametrize("sidecar, problem", [
    ({"polygons": None}, '"polygons" must be a list of polygons, got null'),
    ({"polygons": {"points": []}}, '"polygons" must be a list of polygons'),
    ({"polygons": [1, 2, 3]}, 'polygon 1 must be an object with "points", got 1'),
    ({"polygons": [GOOD_POLYGON, {"text": "w"}]}, 'polygon 2 must be an object with "points"'),
    ({"polygons": [{"points": [[0, 0], [5, 5, 5], [9, 0]]}]}, "polygon 1: points must be at least 3 [x, y] number pairs"),
    ({"polygons": [{"points": "abc"}]}, "polygon 1: points must be at least 3 [x, y] number pairs"),
    ({"polygons": [{"points": [[0, 0], [5, 5]]}]}, "polygon 1: points must be at least 3 [x, y] number pairs"),
    ({"polygons": [{"points": [[0, 0], [1e12, 0], [0, 9]]}]}, "polygon 1: coordinates must be finite numbers"),
    ({"polygons": [{"points": [[0, 0], [float("nan"), 0], [0, 9]]}]}, "polygon 1: coordinates must be finite numbers"),
    ({"polygons": [{**GOOD_POLYGON, "tampered": "yes"}]}, 'polygon 1: "tampered" must be true or false, got "yes"'),
    ({"polygons": [], "image": 5}, '"image" must be a file name (a string), got 5'),
    ({"polygons": [], "label": 7}, '"label" must be a file name (a string), got 7'),
    ({"polygons": [], "complete": "no"}, '"complete" must be true or false, got "no"'),
    ({"polygons": [], "label": "../../../../../../etc/hostname"}, '"label" "../../../../../../etc/hostname" leads outside'),
    ({"polygons": [], "image": "/etc/hostname"}, '"image" "/etc/hostname" leads outside'),
])
def test_malformed_sidecars_are_one_line_naming_the_sidecar(tmp_path: Path, sidecar: dict, problem: str) -> None:
    """N10: these gave 16- to 20-line tracebacks, lines without the sidecar's name, or were accepted."""
    path = _one_sample(tmp_path, sidecar)
    with pytest.raises(ValueError) as raised:
        real.read_real_samples(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{path}: {problem}") and "\n" not in message


def test_an_image_without_a_sidecar_is_a_note(real_dir: Path) -> None:
    """N17: it was skipped without a word."""
    Image.fromarray(_picture()[0]).save(real_dir / "scene-boxes" / "lonely.png")
    notes: list[str] = []
    samples = real.read_real_samples(real_dir, on_note=notes.append)
    assert len(samples) == 3  # labels and masks named by sidecars are not "without a sidecar"
    assert notes == [f"{real_dir / 'scene-boxes' / 'lonely.png'}: no lonely.json sidecar beside it; skipped"]


def test_cli_without_rapidocr_is_one_line(real_dir: Path, tiny_weights: Path, monkeypatch, capsys) -> None:
    """N17: a 16-line ImportError traceback."""
    from upocr.cli import main

    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # makes the import fail
    argv = ["evaluate", "real", "--data", str(real_dir), "--weights", str(tiny_weights), "--quiet", "--detector", "rapidocr"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.endswith("(or use the default --detector ppocr)")


def test_retyped_digits_change_the_digits_of_a_numeric_field_only(real_dir: Path) -> None:
    from upocr.evaluate.forensic import FORGERIES, constructed_forgeries, retyped_digits_forgery

    samples = real.read_real_samples(real_dir)
    image = np.asarray(Image.open(samples[0].image).convert("RGB"))
    rng = np.random.default_rng(0)
    assert retyped_digits_forgery(image, samples[0].words, ("w", "w"), rng) is None  # no digits: nothing to re-type
    image = np.full((60, 200, 3), 235, np.uint8)
    cv2.putText(image, "TOTAL", (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (20, 20, 20), 2)
    cv2.putText(image, "12.50", (110, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (20, 20, 20), 2)
    words = [np.array([[3, 20], [95, 20], [95, 46], [3, 46]], np.float32), np.array([[107, 20], [190, 20], [190, 46], [107, 46]], np.float32)]
    forged, polygons, tampered = retyped_digits_forgery(image, words, ("TOTAL", "12.50"), rng)
    assert tampered == [False, True] and len(polygons) == 2
    change = np.abs(forged.astype(int) - image.astype(int)).max(axis=2) > 60
    assert change[20:47, 107:191].mean() > 0.05  # the amount was drawn again, other digits
    assert change[:, :100].mean() < 0.01  # "TOTAL" untouched (up to the JPEG re-save)
    assert set(FORGERIES) == {"copy-move", "retyped digits"}
    assert samples[0].texts == ("w", "w")
    assert list(constructed_forgeries(samples, trials=1, kind="retyped digits", progress=False)) == []
