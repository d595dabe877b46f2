"""Synthetic BOLD runs: a brain-shaped EPI image, per-subject source maps, HRF-driven signal.

Intensities are scanner-like int16 (brain around 700-1300, dim scalp, dark background);
the signal is ``baseline * (1 + bold + drift) + thermal noise``, each slice sampled at its own
acquisition time within the TR (multiband slice timing of the real sequence).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .config import FMRI_AUDIO_ONSET, TR, Coupling, RunPlan
from .sources import bold_response

VOXEL_MM = 2.0
# Acquisition times (s) within the TR of the 9 shots of the real multiband-8 sequence (bold.json).
SHOT_TIMES = (0.3075, 0.0, 0.3825, 0.0775, 0.46, 0.1525, 0.5375, 0.23, 0.6125)
BLOB_SIGMA = 0.12  # source map blob width, in units of the brain radii


def slice_times(n_slices: int) -> np.ndarray:
    """Acquisition time (s after volume start) of each axial slice, shape ``(n_slices,)``."""
    return np.array([SHOT_TIMES[z % len(SHOT_TIMES)] for z in range(n_slices)])


def brain_coords(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Voxel coordinates in brain-normalised units (the brain is the unit ball), ``(*shape, 3)``."""
    axes = [np.linspace(-1, 1, n) for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return (grid - centre) / radii


@dataclass(frozen=True)
class Anatomy:
    """One subject's EPI baseline image and tissue maps, all ``shape`` float32."""

    baseline: np.ndarray  # mean image in scanner units
    grey: np.ndarray  # grey-matter weight in [0, 1]
    brain: np.ndarray  # brain mask (bool)
    coords: np.ndarray  # brain-normalised coordinates, (*shape, 3)


def subject_anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> Anatomy:
    centre = np.array([0.0, 0.02, -0.05]) + rng.normal(0, 0.02, 3)
    radii = np.array([0.66, 0.8, 0.8]) * (1 + rng.normal(0, 0.04, 3))
    coords = brain_coords(shape, centre, radii)
    dist = np.sqrt((coords**2).sum(axis=-1))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    texture /= texture.std()
    cortex_depth = 0.82 + 0.04 * texture  # folded grey/white boundary
    brain = dist < 1.0
    grey = brain & (dist > cortex_depth)
    ventricle = np.zeros(shape, dtype=bool)
    for side in (0.12, -0.12):
        ventricle |= (((coords - [side, 0.05, 0.1]) / [0.08, 0.3, 0.15]) ** 2).sum(-1) < 1
    image = np.where(brain, 700.0, 0.0)
    image = np.where(grey, 900.0, image)
    image = np.where(ventricle, 1300.0, image)
    image = np.where((dist >= 1.0) & (dist < 1.12), 150.0, image)  # scalp, fat suppressed
    image *= 1 + 0.03 * texture
    image *= 1 + 0.15 * np.clip(dist, 0, 1.2)  # receive-coil sensitivity, brighter at the edge
    image = ndimage.gaussian_filter(image, 0.7)
    grey_weight = ndimage.gaussian_filter(np.where(grey, 1.0, np.where(brain & ~ventricle, 0.3, 0.0)), 0.7)
    return Anatomy(image.astype(np.float32), grey_weight.astype(np.float32), brain, coords)


PHYSIO_PATTERNS = 16  # spatial patterns of the physiological noise (a low-rank, smooth field)
PHYSIO_SIGMA_VOXELS = 2.0  # their Gaussian smoothing (FWHM 9.4 mm at 2-mm voxels)
PHYSIO_TIMESCALE = 5.0  # s, AR(1) time constant of their courses (slow physiological fluctuations)


def physio_field(rng: np.random.Generator, brain: np.ndarray, n_vols: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatially smooth, temporally correlated noise as ``patterns (K, *shape)`` and unit-variance
    AR(1) ``courses (K, n_vols)``: ``sum_k patterns[k] * courses[k, t]`` has variance about 1 per
    brain voxel, so a caller scales it to the physiological share of the noise."""
    shape = brain.shape
    patterns = ndimage.gaussian_filter(rng.standard_normal((PHYSIO_PATTERNS, *shape), dtype=np.float32),
                                       (0, *[PHYSIO_SIGMA_VOXELS] * 3))
    patterns /= np.sqrt((patterns ** 2).sum(axis=0)[brain].mean())
    phi = np.exp(-TR / PHYSIO_TIMESCALE)
    shocks = rng.standard_normal((PHYSIO_PATTERNS, n_vols))
    courses = np.empty_like(shocks)
    courses[:, 0] = shocks[:, 0]
    for t in range(1, n_vols):
        courses[:, t] = phi * courses[:, t - 1] + np.sqrt(1 - phi ** 2) * shocks[:, t]
    return patterns.astype(np.float32), courses.astype(np.float32)


def group_blobs(rng: np.random.Generator, n_sources: int) -> np.ndarray:
    """Group-level blob centres ``(n_sources, 2, 3)`` in brain units: a bilateral pair per source,
    centred in the cortical ribbon (BOLD is a grey-matter signal)."""
    centres = np.empty((n_sources, 2, 3))
    for k in range(n_sources):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        c = direction * rng.uniform(0.8, 0.95)  # in the cortical ribbon
        centres[k] = [c, c * [-1, 1, 1]]
    return centres


def subject_maps(rng: np.random.Generator, blobs: np.ndarray, anatomy: Anatomy,
                 coupling: Coupling) -> np.ndarray:
    """Per-subject spatial maps ``(n_sources, *shape)`` float32 (peak about 1 in grey matter)."""
    v = coupling.subject_variability
    maps = np.zeros((blobs.shape[0], *anatomy.baseline.shape), dtype=np.float32)
    for k, pair in enumerate(blobs):
        for centre, weight in zip(pair, (1.0, rng.uniform(0.5, 1.0)), strict=True):
            c = centre + rng.normal(0, v * BLOB_SIGMA, 3)
            amp = weight * np.clip(1 + v * rng.standard_normal(), 0.3, 2.0)
            d2 = ((anatomy.coords - c) ** 2).sum(axis=-1)
            maps[k] += (amp * np.exp(-0.5 * d2 / BLOB_SIGMA**2)).astype(np.float32)
    return maps * anatomy.grey


def synthesize_bold(plan: RunPlan, drive: np.ndarray, anatomy: Anatomy, maps: np.ndarray,
                    coupling: Coupling, rng: np.random.Generator, hrf_peak: float,
                    physio_rng: np.random.Generator, chunk: int = 16) -> np.ndarray:
    """One run's 4D image ``(*shape, n_vols)`` int16 in scanner units: ``baseline * (1 + bold +
    drift + physiological noise) + thermal noise``, the noise std ``baseline / tsnr`` in the brain
    with ``physio_share`` of its variance physiological."""
    shape = anatomy.baseline.shape
    st = slice_times(shape[2])
    times = np.arange(plan.n_vols)[None, :] * TR + st[:, None]  # (n_slices, n_vols)
    response = bold_response(drive, FMRI_AUDIO_ONSET, times.ravel(), hrf_peak).reshape(
        drive.shape[0], shape[2], plan.n_vols).astype(np.float32)
    scan = np.arange(plan.n_vols) * TR
    trend = np.stack([scan / scan[-1] - 0.5, np.cos(np.pi * scan / scan[-1])]).astype(np.float32)
    drift = coupling.drift_percent / 100 * (plan.n_vols * TR / 300.0)
    drift_amp = (drift * rng.standard_normal((2, *shape))).astype(np.float32)
    noise = float(anatomy.baseline[anatomy.brain].mean()) / coupling.tsnr
    sigma = noise * np.sqrt(1 - coupling.physio_share)  # thermal, additive
    physio = None
    if coupling.physio_share > 0:  # physiological, a fraction of the signal (Krueger & Glover)
        patterns, courses = physio_field(physio_rng, anatomy.brain, plan.n_vols)
        physio = (patterns * np.float32(np.sqrt(coupling.physio_share) / coupling.tsnr), courses)
    scale = coupling.bold_percent / 100
    out = np.empty((*shape, plan.n_vols), dtype=np.int16)
    for j0 in range(0, plan.n_vols, chunk):
        j1 = min(j0 + chunk, plan.n_vols)
        frac = np.einsum("d...,dt->...t", drift_amp, trend[:, j0:j1])
        for k in range(maps.shape[0]):
            frac += scale * maps[k][..., None] * response[k, None, None, :, j0:j1]
        if physio is not None:
            frac += np.einsum("k...,kt->...t", physio[0], physio[1][:, j0:j1])
        volume = anatomy.baseline[..., None] * (1 + frac)
        volume += sigma * rng.standard_normal(volume.shape, dtype=np.float32)
        out[..., j0:j1] = np.clip(np.rint(np.abs(volume)), 0, np.iinfo(np.int16).max)
    return out


def write_nifti(data: np.ndarray, path: Path) -> None:
    """Save ``data`` as gzip NIfTI-1 with 2 mm voxels and TR in the header (deterministic bytes)."""
    shape = np.array(data.shape[:3])
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * (shape - 1) / 2
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_data_dtype(np.int16)
    header.set_xyzt_units("mm", "sec")
    header.set_dim_info(freq=0, phase=1, slice=2)
    zooms = header.get_zooms()
    header.set_zooms((*zooms[:3], TR))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
