"""FID for text removal, as the original reports it: `python -m pytorch_fid <gt dir> <pred dir>`.

pytorch-fid 0.3.0 defaults are reproduced: the "FID Inception" network (`upocr.evaluate.inception`),
its 2048-d pool3 features, images read with PIL `.convert('RGB')` as [0, 1] tensors, resized to
299 x 299 bilinearly (align_corners=False) and scaled to [-1, 1] inside the network, batches of 50,
feature mean/covariance in float64 and the Fréchet distance with `scipy.linalg.sqrtm` and
pytorch-fid's rules (taken on the span of the features when there are fewer images than dimensions:
same value, seconds instead of a minute; see `fid_from_activations`).

The weights (`pt_inception-2015-12-05-6726825d.pth`) are downloaded at run time by pytorch-fid;
upocr downloads nothing, so FID is computed only when the user names that file (`--fid-weights`).
Without it FID is reported as missing with the reason, never estimated with some other network.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from tqdm import tqdm

from upocr.evaluate.inception import FID_FEATURE_DIM, FID_IMAGE_SIZE, FIDInceptionV3, load_fid_inception
from upocr.evaluate.readers import read_rgb_as_original

MISSING_NO_WEIGHTS = (
    "missing (needs --fid-weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth; upocr downloads nothing)"
)
MISSING_TOO_FEW = "missing ({folder} has {count} readable image(s); FID needs at least 2 per folder)"

FID_BATCH_SIZE = 50  # pytorch-fid's default --batch-size
# pytorch-fid 0.3.0 globs `<folder>/*.<ext>` for these (not recursive; case-sensitive on Linux).
PYTORCH_FID_SUFFIXES = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})


# --------------------------------------------------------------------------------------------
# Features of a folder, read as pytorch-fid reads it
# --------------------------------------------------------------------------------------------


def pytorch_fid_file_list(folder: str | os.PathLike) -> list[Path]:
    """pytorch-fid's files: `<folder>/*.<ext>` for its suffixes (lower case, not recursive), sorted.
    Hidden files (e.g. half-written temporaries) are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(
        p for p in folder.iterdir()
        if p.suffix[1:] in PYTORCH_FID_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def fid_input(path: str | os.PathLike) -> torch.Tensor:
    """One image as the network's input: PIL `.convert('RGB')` -> float (3, 299, 299) in [0, 1].

    pytorch-fid resizes the whole batch inside the network; resizing each image first is the same
    bilinear resize and lets images of different sizes share a batch (the network's own resize is
    then the identity). Raises ImageError (one line) for an unreadable file.
    """
    pixels = np.asarray(read_rgb_as_original(path))
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255)  # ToTensor
    return F.interpolate(image[None], size=(FID_IMAGE_SIZE, FID_IMAGE_SIZE), mode="bilinear", align_corners=False)[0]


@torch.inference_mode()
def fid_activations(
    network: FIDInceptionV3,
    files: list[Path],
    *,
    batch_size: int = FID_BATCH_SIZE,
    progress: bool = True,
    description: str = "FID features",
) -> tuple[np.ndarray, list[str]]:
    """(pool3 activations (N, 2048) float64 of the readable files, one-line errors for the others)."""
    from upocr.io import ImageError

    device = next(network.parameters()).device
    rows: list[np.ndarray] = []
    errors: list[str] = []
    batch: list[torch.Tensor] = []

    def run_batch() -> None:
        rows.append(network(torch.stack(batch).to(device)).double().cpu().numpy())
        batch.clear()

    for path in tqdm(files, desc=description, unit="img", disable=not progress, file=sys.stderr):
        try:
            batch.append(fid_input(path))
        except ImageError as error:
            errors.append(str(error))
            continue
        if len(batch) == batch_size:
            run_batch()
    if batch:
        run_batch()
    activations = np.concatenate(rows) if rows else np.empty((0, FID_FEATURE_DIM))
    return activations, errors


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> tuple[float, bool]:
    """(tr sqrtm(sigma1 sigma2), whether the eps*I offset was needed), pytorch-fid's way: when the
    product's square root is not finite, add eps to both diagonals; drop a negligible imaginary part."""
    with warnings.catch_warnings():  # singular products are expected (fewer images than dims); handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        offset_used = not np.isfinite(covmean).all()
        if offset_used:
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the matrix square root")
        covmean = covmean.real
    return float(np.trace(covmean)), offset_used


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1-mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as pytorch-fid computes it
    (an eps*I offset when the product is singular, the imaginary part dropped when negligible)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two feature distributions have different dimensions")
    diff = mu1 - mu2
    trace_sqrt, _ = _trace_sqrt_product(sigma1, sigma2, eps)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def activation_statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) in float64, as pytorch-fid (`np.mean`, `np.cov(rowvar=False)`)."""
    activations = np.asarray(activations, dtype=np.float64)
    return activations.mean(axis=0), np.cov(activations, rowvar=False)


def fid_from_activations(act1: np.ndarray, act2: np.ndarray, eps: float = 1e-6) -> float:
    """FID of two sets of features (rows), equal to `frechet_distance` of their statistics.

    With fewer images than feature dimensions (e.g. 813 test images, 2048 dims) both covariances
    live in the span of the centred features, so sqrt(sigma1 sigma2) is 0 outside it and its trace
    is that of the matrix square root of the product restricted to the span. Computing it there
    (same sqrtm, same eps rule) gives the same number as pytorch-fid's 2048 x 2048 sqrtm, up to that
    routine's rounding noise on the ~1000 zero eigenvalues, in seconds instead of a minute.
    """
    act1, act2 = np.asarray(act1, dtype=np.float64), np.asarray(act2, dtype=np.float64)
    if act1.ndim != 2 or act2.ndim != 2 or act1.shape[1] != act2.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {act1.shape} and {act2.shape}")
    if len(act1) < 2 or len(act2) < 2:
        raise ValueError("FID needs at least 2 feature vectors per set (a covariance)")
    (mu1, sigma1), (mu2, sigma2) = activation_statistics(act1), activation_statistics(act2)
    dims = act1.shape[1]
    centred = np.concatenate([act1 - mu1, act2 - mu2])
    if len(centred) >= dims:
        return frechet_distance(mu1, sigma1, mu2, sigma2, eps)
    basis, _ = np.linalg.qr(centred.T)  # (D, N) orthonormal columns spanning both covariances
    trace_sqrt, offset_used = _trace_sqrt_product(basis.T @ sigma1 @ basis, basis.T @ sigma2 @ basis, eps)
    if offset_used:
        # pytorch-fid's offset also adds sqrt(eps * eps) for each of the dims - N directions outside the span.
        trace_sqrt += eps * (dims - len(centred))
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


# Features of the last few folders: `upocr evaluate model` compares every method with the same
# ground-truth folder, whose features are then computed once. Keyed by weights and file stats.
_FOLDER_CACHE: dict[tuple, tuple[np.ndarray, list[str]]] = {}
_FOLDER_CACHE_SIZE = 2


def folder_activations(
    network: FIDInceptionV3, folder: str | os.PathLike, *, batch_size: int = FID_BATCH_SIZE,
    progress: bool = True, description: str = "FID features",
) -> tuple[np.ndarray, list[str]]:
    """`fid_activations` of a folder's pytorch-fid file list (none when the folder does not exist)."""
    files = pytorch_fid_file_list(folder) if Path(folder).is_dir() else []
    weights_key = getattr(network, "weights_key", None)  # set by load_fid_inception
    if weights_key is None:
        return fid_activations(network, files, batch_size=batch_size, progress=progress, description=description)
    key = (weights_key, tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files))
    if key not in _FOLDER_CACHE:
        _FOLDER_CACHE[key] = fid_activations(network, files, batch_size=batch_size, progress=progress, description=description)
        while len(_FOLDER_CACHE) > _FOLDER_CACHE_SIZE:
            _FOLDER_CACHE.pop(next(iter(_FOLDER_CACHE)))
    activations, errors = _FOLDER_CACHE[key]
    return activations, list(errors)


def default_device() -> torch.device:
    """pytorch-fid's default: CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fid_for_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    *,
    weights: str | os.PathLike | None,
    device: str | torch.device | None = None,
    batch_size: int = FID_BATCH_SIZE,
    progress: bool = True,
) -> dict:
    """`python -m pytorch_fid <gt_dir> <pred_dir>` with the weights file `weights`.

    Returns {'fid': value or None, 'fid_missing': reason or None}; when FID was computed also
    'fid_images' {'gt': n, 'pred': n} and 'fid_errors' (one line per unreadable file, left out).
    Never a made-up number: without weights, or with fewer than 2 readable images in a folder, FID
    is None with the reason. A bad weights file raises FIDWeightsError (a ValueError, one line).
    """
    if weights is None:
        return {"fid": None, "fid_missing": MISSING_NO_WEIGHTS}
    network = load_fid_inception(weights, device=device or default_device())
    activations, errors, counts = [], [], {}
    for name, folder in (("gt", gt_dir), ("pred", pred_dir)):
        found, folder_errors = folder_activations(
            network, folder, batch_size=batch_size, progress=progress, description=f"FID features ({name})"
        )
        activations.append(found)
        errors.extend(folder_errors)
        counts[name] = len(found)
    result: dict = {"fid": None, "fid_missing": None, "fid_images": counts, "fid_errors": errors}
    for name, folder in (("gt", gt_dir), ("pred", pred_dir)):
        if counts[name] < 2:
            result["fid_missing"] = MISSING_TOO_FEW.format(folder=folder, count=counts[name])
            return result
    result["fid"] = fid_from_activations(activations[0], activations[1])
    return result
