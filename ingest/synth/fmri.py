"""Synthetic BOLD runs: an MNI152-shaped EPI image, per-subject source maps, HRF-driven signal.

The anatomy is nilearn's bundled MNI152 (2009a, symmetric) grey- and white-matter templates (no
download), resampled to the preset's grid, which spans the template brain's bounding box (plus a
margin) with one voxel size per axis: the NIfTI affine maps voxels to MNI millimetres, so masks,
maps and figures overlay nilearn's MNI template. Each subject's brain is the template under a small
random affine (scale and shift), so raw-space anatomy differs between subjects as on a scanner.

Intensities are scanner-like int16 (grey matter brighter than white matter, CSF brightest, as in
T2*-weighted EPI; dim scalp; dark background); the signal is ``baseline * (1 + bold + drift +
physiological noise) + thermal noise``, each slice sampled at its own acquisition time within the
TR (multiband slice timing of the real sequence).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .config import FMRI_AUDIO_ONSET, TR, Coupling, RunPlan
from .sources import bold_response, smooth_noise

# Acquisition times (s) within the TR of the 9 shots of the real multiband-8 sequence (bold.json).
SHOT_TIMES = (0.3075, 0.0, 0.3825, 0.0775, 0.46, 0.1525, 0.5375, 0.23, 0.6125)
BLOB_SIGMA = 0.12  # source map blob width, in units of the brain box's half-widths
# The MNI152 brain mask's bounding box (mm, x symmetric about the midline) plus a margin: the grid.
MNI_BOX_MM = ((-80.0, 80.0), (-114.0, 80.0), (-80.0, 90.0))
SUBJECT_SCALE_SD, SUBJECT_SHIFT_MM = 0.04, 2.0  # per-subject affine of the template (raw space)


def slice_times(n_slices: int) -> np.ndarray:
    """Acquisition time (s after volume start) of each axial slice, shape ``(n_slices,)``."""
    return np.array([SHOT_TIMES[z % len(SHOT_TIMES)] for z in range(n_slices)])


def grid_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel -> MNI mm of a grid of ``shape`` spanning ``MNI_BOX_MM`` (one voxel size per axis)."""
    affine = np.eye(4)
    for axis, ((lo, hi), n) in enumerate(zip(MNI_BOX_MM, shape, strict=True)):
        size = (hi - lo) / n
        affine[axis, axis], affine[axis, 3] = size, lo + size / 2
    return affine


@functools.lru_cache(maxsize=1)
def mni_tissues() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's bundled MNI152 grey- and white-matter probabilities (2 mm) and their affine."""
    from nilearn import datasets

    grey = datasets.load_mni152_gm_template(resolution=2)
    white = datasets.load_mni152_wm_template(resolution=2)
    return (np.asarray(grey.get_fdata(), np.float32), np.asarray(white.get_fdata(), np.float32),
            np.asarray(grey.affine))


def grid_mm(shape: tuple[int, int, int], transform: np.ndarray | None = None) -> np.ndarray:
    """MNI mm ``(*shape, 3)`` that each grid voxel sees (through a subject's ``transform``, 4x4)."""
    affine = grid_affine(shape) if transform is None else transform @ grid_affine(shape)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def box_units(mm: np.ndarray) -> np.ndarray:
    """MNI mm -> brain-box units (the box is [-1, 1] on each axis; x = 0 is the midline)."""
    lo, hi = np.array(MNI_BOX_MM).T
    return (mm - (lo + hi) / 2) / ((hi - lo) / 2)


def sample_template(volume: np.ndarray, template_affine: np.ndarray, mm: np.ndarray) -> np.ndarray:
    """Trilinear samples of a template volume at MNI ``mm`` ``(*shape, 3)`` (0 outside)."""
    voxels = (mm - template_affine[:3, 3]) @ np.linalg.inv(template_affine[:3, :3]).T
    return ndimage.map_coordinates(volume, np.moveaxis(voxels, -1, 0), order=1, mode="constant")


@dataclass(frozen=True)
class Anatomy:
    """One subject's EPI baseline image and tissue maps, all ``shape`` float32."""

    baseline: np.ndarray  # mean image in scanner units
    grey: np.ndarray  # grey-matter weight in [0, 1]
    brain: np.ndarray  # brain mask (bool)
    coords: np.ndarray  # brain-box units of the template point each voxel sees, (*shape, 3)


def subject_transform(rng: np.random.Generator) -> np.ndarray:
    """A subject's brain in the scanner grid: the template scaled (per axis) and shifted."""
    transform = np.diag([*(1 + SUBJECT_SCALE_SD * rng.standard_normal(3)), 1.0])
    transform[:3, 3] = SUBJECT_SHIFT_MM * rng.standard_normal(3)
    return transform


def subject_anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> Anatomy:
    """A subject's anatomy on the grid, sampled from the MNI152 tissue maps under its own transform."""
    grey_t, white_t, template_affine = mni_tissues()
    mm = grid_mm(shape, subject_transform(rng))
    # the template is oversampled for coarse grids: smooth it to about the grid's voxel size first
    sigma = np.clip(np.diag(grid_affine(shape))[:3] / 2 / 2.355, 0, None)  # FWHM = voxel, in 2-mm units
    grey = np.clip(sample_template(ndimage.gaussian_filter(grey_t, sigma), template_affine, mm), 0, 1)
    white = np.clip(sample_template(ndimage.gaussian_filter(white_t, sigma), template_affine, mm), 0, 1)
    tissue = np.clip(grey + white, 0, 1)
    brain = tissue > 0.5
    inner = ndimage.binary_erosion(brain, iterations=1)
    csf = np.clip(ndimage.binary_fill_holes(brain) * (1 - tissue), 0, 1) * inner
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    texture /= texture.std()
    scalp = ndimage.binary_dilation(brain, iterations=2) & ~brain
    centre = box_units(mm)
    dist = np.sqrt((centre ** 2).sum(axis=-1))
    image = np.where(brain, 700.0 * white + 900.0 * grey + 1300.0 * csf, 0.0)
    image = np.where(brain, np.maximum(image, 650.0), image)
    image = np.where(scalp, 150.0, image)  # fat suppressed
    image *= 1 + 0.03 * texture
    image *= 1 + 0.15 * np.clip(dist, 0, 1.2)  # receive-coil sensitivity, brighter at the edge
    image = ndimage.gaussian_filter(image, 0.5)
    grey_weight = np.where(brain, grey, 0.0)
    return Anatomy(image.astype(np.float32), grey_weight.astype(np.float32), brain, centre.astype(np.float32))


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


@functools.lru_cache(maxsize=1)
def cortex_points() -> np.ndarray:
    """Brain-box coordinates of the template's left-hemisphere grey matter (probability > 0.6)."""
    grey, _, affine = mni_tissues()
    mm = np.argwhere(grey > 0.6) @ affine[:3, :3].T + affine[:3, 3]
    return box_units(mm[mm[:, 0] < -10])


def group_blobs(rng: np.random.Generator, n_sources: int) -> np.ndarray:
    """Group-level blob centres ``(n_sources, 2, 3)`` in brain-box units: a bilateral pair per source
    (a point of the template's grey matter and its mirror image), as BOLD is a grey-matter signal."""
    points = cortex_points()
    centres = np.empty((n_sources, 2, 3))
    for k in range(n_sources):
        c = points[rng.integers(len(points))]
        centres[k] = [c, c * [-1, 1, 1]]
    return centres


# Graded response maps of story listening (``Coupling.maps == "networks"``): nodes in MNI mm, with the
# gain of each hemisphere. Early auditory cortex (Heschl's gyrus, planum temporale) and the superior
# temporal gyrus/sulcus respond most reliably; the left-lateralised language network (IFG, anterior and
# posterior MTG/STS, angular gyrus) and the default-mode network (PCC/precuneus, mPFC, angular gyrus)
# less so, along the hierarchy of Lerner et al. 2011 (J Neurosci 31:2906) and the ISC maps of Simony et
# al. 2016 (Nat Commun 7:12141) and Nastase et al. 2021 (Sci Data 8:250).
NETWORKS: dict[str, tuple[float, tuple[tuple[tuple[float, float, float], float], ...]]] = {
    # name: (network gain, ((x, y, z) of the left-hemisphere node, right/left gain), ...)
    "auditory": (0.8, (((-46.0, -22.0, 8.0), 0.9), ((-60.0, -24.0, 4.0), 0.85),
                       ((-58.0, -40.0, 12.0), 0.8))),
    "language": (0.6, (((-50.0, 22.0, 10.0), 0.4), ((-56.0, -6.0, -14.0), 0.6),
                       ((-54.0, -42.0, 2.0), 0.6), ((-46.0, -62.0, 28.0), 0.5))),
    "default": (0.45, (((-6.0, -56.0, 30.0), 1.0), ((-6.0, 50.0, 4.0), 1.0), ((-46.0, -66.0, 34.0), 0.8))),
}
NETWORK_SIGMA_MM = 12.0  # width of a node's Gaussian (FWHM 28 mm: a gyrus and its neighbours)


def source_networks(coupling: Coupling) -> list[str]:
    """The network of each BOLD source (shared then hidden): the auditory sources first, then the
    language and default-mode networks in turn."""
    rest = ("language", "default")
    shared = ["auditory" if k < coupling.auditory_sources else rest[(k - coupling.auditory_sources) % 2]
              for k in range(coupling.n_sources)]
    return shared + [rest[k % 2] for k in range(coupling.hidden_sources)]


def group_network_nodes(rng: np.random.Generator, coupling: Coupling) -> list[list[tuple[np.ndarray, float]]]:
    """Per BOLD source, its nodes as (MNI mm, gain): every node of its network, both hemispheres, with a
    random gain in [0.4, 1] per node (two sources of one network weigh its nodes differently)."""
    out = []
    for network in source_networks(coupling):
        scale, nodes = NETWORKS[network]
        mine = []
        for centre, right in nodes:
            gain = scale * rng.uniform(0.4, 1.0)
            mine.append((np.array(centre), gain))
            if centre[0] != 0:
                mine.append((np.array(centre) * [-1, 1, 1], gain * right))
        out.append(mine)
    return out


def subject_network_maps(rng: np.random.Generator, nodes: list[list[tuple[np.ndarray, float]]],
                         anatomy: Anatomy, coupling: Coupling) -> np.ndarray:
    """Per-subject graded maps ``(n_bold, *shape)`` float32: each node a Gaussian of
    ``NETWORK_SIGMA_MM`` in MNI mm, shifted and scaled per subject by ``subject_variability``, on grey
    matter."""
    v = coupling.subject_variability
    half = (np.array(MNI_BOX_MM)[:, 1] - np.array(MNI_BOX_MM)[:, 0]) / 2
    mm = anatomy.coords * half + np.array(MNI_BOX_MM).mean(axis=1)  # the template point each voxel sees
    maps = np.zeros((len(nodes), *anatomy.baseline.shape), dtype=np.float32)
    for k, mine in enumerate(nodes):
        for centre, gain in mine:
            c = centre + rng.normal(0, v * NETWORK_SIGMA_MM / 2, 3)
            amp = gain * np.clip(1 + v * rng.standard_normal(), 0.3, 2.0)
            d2 = ((mm - c) ** 2).sum(axis=-1)
            maps[k] += (amp * np.exp(-0.5 * d2 / NETWORK_SIGMA_MM**2)).astype(np.float32)
    return maps * anatomy.grey


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


# Physiological noise of the calibrated world (``Coupling.physio == "cardiorespiratory"``), as shares of
# its variance. Cardiac pulsation (0.9-1.3 Hz) and respiration (0.2-0.33 Hz) are sampled at each
# slice's own acquisition time, so the heart beat aliases as it does at TR 0.71 s (Nyquist 0.70 Hz: 1.1
# Hz appears at 0.31 Hz) and neither sits below 0.1 Hz (Glover et al. 2000, MRM 44:162; Birn et al.
# 2006, NeuroImage 31:1536). The slow part is largely global (respiration volume and CO2: Birn et al.
# 2006; Power et al. 2017, NeuroImage 146:609), grey matter 1.0 and white matter 0.6; the local part is
# the earlier worlds' 16 smooth AR(1) patterns.
PHYSIO_PARTS = {"global": 0.35, "cardiac": 0.25, "respiratory": 0.25, "local": 0.15}
CARDIAC_HZ, RESPIRATORY_HZ = (0.9, 1.3), (0.2, 0.33)
GLOBAL_TIMESCALE = 4.0  # s: the global part's Gaussian spectrum (below ~0.1 Hz)


def quasi_periodic(rng: np.random.Generator, rate: tuple[float, float], times: np.ndarray,
                   n_patterns: int) -> np.ndarray:
    """``(n_patterns, *times.shape)`` courses ``cos(phase(t) + delay_k) + 0.4 cos(2 (phase + delay_k))``
    of a rhythm whose rate, drawn from ``rate`` (Hz), wanders by 5% over tens of seconds, sampled at
    ``times`` (s); unit variance each."""
    f0 = rng.uniform(*rate)
    grid = np.arange(0.0, times.max() + 1.0, 0.05)
    wander = np.cumsum(rng.standard_normal(len(grid))) * 0.05
    wander = (wander - wander.mean()) / max(wander.std(), 1e-12)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * wander)) * 0.05 + rng.uniform(0, 2 * np.pi)
    at = np.interp(times, grid, phase)
    delays = rng.uniform(0, 2 * np.pi, n_patterns)
    out = np.stack([np.cos(at + d) + 0.4 * np.cos(2 * (at + d)) for d in delays])
    return out / np.sqrt(0.5 + 0.5 * 0.4**2)


def smooth_patterns(rng: np.random.Generator, brain: np.ndarray, n: int, sigma: float) -> np.ndarray:
    """``n`` random spatial patterns smoothed by ``sigma`` voxels, jointly of unit mean square in brain."""
    patterns = ndimage.gaussian_filter(rng.standard_normal((n, *brain.shape), dtype=np.float32),
                                       (0, *[sigma] * 3))
    return patterns / np.sqrt((patterns ** 2).sum(axis=0)[brain].mean())


def cardiorespiratory_field(rng: np.random.Generator, anatomy: Anatomy, times: np.ndarray
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The calibrated world's physiological noise as (patterns ``(K, *shape)``, courses ``(K, n_slices,
    n_vols)``) pairs whose sum has variance about 1 per brain voxel, ``times`` ``(n_slices, n_vols)``
    being each slice's acquisition time."""
    brain = anatomy.brain
    parts = []
    cardiac = smooth_patterns(rng, brain, 3, 1.5)
    parts.append((cardiac * np.float32(np.sqrt(PHYSIO_PARTS["cardiac"])),
                  quasi_periodic(rng, CARDIAC_HZ, times, 3)))
    breath = smooth_patterns(rng, brain, 2, 4.0)
    parts.append((breath * np.float32(np.sqrt(PHYSIO_PARTS["respiratory"])),
                  quasi_periodic(rng, RESPIRATORY_HZ, times, 2)))
    weight = np.where(brain, 0.6 + 0.4 * anatomy.grey / max(float(anatomy.grey.max()), 1e-6), 0.0)
    weight = (weight / np.sqrt((weight[brain] ** 2).mean())).astype(np.float32)
    slow = smooth_noise(rng, 1, times.shape[1], GLOBAL_TIMESCALE, 1 / TR)  # one value a volume
    parts.append((weight[None] * np.float32(np.sqrt(PHYSIO_PARTS["global"])),
                  np.broadcast_to(slow[:, None, :], (1, *times.shape))))
    patterns, courses = physio_field(rng, brain, times.shape[1])
    parts.append((patterns * np.float32(np.sqrt(PHYSIO_PARTS["local"])),
                  np.broadcast_to(courses[:, None, :], (len(courses), *times.shape))))
    return [(p.astype(np.float32), np.ascontiguousarray(c, dtype=np.float32)) for p, c in parts]


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
        level = np.float32(np.sqrt(coupling.physio_share) / coupling.tsnr)
        if coupling.physio == "cardiorespiratory":
            physio = [(p * level, c) for p, c in cardiorespiratory_field(physio_rng, anatomy, times)]
        else:
            patterns, courses = physio_field(physio_rng, anatomy.brain, plan.n_vols)
            physio = (patterns * level, courses)
    scale = coupling.bold_percent / 100
    out = np.empty((*shape, plan.n_vols), dtype=np.int16)
    for j0 in range(0, plan.n_vols, chunk):
        j1 = min(j0 + chunk, plan.n_vols)
        frac = np.einsum("d...,dt->...t", drift_amp, trend[:, j0:j1])
        for k in range(maps.shape[0]):
            frac += scale * maps[k][..., None] * response[k, None, None, :, j0:j1]
        if isinstance(physio, list):  # courses per slice: each slice at its own acquisition time
            for patterns, courses in physio:
                frac += np.einsum("kxyz,kzt->xyzt", patterns, courses[:, :, j0:j1])
        elif physio is not None:
            frac += np.einsum("k...,kt->...t", physio[0], physio[1][:, j0:j1])
        volume = anatomy.baseline[..., None] * (1 + frac)
        volume += sigma * rng.standard_normal(volume.shape, dtype=np.float32)
        out[..., j0:j1] = np.clip(np.rint(np.abs(volume)), 0, np.iinfo(np.int16).max)
    return out


def write_nifti(data: np.ndarray, path: Path) -> None:
    """Save ``data`` as gzip NIfTI-1 on the MNI grid (``grid_affine``) with TR in the header
    (deterministic bytes)."""
    affine = grid_affine(data.shape[:3])
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
