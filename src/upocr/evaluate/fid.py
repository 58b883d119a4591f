"""FID for text removal: reported honestly as missing unless it can really be computed.

The original runs `python -m pytorch_fid <gt dir> <pred dir>` (pytorch-fid 0.3.0: Inception-v3 with the
`pt_inception-2015-12-05` FID weights, 2048-d pool3 features, batch 50). Those weights are downloaded
at run time, which upocr never does. The plan: `--fid-weights PATH` names that state dict and FID is
the Fréchet distance between the two folders' feature Gaussians. The Fréchet distance is implemented
(`frechet_distance`); the FID Inception-v3 feature network is not yet, so even with weights FID is
reported as missing, with the reason, never estimated with some other network.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import linalg

MISSING_NO_WEIGHTS = "missing (needs --fid-weights pt_inception-2015-12-05 state dict; not implemented)"
MISSING_NOT_IMPLEMENTED = (
    "missing (the FID Inception-v3 feature network is not implemented in upocr yet; weights file {path} not used)"
)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1-mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as pytorch-fid computes it
    (an eps*I offset when the product is singular, the imaginary part dropped when negligible)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two feature distributions have different dimensions")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the matrix square root")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_for_folders(
    gt_dir: str | os.PathLike, pred_dir: str | os.PathLike, *, weights: str | os.PathLike | None
) -> dict:
    """{'fid': value or None, 'fid_missing': reason or None}. Never a made-up number."""
    if weights is None:
        return {"fid": None, "fid_missing": MISSING_NO_WEIGHTS}
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: FID weights file not found")
    return {"fid": None, "fid_missing": MISSING_NOT_IMPLEMENTED.format(path=weights)}
