"""Image metrics on [0, 1] slices, with one fixed data range (intervals: ``stats``).

SSIM is torchmetrics' ``structural_similarity_index_measure`` with ``data_range=1.0`` and a
Gaussian window of 11 pixels, sigma 1.5 (Wang et al. 2004; the paper's code used scikit-image's
7x7 uniform window with a per-image range, which makes scores incomparable across images).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

SSIM_SETTINGS = {"library": "torchmetrics", "function": "structural_similarity_index_measure",
                 "data_range": 1.0, "gaussian_kernel": True, "kernel_size": 11, "sigma": 1.5}


def ssim_maps(pred: np.ndarray, real: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Per-pixel SSIM maps ``(N, S, S)`` of ``(N, S, S)`` images in [0, 1].

    SSIM is computed image by image, so ``chunk`` images go to torchmetrics at a time: the
    result is the same for any chunk, and memory stays at ``5 * chunk`` float64 images (a whole
    test set of 256x256 slices at once asked for 45 GB)."""
    out = np.empty(pred.shape, dtype=np.float64)
    for start in range(0, len(pred), chunk):
        p = torch.tensor(pred[start:start + chunk, None], dtype=torch.float64)
        r = torch.tensor(real[start:start + chunk, None], dtype=torch.float64)
        _, full = structural_similarity_index_measure(
            p, r, data_range=SSIM_SETTINGS["data_range"], gaussian_kernel=True, kernel_size=11,
            sigma=1.5, reduction="none", return_full_image=True)
        out[start:start + chunk] = full[:, 0].numpy()
    return out


def per_image(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image MSE, SSIM, PSNR and Pearson r over the whole slice, and MSE/SSIM inside ``mask``."""
    err = (pred - real) ** 2
    mse = err.mean(axis=(1, 2))
    maps = ssim_maps(pred, real)
    p = pred.reshape(len(pred), -1) - pred.reshape(len(pred), -1).mean(axis=1, keepdims=True)
    r = real.reshape(len(real), -1) - real.reshape(len(real), -1).mean(axis=1, keepdims=True)
    denom = np.sqrt((p ** 2).sum(axis=1) * (r ** 2).sum(axis=1))
    pearson = np.where(denom > 0, (p * r).sum(axis=1) / np.where(denom > 0, denom, 1), 0.0)
    return {"mse": mse, "ssim": maps.mean(axis=(1, 2)), "psnr": 10 * np.log10(1.0 / np.maximum(mse, 1e-12)),
            "pearson": pearson, "mse_mask": err[:, mask].mean(axis=1),
            "ssim_mask": maps[:, mask].mean(axis=1)}


def voxel_r(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """Mean over mask pixels of the correlation over time (samples of one run, in time order).

    A pixel whose prediction does not vary over time has correlation 0 (it follows nothing)."""
    p, r = pred[:, mask].astype(np.float64), real[:, mask].astype(np.float64)
    varies = (np.ptp(p, axis=0) > 0) & (np.ptp(r, axis=0) > 0)
    p, r = p - p.mean(axis=0), r - r.mean(axis=0)
    denom = np.sqrt((p ** 2).sum(axis=0) * (r ** 2).sum(axis=0))
    corr = np.where(varies, (p * r).sum(axis=0) / np.where(varies, denom, 1), 0.0)
    return float(corr.mean())
