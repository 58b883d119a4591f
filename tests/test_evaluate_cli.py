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
    assert set(tasks["segmentation"]) == {"model", "otsu", "sauvola"}
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
