"""The original's metrics on small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from upocr.evaluate.confusion import ConfusionMatrix, segmentation_scores, tampering_scores
from upocr.evaluate.removal import (
    MSSSIM_WEIGHTS,
    RemovalMetrics,
    gaussian_window,
    msssim_multiscale,
    msssim_original,
    prepare_removal_pair,
    removal_image_scores,
    removal_metrics,
    removal_pairs,
    resize_shorter_side,
    ssim_maps,
)

N = 512 * 512
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


# ---------------------------------------------------------------- removal: per-image metrics


def _blocks_image() -> tuple[np.ndarray, np.ndarray]:
    """Black ground truth; prediction with grey blocks: A 5x5 of 51 inside, B 3x3 of 51 in the top-left
    corner, C 4x4 of 20 (an error of exactly 20 is not an error pixel)."""
    gt = np.zeros((512, 512, 3), np.uint8)
    pred = gt.copy()
    pred[100:105, 200:205] = 51  # A
    pred[0:3, 0:3] = 51  # B
    pred[300:304, 300:304] = 20  # C
    return pred, gt


def test_removal_scores_by_hand():
    pred, gt = _blocks_image()
    scores = removal_image_scores(pred, gt)
    # MSE over 3 channels: 34 pixels off by 51/255 = 0.2 and 16 pixels off by 20/255.
    mse = (34 * 0.2**2 + 16 * (20 / 255) ** 2) / N
    assert scores.mse == pytest.approx(mse, rel=1e-5)
    assert scores.psnr == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    # Grey pixels: luminance = the grey level, so the rounded difference is 51 or 20.
    assert scores.age == pytest.approx((34 * 51 + 16 * 20) / N, rel=1e-6)
    # Error pixels: > 20 only (A and B), denominator 512*512.
    assert scores.peps == pytest.approx(34 / N)
    # Erosion with the cross, zero border: A keeps its 3x3 interior, B (touching the border) keeps (1,1).
    assert scores.pceps == pytest.approx(10 / N)


def test_peps_denominator_is_512_squared_even_for_other_sizes_unless_asked():
    gt = np.zeros((64, 64, 3), np.uint8)
    pred = gt.copy()
    pred[10:13, 10:13] = 255
    assert removal_image_scores(pred, gt).peps == pytest.approx(9 / N)
    assert removal_image_scores(pred, gt, pixels_per_image=None).peps == pytest.approx(9 / (64 * 64))


def test_identical_images_are_skipped_and_not_counted():
    pred, gt = _blocks_image()
    assert removal_image_scores(gt, gt) is None
    result = removal_metrics([gt, pred], [gt, gt])
    single = removal_image_scores(pred, gt)
    assert result["count"] == 1 and result["skipped_identical"] == 1
    # Averages divide by the counted images only (the original's `count`), MSE included.
    assert result["mse"] == pytest.approx(single.mse)
    assert result["psnr"] == pytest.approx(single.psnr)
    assert result["pceps"] == pytest.approx(single.pceps)


def test_averages_are_per_image_means():
    gt = np.zeros((512, 512, 3), np.uint8)
    a, b = gt.copy(), gt.copy()
    a[:8, :8] = 51
    b[:16, :16] = 51
    metrics = RemovalMetrics()
    sa, sb = metrics.update(a, gt), metrics.update(b, gt)
    result = metrics.compute()
    assert result["count"] == 2
    assert result["psnr"] == pytest.approx((sa.psnr + sb.psnr) / 2)
    assert result["age"] == pytest.approx((64 * 51 / N + 256 * 51 / N) / 2, rel=1e-6)


def test_empty_metrics_are_nan_not_zero():
    result = RemovalMetrics().compute()
    assert result["count"] == 0 and math.isnan(result["psnr"])


# ---------------------------------------------------------------- removal: MSSIM and its quirk


def test_gaussian_window_matches_fspecial():
    window = gaussian_window(11, 1.5)
    assert window.shape == (11, 11)
    assert window.sum() == pytest.approx(1.0)
    assert window[5, 5] == window.max()
    assert window[5, 6] / window[5, 5] == pytest.approx(math.exp(-1 / (2 * 1.5**2)))


def test_ssim_of_constant_images_by_hand():
    # Flat images: variances 0, so cs = C2/C2 = 1 and ssim = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 100.0, 120.0
    img1, img2 = np.full((40, 40), a), np.full((40, 40), b)
    ssim_map, cs_map = ssim_maps(img1, img2)
    assert ssim_map.shape == (30, 30)  # 'valid' convolution with the 11x11 window
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert np.allclose(cs_map, 1.0, atol=1e-6)
    assert np.allclose(ssim_map, expected, atol=1e-6)
    assert msssim_original(img1, img2) == pytest.approx(expected ** MSSSIM_WEIGHTS[-1], abs=1e-6)


def test_original_mssim_uses_full_resolution_at_every_level():
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.uniform(0, 255, (128, 128)), 4)
    gt = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    # Fine noise on a smooth image: bad at full resolution, mostly averaged away by downsampling.
    pred = np.clip(gt + rng.normal(0, 25, gt.shape), 0, 255)
    ssim_map, cs_map = ssim_maps(gt, pred)
    cs, ssim = cs_map.mean(), ssim_map.mean()
    quirk = cs ** sum(MSSSIM_WEIGHTS[:4]) * ssim ** MSSSIM_WEIGHTS[4]
    assert msssim_original(gt, pred) == pytest.approx(quirk, rel=1e-12)
    # A real MS-SSIM forgives the fine noise at coarse scales; the original's value does not.
    assert msssim_original(gt, pred) == pytest.approx(0.3265, abs=1e-3)
    assert msssim_multiscale(gt, pred) == pytest.approx(0.8840, abs=1e-3)


def test_mssim_in_scores_is_on_luminance_0_255():
    pred, gt = _blocks_image()
    y_gt = np.zeros((512, 512))
    y_pred = pred[:, :, 0].astype(np.float64)  # grey pixels: luminance = grey level
    assert removal_image_scores(pred, gt).mssim == pytest.approx(msssim_original(y_gt, y_pred), abs=1e-5)


# ---------------------------------------------------------------- removal: files, pairing and resizing


def test_resize_shorter_side_like_torchvision():
    wide = Image.new("RGB", (600, 300))
    assert resize_shorter_side(wide, 512).size == (1024, 512)
    tall = Image.new("RGB", (300, 700))
    assert resize_shorter_side(tall, 512).size == (512, int(512 * 700 / 300))
    rng = np.random.default_rng(1)
    square = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(resize_shorter_side(square, 512)), np.asarray(square))


def test_prepare_pair_resizes_non_square_ground_truth_to_square():
    rng = np.random.default_rng(2)
    pred = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    gt = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    pred_arr, gt_arr = prepare_removal_pair(pred, gt)
    assert pred_arr.shape == gt_arr.shape == (512, 512, 3)
    assert np.array_equal(pred_arr, np.asarray(pred))
    assert np.array_equal(gt_arr, np.asarray(gt.resize((512, 512), Image.Resampling.BICUBIC)))
    # Same-aspect pairs keep torchvision's Resize(512) shapes, as the original.
    a, b = prepare_removal_pair(gt, gt)
    assert a.shape == (512, 682, 3)


def test_removal_pairs_sorted_recursive_positional(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for folder, names in ((pred, ["b.png", "sub/a.png", "c.PNG", "skip.Jpg", "notes.txt"]), (gt, ["b.jpg", "sub/a.jpg", "c.jpg"])):
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"x")
    pairs, warnings = removal_pairs(pred, gt)
    assert [(p.relative_to(pred).as_posix(), g.relative_to(gt).as_posix()) for p, g in pairs] == [
        ("b.png", "b.jpg"), ("c.PNG", "c.jpg"), ("sub/a.png", "sub/a.jpg"),
    ]
    assert warnings == []
    (gt / "d.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="4 ground-truth"):
        removal_pairs(pred, gt)


# ---------------------------------------------------------------- confusion matrices


def test_segmentation_confusion_on_a_2x3_image():
    gt = np.array([[0, 1, 1], [255, 0, 1]], np.uint8)
    pred = np.array([[0, 1, 0], [1, 1, 1]], np.uint8)
    matrix = ConfusionMatrix(2)
    matrix.update(gt, pred)
    # The ignored pixel is dropped; rows = ground truth, columns = prediction.
    assert matrix.matrix.tolist() == [[1, 1], [1, 2]]
    scores = segmentation_scores(matrix)
    assert scores["fg_iou"] == pytest.approx(2 / 4)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f_score"] == pytest.approx(2 / 3)
    assert scores["pixels"] == 5


def test_confusion_pools_pixels_over_images():
    matrix = ConfusionMatrix(2)
    matrix.update(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]]))  # IoU 1
    matrix.update(np.array([[1, 0, 0, 0]]), np.array([[0, 1, 1, 1]]))  # IoU 0
    # Pooled over all pixels: TP 4, FP 3, FN 1 (per image the precisions would be 1 and 0, mean 0.5).
    scores = matrix.compute()
    assert scores["fg_iou"] == pytest.approx(4 / 8)
    assert scores["precision"] == pytest.approx(4 / 7)
    assert scores["recall"] == pytest.approx(4 / 5)


def test_tampering_scores_by_hand_and_nanmean():
    gt = np.array([[0, 1, 1, 2], [2, 2, 0, 1]])
    pred = np.array([[0, 1, 2, 2], [2, 0, 0, 1]])
    matrix = ConfusionMatrix(3)
    matrix.update(gt, pred)
    scores = tampering_scores(matrix)
    # real: TP 2, FP 0, FN 1; tampered: TP 2, FP 1, FN 1.
    assert scores["real"] == pytest.approx({"iou": 2 / 3, "precision": 1.0, "recall": 2 / 3, "f_score": 0.8})
    assert scores["tampered"]["iou"] == pytest.approx(2 / 4)
    assert scores["tampered"]["f_score"] == pytest.approx(2 / 3)
    assert scores["miou"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert scores["mf"] == pytest.approx((0.8 + 2 / 3) / 2)

    # No tampered pixel predicted: its precision and F are NaN and nanmean skips them (original quirk).
    all_real = ConfusionMatrix(3)
    all_real.update(gt, (gt > 0).astype(int))
    scores = tampering_scores(all_real)
    assert math.isnan(scores["tampered"]["precision"]) and math.isnan(scores["tampered"]["f_score"])
    assert scores["tampered"]["iou"] == 0.0
    assert scores["mf"] == pytest.approx(scores["real"]["f_score"])
    assert scores["miou"] == pytest.approx(scores["real"]["iou"] / 2)


def test_confusion_rejects_bad_predictions():
    matrix = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="classes 0..1"):
        matrix.update(np.array([0, 1]), np.array([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        matrix.update(np.array([0, 1]), np.array([0, 1, 1]))


# ---------------------------------------------------------------- FID: never a made-up number


def test_frechet_distance_by_hand():
    from upocr.evaluate.fid import frechet_distance

    # 1-D: (0 - 1)^2 + 1 + 4 - 2 sqrt(1 * 4) = 2.
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([1.0]), np.array([[4.0]])) == pytest.approx(2.0)
    # Same Gaussian: 0; diagonal 2-D: sum of per-dimension terms.
    cov = np.diag([2.0, 3.0])
    assert frechet_distance(np.zeros(2), cov, np.zeros(2), cov) == pytest.approx(0.0, abs=1e-9)
    d = frechet_distance(np.zeros(2), np.diag([1.0, 9.0]), np.array([3.0, 0.0]), np.diag([4.0, 1.0]))
    assert d == pytest.approx(9 + (1 + 4 - 4) + (9 + 1 - 6))


def test_fid_is_reported_missing_with_the_reason(tmp_path):
    from upocr.evaluate.fid import fid_for_folders
    from upocr.evaluate.inception import FIDWeightsError

    missing = fid_for_folders(tmp_path, tmp_path, weights=None)
    assert missing["fid"] is None and "--fid-weights" in missing["fid_missing"]
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"x")
    with pytest.raises(FIDWeightsError, match="pt_inception.pth: not a PyTorch checkpoint"):
        fid_for_folders(tmp_path, tmp_path, weights=weights)
    with pytest.raises(FileNotFoundError):
        fid_for_folders(tmp_path, tmp_path, weights=tmp_path / "absent.pth")
