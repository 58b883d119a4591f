"""Text-removal image metrics, computed exactly as the original evaluation script does.

The original (`eval/text_removal/evaluation.py` + `dataloader.py`, inherited from EraseNet/ViTEraser)
pairs the sorted recursive file lists of the prediction and ground-truth folders by index, resizes both
with torchvision `Resize(512)` (shorter side to 512, bicubic) + `ToTensor`, and per image computes
MSE, PSNR, AGE, pEPs, pCEPs and a multi-scale SSIM whose downsampling step is never used (every
"scale" is the full-resolution image). All of that is reproduced here, quirks included, so our numbers
are comparable with published ones. `docs/evaluation.md` lists every quirk.

Array functions (`removal_image_scores`, `RemovalMetrics`, `removal_metrics`) take uint8 RGB images and
can be used during training; `evaluate_removal` is the folder-based evaluation behind the CLI.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from upocr.evaluate.fid import fid_for_folders
from upocr.evaluate.readers import original_file_list, read_rgb_as_original
from upocr.io import ImageError

# Side of the square the original evaluates at (Resize(512); pEPs/pCEPs divide by 512*512).
REMOVAL_SIZE = 512
# A pixel is an "error pixel" when its rounded luminance differs by more than this (0..255 scale).
ERROR_PIXEL_THRESHOLD = 20
# 4-connected cross used to erode the error pixels into "clustered" error pixels (pCEPs).
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
# MS-SSIM level weights (Wang et al. 2003); the last one weights the SSIM term.
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
REMOVAL_KEYS = ("psnr", "mssim", "mse", "age", "peps", "pceps")


# --------------------------------------------------------------------------------------------
# SSIM / MS-SSIM (the original's MATLAB-port implementation)
# --------------------------------------------------------------------------------------------


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Normalised 2-D Gaussian like MATLAB's fspecial('gaussian') as the original ports it.

    Offsets run from -size//2+1 to size//2 (for an even size the window is off-centre by half a
    pixel, as in the original).
    """
    lo, hi = -size // 2 + 1, size // 2 + 1
    y, x = np.mgrid[lo:hi, lo:hi]
    window = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
    return window / window.sum()


def ssim_maps(img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSIM map and contrast-structure map of two grey images on a 0..255 scale ('valid' region).

    Gaussian window min(height, 11) wide, sigma 1.5, FFT convolution, K1 0.01, K2 0.03, L 255, float64.
    """
    from scipy import signal  # here, not at the top: scipy.signal is 0.4 s of every command's start-up

    img1 = np.asarray(img1, dtype=np.float64)
    img2 = np.asarray(img2, dtype=np.float64)
    window = gaussian_window(min(img1.shape[0], 11), 1.5)
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    mu1 = signal.fftconvolve(img1, window, mode="valid")
    mu2 = signal.fftconvolve(img2, window, mode="valid")
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = signal.fftconvolve(img1 * img1, window, mode="valid") - mu1_sq
    sigma2_sq = signal.fftconvolve(img2 * img2, window, mode="valid") - mu2_sq
    sigma12 = signal.fftconvolve(img1 * img2, window, mode="valid") - mu1_mu2
    cs_map = (2.0 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return ssim_map, cs_map


def _combine_levels(mssim: np.ndarray, mcs: np.ndarray) -> float:
    """Weighted product of per-level CS means and the last level's SSIM mean (signs kept apart)."""
    weights = np.asarray(MSSSIM_WEIGHTS)
    levels = len(weights)
    cs_part = np.sign(mcs[: levels - 1]) * np.power(np.abs(mcs[: levels - 1]), weights[: levels - 1])
    ssim_part = np.sign(mssim[levels - 1]) * np.power(np.abs(mssim[levels - 1]), weights[levels - 1])
    return float(np.prod(cs_part) * ssim_part)


def msssim_original(gt_luma: np.ndarray, pred_luma: np.ndarray) -> float:
    """The original's "MSSIM": MS-SSIM whose 5 levels all use the FULL-resolution images.

    The original computes a 2x2 box-filtered, 2x-subsampled copy after each level but then evaluates
    the next level on the unchanged inputs, so every level sees the same images and the result is
    |cs|^(w1+w2+w3+w4) * sign(ssim) |ssim|^w5 (cs, ssim = map means at full resolution). Reproduced
    on purpose: published UPOCR/ViTEraser/EraseNet numbers were computed this way.
    """
    ssim_map, cs_map = ssim_maps(gt_luma, pred_luma)
    levels = len(MSSSIM_WEIGHTS)
    mssim = np.full(levels, ssim_map.mean())
    mcs = np.full(levels, cs_map.mean())
    return _combine_levels(mssim, mcs)


def msssim_multiscale(gt_luma: np.ndarray, pred_luma: np.ndarray) -> float:
    """A correct MS-SSIM with the same constants (each level on the 2x-downsampled previous level).

    Not used for reported numbers; here to show how far the original's value is from a real MS-SSIM.
    """
    from scipy import ndimage

    box = np.ones((2, 2)) / 4.0
    img1 = np.asarray(gt_luma, dtype=np.float64)
    img2 = np.asarray(pred_luma, dtype=np.float64)
    mssim, mcs = [], []
    for _ in MSSSIM_WEIGHTS:
        ssim_map, cs_map = ssim_maps(img1, img2)
        mssim.append(ssim_map.mean())
        mcs.append(cs_map.mean())
        img1 = ndimage.convolve(img1, box, mode="reflect")[::2, ::2]
        img2 = ndimage.convolve(img2, box, mode="reflect")[::2, ::2]
    return _combine_levels(np.asarray(mssim), np.asarray(mcs))


# --------------------------------------------------------------------------------------------
# Per-image scores and their accumulation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemovalImageScores:
    """One image's metrics; `mse == 0` images are kept out of every average (see RemovalMetrics)."""

    mse: float
    psnr: float
    mssim: float
    age: float
    peps: float
    pceps: float


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1], as torchvision ToTensor."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)  # copy: inputs may be read-only


def _luminance_255(image: torch.Tensor) -> np.ndarray:
    """float32 luminance on a 0..255 scale, computed in the original's float32 operation order."""
    r, g, b = image[0], image[1], image[2]
    return (0.299 * r + 0.587 * g + 0.114 * b).mul(255).numpy()


def removal_image_scores(
    pred: np.ndarray, gt: np.ndarray, *, pixels_per_image: int | None = REMOVAL_SIZE * REMOVAL_SIZE
) -> RemovalImageScores | None:
    """Metrics of one prediction against its ground truth, both uint8 (H, W, 3) RGB of equal size.

    Returns None for a perfect prediction (MSE == 0): the original skips such images for every metric.
    `pixels_per_image` is the pEPs/pCEPs denominator: the original always divides by 512*512 (its
    images are 512x512); pass None to divide by the real pixel count of other sizes.
    """
    pred_t, gt_t = _to_tensor(pred), _to_tensor(gt)
    if pred_t.shape != gt_t.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in size")
    mse_t = ((gt_t - pred_t) ** 2).mean()  # float32, as the original's tensors
    if float(mse_t) == 0:
        return None
    denominator = float(pixels_per_image if pixels_per_image is not None else gt_t.shape[1] * gt_t.shape[2])
    y_gt, y_pred = _luminance_255(gt_t), _luminance_255(pred_t)
    diff = np.abs(y_pred - y_gt).round().astype(np.uint8)
    errors = diff > ERROR_PIXEL_THRESHOLD
    from scipy import ndimage

    clustered = ndimage.binary_erosion(errors, CROSS)  # border_value 0, as scipy's default
    return RemovalImageScores(
        mse=float(mse_t),
        psnr=10 * math.log10(float(1 / mse_t)),
        mssim=msssim_original(y_gt, y_pred),
        age=float(np.mean(diff)),
        peps=float(errors.sum()) / denominator,
        pceps=float(clustered.sum()) / denominator,
    )


class RemovalMetrics:
    """Accumulates per-image scores into the original's averages.

    Averages divide by `count` = images with MSE > 0; MSE == 0 images add nothing (the original adds
    their 0 to the MSE sum and skips the rest, and does not count them).
    """

    def __init__(self, *, pixels_per_image: int | None = REMOVAL_SIZE * REMOVAL_SIZE) -> None:
        self.pixels_per_image = pixels_per_image
        self.sums = dict.fromkeys(REMOVAL_KEYS, 0.0)
        self.count = 0
        self.skipped = 0

    def add(self, scores: RemovalImageScores | None) -> None:
        if scores is None:
            self.skipped += 1
            return
        self.count += 1
        for key in REMOVAL_KEYS:
            self.sums[key] += getattr(scores, key)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> RemovalImageScores | None:
        scores = removal_image_scores(pred, gt, pixels_per_image=self.pixels_per_image)
        self.add(scores)
        return scores

    def compute(self) -> dict:
        """{psnr, mssim, mse, age, peps, pceps, count, skipped_identical}; NaN when nothing counted."""
        result = {key: (self.sums[key] / self.count if self.count else float("nan")) for key in REMOVAL_KEYS}
        result["count"] = self.count
        result["skipped_identical"] = self.skipped
        return result


def removal_metrics(
    pred_images: Iterable[np.ndarray],
    gt_images: Iterable[np.ndarray],
    *,
    pixels_per_image: int | None = REMOVAL_SIZE * REMOVAL_SIZE,
) -> dict:
    """Average removal metrics over paired uint8 RGB images (already at the evaluation size)."""
    metrics = RemovalMetrics(pixels_per_image=pixels_per_image)
    for pred, gt in zip(pred_images, gt_images, strict=True):
        metrics.update(pred, gt)
    return metrics.compute()


# --------------------------------------------------------------------------------------------
# Files: pairing, reading, resizing as the original
# --------------------------------------------------------------------------------------------


def removal_pairs(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair predictions with ground truths by position in the sorted lists (as the original).

    Returns (pairs, warnings). Different counts are an error (the original would silently misalign or
    crash); pairs whose file stems differ are reported as warnings since the pairing is positional.
    """
    preds, gts = original_file_list(pred_dir), original_file_list(gt_dir)
    if not preds:
        raise FileNotFoundError(f"{pred_dir}: no prediction images (.png/.jpg/.jpeg/.bmp)")
    if len(preds) != len(gts):
        raise ValueError(
            f"{pred_dir}: {len(preds)} predictions but {gt_dir} has {len(gts)} ground-truth images; "
            "the original pairs the sorted lists by position, so they must hold the same images"
        )
    warnings = [
        f"{p}: paired by position with {g} (different names)" for p, g in zip(preds, gts) if p.stem != g.stem
    ]
    return list(zip(preds, gts)), warnings


def resize_shorter_side(image: Image.Image, size: int = REMOVAL_SIZE) -> Image.Image:
    """torchvision `Resize(size)` on a PIL image: shorter side -> size, longer -> int(size*long/short),
    PIL bicubic (PIL returns an unchanged copy when the size already matches)."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    return image.resize(new_size, Image.Resampling.BICUBIC)


def prepare_removal_pair(pred: Image.Image, gt: Image.Image, size: int = REMOVAL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Resize a (prediction, ground truth) pair the original's way; uint8 RGB arrays of equal shape.

    Both get Resize(size) (shorter side). That is all the original does, and it only works when both
    come out the same shape (its 512x512 predictions need square ground truths). When they differ, both
    are resized to size x size bicubic instead: the shape the original's metrics (and their 512*512
    denominators) assume, and the same result as Resize(size) for every pair the original can evaluate.
    """
    pred_r, gt_r = resize_shorter_side(pred, size), resize_shorter_side(gt, size)
    if pred_r.size != gt_r.size:
        pred_r = pred.resize((size, size), Image.Resampling.BICUBIC)
        gt_r = gt.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(pred_r), np.asarray(gt_r)


@dataclass
class FolderEvaluation:
    """Result of evaluating a folder of predictions: metrics dict, per-file errors, warnings."""

    metrics: dict
    errors: list[str]
    warnings: list[str]
    # Ground truths of the evaluated set that had no prediction (the CLI refuses these unless --allow-missing).
    missing: int = 0

    def to_json(self) -> dict:
        return {**self.metrics, "errors": list(self.errors), "warnings": list(self.warnings)}


# Relative difference of width/height ratios beyond which a prediction is reported as distorted.
ASPECT_TOLERANCE = 0.02
# How many per-file notes a summary warning lists before "...".
LISTED_NOTES = 5


def aspect_mismatch(pred_path: Path, pred_size: tuple[int, int], gt_size: tuple[int, int]) -> str | None:
    """A note when the prediction's width/height ratio differs from the ground truth's (it gets resized)."""
    (ph, pw), (gh, gw) = pred_size, gt_size
    if min(ph, pw, gh, gw) <= 0 or abs((pw / ph) / (gw / gh) - 1) <= ASPECT_TOLERANCE:
        return None
    return f"{pred_path} is {pw}x{ph}, its ground truth {gw}x{gh}"


def summarise(notes: list[str], what: str) -> list[str]:
    """One warning line for a list of per-file notes."""
    if not notes:
        return []
    shown = "; ".join(notes[:LISTED_NOTES]) + ("; ..." if len(notes) > LISTED_NOTES else "")
    return [f"{len(notes)} {what}: {shown}"]


def evaluate_removal_pairs(
    pairs: list[tuple[Path, Path]], *, size: int = REMOVAL_SIZE, progress: bool = True
) -> FolderEvaluation:
    """Removal metrics over explicit (prediction, ground truth) file pairs, each resized the original's
    way (`prepare_removal_pair`). Unreadable files go to `errors`; the others are still evaluated."""
    metrics = RemovalMetrics(pixels_per_image=size * size)
    errors: list[str] = []
    distorted: list[str] = []
    for pred_path, gt_path in tqdm(pairs, desc="removal metrics", unit="img", disable=not progress, file=sys.stderr):
        try:
            pred, gt = read_rgb_as_original(pred_path), read_rgb_as_original(gt_path)
            pred_arr, gt_arr = prepare_removal_pair(pred, gt, size)
        except ImageError as error:
            errors.append(str(error))
            continue
        if note := aspect_mismatch(pred_path, pred.size[::-1], gt.size[::-1]):
            distorted.append(note)
        metrics.update(pred_arr, gt_arr)
    warnings = summarise(distorted, "predictions differ in aspect ratio from their ground truth (resized anyway)")
    return FolderEvaluation(metrics=metrics.compute(), errors=errors, warnings=warnings)


def evaluate_removal(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    size: int = REMOVAL_SIZE,
    progress: bool = True,
    fid_weights: str | os.PathLike | None = None,
) -> FolderEvaluation:
    """Evaluate a folder of text-removal results against a folder of text-free ground truths, paired
    and resized as the original (`removal_pairs`, `prepare_removal_pair`).

    `fid` is a number only when it could really be computed; otherwise it is None and `fid_missing`
    says why (see `upocr.evaluate.fid`).
    """
    pairs, warnings = removal_pairs(pred_dir, gt_dir)
    result = evaluate_removal_pairs(pairs, size=size, progress=progress)
    result.metrics.update(fid_for_folders(gt_dir, pred_dir, weights=fid_weights, progress=progress))
    result.warnings[:0] = warnings
    return result
