"""`upocr evaluate ...` end to end on tiny folders and a tiny synthetic test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upocr.cli import main
from upocr.evaluate.removal import prepare_removal_pair, removal_metrics


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def test_split_root(tmp_path_factory) -> Path:
    from upocr.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("eval-data")
    generate_dataset(root, count=2, seed=3, split="test", size=64, workers=1, progress=False)
    return root


# ---------------------------------------------------------------- removal


def test_removal_cli_matches_the_metric_functions(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    preds = [np.clip(gts[0].astype(int) + 40, 0, 255).astype(np.uint8), gts[1].copy(), gts[2] // 2]
    for i, (pred, gt) in enumerate(zip(preds, gts)):
        _save(tmp_path / "pred" / f"img{i}.png", pred)
        _save(tmp_path / "gt" / f"img{i}.png", gt)
    code = main(["evaluate", "removal", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--json", str(tmp_path / "r.json"), "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    pairs = [prepare_removal_pair(Image.fromarray(p), Image.fromarray(g)) for p, g in zip(preds, gts)]
    expected = removal_metrics([p for p, _ in pairs], [g for _, g in pairs])
    assert result["count"] == 2 == expected["count"]  # the identical pair is skipped
    for key in ("psnr", "mssim", "mse", "age", "peps", "pceps"):
        assert result[key] == pytest.approx(expected[key])
    assert result["fid"] is None and "fid-weights" in result["fid_missing"]
    assert "PSNR" in capsys.readouterr().out


def test_removal_cli_reports_a_bad_file_and_scores_the_rest(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for i in range(2):
        gt = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        _save(tmp_path / "gt" / f"img{i}.png", gt)
        _save(tmp_path / "pred" / f"img{i}.png", gt // 2)
    (tmp_path / "pred" / "img0.png").write_bytes(b"not a png")
    code = main(["evaluate", "removal", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--json", str(tmp_path / "r.json"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "img0.png" in err and err.count("error:") == 1
    assert json.loads((tmp_path / "r.json").read_text())["count"] == 1


def test_removal_cli_count_mismatch_is_a_clear_error(tmp_path, capsys):
    _save(tmp_path / "pred" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "gt").mkdir()
    assert main(["evaluate", "removal", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--quiet"]) == 2
    assert "0 ground-truth images" in capsys.readouterr().err


# ---------------------------------------------------------------- segmentation


def test_segmentation_cli_masks_and_raw_outputs(tmp_path):
    # TextSeg label: 100 text, 200 word effect (-> background), 255 ignored.
    label = np.array([[100, 100, 0, 200], [255, 100, 0, 0]], np.uint8)
    _save(tmp_path / "semantic_label" / "a_maskfg.png", label)
    mask = np.array([[255, 0, 255, 255], [255, 255, 0, 0]], np.uint8)
    _save(tmp_path / "pred" / "a_mask.png", mask)
    code = main(["evaluate", "segmentation", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "semantic_label"),
                 "--json", str(tmp_path / "s.json"), "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "s.json").read_text())
    # Kept pixels (ignore dropped): TP 2, FN 1, FP 2 (the background and the word-effect pixel), TN 2.
    assert result["count"] == 1
    assert result["fg_iou"] == pytest.approx(2 / 5)
    assert result["precision"] == pytest.approx(2 / 4)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f_score"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))

    # Raw output colours: channel mean of RGB/255 > threshold is text.
    raw = np.zeros((2, 4, 3), np.uint8)
    raw[0, 0] = (255, 0, 0)  # mean 1/3
    raw[0, 1] = (255, 255, 0)  # mean 2/3
    raw[1, 1] = (200, 200, 200)
    _save(tmp_path / "raw" / "a.png", raw)
    main(["evaluate", "segmentation", "--pred", str(tmp_path / "raw"), "--gt", str(tmp_path / "semantic_label"),
          "--threshold", "0.4", "--json", str(tmp_path / "r.json"), "--quiet"])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["precision"] == pytest.approx(1.0)  # predicted text: (0,1) and (1,1), both text
    assert result["recall"] == pytest.approx(2 / 3)
    main(["evaluate", "segmentation", "--pred", str(tmp_path / "raw"), "--gt", str(tmp_path / "semantic_label"),
          "--threshold", "0.3", "--json", str(tmp_path / "r.json"), "--quiet"])
    assert json.loads((tmp_path / "r.json").read_text())["recall"] == pytest.approx(1.0)


# ---------------------------------------------------------------- tampering


def test_tampering_cli_class_maps_at_the_image_size(tmp_path):
    gt_dir, img_dir = tmp_path / "test_gt", tmp_path / "test_img"
    gt_dir.mkdir()
    (gt_dir / "a.txt").write_text("0,0,1,1,1\n4,0,5,1,2\n")  # inclusive corners: 2x2 real, 2x2 tampered
    _save(img_dir / "a.jpg", np.zeros((4, 6, 3), np.uint8))
    classes = np.zeros((4, 6), np.uint8)
    classes[0:2, 0:2] = 1
    classes[0:2, 3:5] = 2  # overlaps the tampered box by 2 pixels
    _save(tmp_path / "pred" / "a_classes.png", classes)
    code = main(["evaluate", "tampering", "--pred", str(tmp_path / "pred"), "--gt", str(gt_dir),
                 "--json", str(tmp_path / "t.json"), "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["real"] == pytest.approx({"iou": 1.0, "precision": 1.0, "recall": 1.0, "f_score": 1.0})
    # tampered: TP 2, FP 2, FN 2.
    assert result["tampered"]["iou"] == pytest.approx(2 / 6)
    assert result["tampered"]["f_score"] == pytest.approx(0.5)
    assert result["miou"] == pytest.approx((1 + 1 / 3) / 2)
    assert result["mf"] == pytest.approx(0.75)

    # The same prediction as raw output colours (R background, G real, B tampered) at another size:
    # bilinear resize to the image size, then argmax.
    raw = np.zeros((8, 12, 3), np.uint8)
    raw[..., 0] = 255
    raw[0:4, 0:4] = (0, 255, 0)
    raw[0:4, 6:10] = (0, 0, 255)
    _save(tmp_path / "raw" / "a.png", raw)
    main(["evaluate", "tampering", "--pred", str(tmp_path / "raw"), "--gt", str(gt_dir),
          "--json", str(tmp_path / "r.json"), "--quiet"])
    assert json.loads((tmp_path / "r.json").read_text())["real"]["iou"] == pytest.approx(1.0)


# ---------------------------------------------------------------- model and baselines


def test_baselines_command_writes_tables_json_and_picture(test_split_root, tmp_path):
    out = tmp_path / "out"
    code = main(["evaluate", "baselines", "--data-root", str(test_split_root), "--out", str(out),
                 "--markdown", str(tmp_path / "t.md"), "--json", str(tmp_path / "t.json"), "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert set(result["tasks"]["removal"]) == {"telea-oracle-mask", "telea-detector-mask"}
    assert set(result["tasks"]["segmentation"]) == {"otsu", "sauvola"}
    assert result["tasks"]["tampering"]["all-real"]["tampered"]["recall"] == 0.0
    for methods in result["tasks"].values():
        assert all(m["count"] == 2 for m in methods.values())
    markdown = (tmp_path / "t.md").read_text()
    assert "| telea-oracle-mask (oracle: reads ground truth) |" in markdown and "| sauvola |" in markdown
    assert "| all-real (oracle: reads ground truth) |" in markdown and "| detector-boxes-real |" in markdown
    assert Image.open(out / "samples.png").size[0] > 100
    assert len(list((out / "removal" / "telea-oracle-mask").glob("*.png"))) == 2


def test_model_command_scores_a_tiny_model_beside_the_baselines(test_split_root, tmp_path):
    from upocr.model import build_model
    from upocr.model.checkpoint import save_pretrained

    weights = tmp_path / "weights"
    save_pretrained(build_model("tiny"), weights)
    code = main(["evaluate", "model", "--weights", str(weights), "--data-root", str(test_split_root), "--size", "64",
                 "--tasks", "removal", "segmentation", "tampering", "--out", str(tmp_path / "out"),
                 "--json", str(tmp_path / "m.json"), "--quiet"])
    assert code == 0
    tasks = json.loads((tmp_path / "m.json").read_text())["tasks"]
    assert tasks["removal"]["model"]["count"] == 2
    assert set(tasks["segmentation"]) == {"model", "model+model-ink", "model+model-in-words", "otsu", "sauvola"}
    assert set(tasks["tampering"]["model"]) >= {"real", "tampered", "miou", "mf", "count"}
    removal_output = Image.open(next((tmp_path / "out" / "removal" / "model").glob("*.png")))
    assert removal_output.size == (64, 64)  # kept at the model size, as the original saves it
    # Each of upocr's removal result modes is scored beside it, at the image's own resolution.
    image = Image.open(next((test_split_root / "TextRemoval" / "SCUT-ENS" / "test" / "image").glob("*")))
    for method in ("model+blend", "model+model-fill", "model+telea-fill"):
        assert tasks["removal"][method]["count"] == 2
        written = Image.open(next((tmp_path / "out" / "removal" / method).glob("*.png")))
        assert written.size == image.size


def test_picture_rows_run_from_the_models_best_to_its_worst_image(tmp_path):
    from types import SimpleNamespace

    from upocr.evaluate.runner import EvaluationReport, MethodResult, per_image_score, successes_and_failures
    from upocr.evaluate.removal import FolderEvaluation
    from upocr.tasks import Task

    rng = np.random.default_rng(1)
    samples, pairs = [], []
    for i, noise in enumerate([30, 2, 60, 10, 0]):  # PSNR order: 4 (identical), 1, 3, 0, 2
        gt = rng.integers(40, 200, (32, 32, 3), dtype=np.uint8)
        pred = np.clip(gt.astype(int) + rng.integers(-noise, noise + 1, gt.shape), 0, 255).astype(np.uint8)
        gt_path, pred_path = _save(tmp_path / "gt" / f"{i}.png", gt), _save(tmp_path / "pred" / f"{i}.png", pred)
        samples.append(SimpleNamespace(image=gt_path, label=gt_path, mask=None, name=str(i)))
        pairs.append((pred_path, gt_path))
    assert per_image_score(Task.TEXT_REMOVAL, *pairs[4]) == float("inf")
    assert per_image_score(Task.TEXT_REMOVAL, *pairs[1]) > per_image_score(Task.TEXT_REMOVAL, *pairs[0])
    report = EvaluationReport(results=[MethodResult(Task.TEXT_REMOVAL, "model", FolderEvaluation({}, [], []), pairs)])
    picked = successes_and_failures(Task.TEXT_REMOVAL, report, samples, 3)
    assert [s.name for s in picked] == ["4", "3", "2"]  # best, median, worst
    # Without a model result: the first samples, as before.
    assert [s.name for s in successes_and_failures(Task.TEXT_REMOVAL, EvaluationReport(), samples, 2)] == ["0", "1"]


# ---------------------------------------------------------------- partial or wrong inputs (D17)


def _textseg(root: Path, names: dict[str, str]) -> Path:
    """A TextSeg folder: semantic_label/<name>_maskfg.png for each name, split.json by the given split."""
    label = np.array([[100, 100, 0, 200], [255, 100, 0, 0]], np.uint8)
    for name in names:
        _save(root / "TextSeg" / "semantic_label" / f"{name}_maskfg.png", label)
    split: dict[str, list[str]] = {}
    for name, part in names.items():
        split.setdefault(part, []).append(name)
    (root / "TextSeg" / "split.json").write_text(json.dumps(split))
    return root / "TextSeg" / "semantic_label"


def _mask(path: Path, shape=(2, 4)) -> Path:
    return _save(path, np.full(shape, 255, np.uint8))


def test_missing_test_predictions_fail_unless_allowed(tmp_path, capsys):
    gt = _textseg(tmp_path, {"a": "test", "b": "test", "c": "test", "t1": "train", "t2": "train"})
    _mask(tmp_path / "pred" / "a_mask.png")
    args = ["evaluate", "segmentation", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    # Only the test split counts: the train labels in the same folder are not "missing".
    assert err == f"error: {tmp_path / 'pred'}: 2 ground truths in {gt} have no prediction; " \
                  "scores on a partial set are not comparable (--allow-missing scores it anyway)"
    assert main(args + ["--allow-missing"]) == 0
    assert "warning: 2 of 3 ground truths have no prediction and are not evaluated: b, c" in capsys.readouterr().err


def test_tampering_missing_predictions_and_images_are_reported(tmp_path, capsys):
    gt_dir, img_dir = tmp_path / "test_gt", tmp_path / "test_img"
    gt_dir.mkdir()
    for name in ("a", "b", "c"):
        (gt_dir / f"{name}.txt").write_text("0,0,1,1,1\n")
        _save(tmp_path / "pred" / f"{name}_classes.png", np.zeros((4, 6), np.uint8))
    _save(img_dir / "a.jpg", np.zeros((4, 6, 3), np.uint8))
    args = ["evaluate", "tampering", "--pred", str(tmp_path / "pred"), "--gt", str(gt_dir), "--images", str(img_dir), "--quiet"]
    assert main(args) == 0
    assert f"warning: 2 ground truths have no image in {img_dir} (boxes drawn at the prediction's size): b; c" in capsys.readouterr().err
    (tmp_path / "pred" / "c_classes.png").unlink()
    assert main(args) == 1
    assert "1 ground truths in" in capsys.readouterr().err


def test_prediction_of_another_aspect_ratio_is_reported(tmp_path, capsys):
    gt = _textseg(tmp_path, {"a": "test", "b": "test"})
    _mask(tmp_path / "pred" / "a_mask.png", shape=(2, 4))
    _mask(tmp_path / "pred" / "b_mask.png", shape=(20, 300))
    assert main(["evaluate", "segmentation", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"warning: 1 predictions differ in aspect ratio from their ground truth (resized anyway): {tmp_path / 'pred' / 'b_mask.png'} is 300x20, its ground truth 4x2" in err
    assert "a_mask.png" not in err
    # Removal too (the original resizes both to 512 on the shorter side, silently).
    rng = np.random.default_rng(0)
    _save(tmp_path / "rgt" / "x.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    _save(tmp_path / "rpred" / "x.png", rng.integers(0, 256, (37, 100, 3), dtype=np.uint8))
    assert main(["evaluate", "removal", "--pred", str(tmp_path / "rpred"), "--gt", str(tmp_path / "rgt"), "--quiet"]) == 0
    assert "x.png is 100x37, its ground truth 64x64" in capsys.readouterr().err


@pytest.mark.parametrize("wrong", ["removal-labels", "own-predictions", "odd-values"])
def test_segmentation_ground_truths_must_be_textseg_labels(tmp_path, capsys, wrong):
    _mask(tmp_path / "pred" / "a.png")
    gt = tmp_path / "gt"
    if wrong == "removal-labels":
        _save(gt / "a.png", np.random.default_rng(0).integers(0, 256, (2, 4, 3), dtype=np.uint8))
    elif wrong == "own-predictions":
        gt = tmp_path / "pred"
    else:
        _save(gt / "a.png", np.array([[0, 17, 100, 255]], np.uint8))
    code = main(["evaluate", "segmentation", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--quiet"])
    assert code == 2  # nothing could be scored
    assert "not a TextSeg label" in capsys.readouterr().err


def test_model_command_reports_a_bad_image_once(test_split_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(test_split_root / "TextRemoval", root / "TextRemoval")
    image = sorted((root / "TextRemoval" / "SCUT-ENS" / "test" / "image").glob("*"))[0]
    image.write_bytes(b"not an image")
    from upocr.model import build_model
    from upocr.model.checkpoint import save_pretrained

    save_pretrained(build_model("tiny"), tmp_path / "weights")
    code = main(["evaluate", "model", "--weights", str(tmp_path / "weights"), "--data-root", str(root), "--size", "64",
                 "--tasks", "removal", "--quiet"])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and image.name in errors[0]
