"""BOLD runs: scanner-like NIfTI headers, realistic signal and noise levels, a real coupling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from meg2fmri.ingest.synth.config import FMRI_AUDIO_ONSET, TR
from meg2fmri.ingest.synth.sources import bold_response

BOLD = "sub-{s}/func/sub-{s}_task-RDR_run-{r}_bold.nii.gz"


def load_bold(root: Path, subject: str, run: int) -> np.ndarray:
    return np.asarray(nib.load(root / BOLD.format(s=subject, r=run)).dataobj).astype(np.float64)


def truth(root: Path, subject: str, name: str) -> np.ndarray:
    return np.load(root / f"derivatives/synth/sub-{subject}/sub-{subject}_{name}.npy")


def test_nifti_header_tr_shape_and_dtype(tiny_root: Path):
    img = nib.load(tiny_root / BOLD.format(s="01", r=1))
    n_vols = math.ceil((10.65 + 40 + 18.87) / 0.71)
    assert img.shape == (24, 24, 18, n_vols)
    assert img.header.get_zooms() == pytest.approx((2.0, 2.0, 2.0, 0.71))
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert img.get_data_dtype() == np.int16
    sidecar = json.loads((tiny_root / "sub-01/func/sub-01_task-RDR_run-1_bold.json").read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(float(img.header.get_zooms()[3]))


def test_brain_shaped_intensities_and_realistic_noise(tiny_root: Path):
    data = load_bold(tiny_root, "02", 1)
    brain = truth(tiny_root, "02", "fmri_brain_mask")
    mean = data.mean(axis=-1)
    assert 500 < np.median(mean[brain]) < 1500  # scanner units, not [0, 1]
    assert np.median(mean[~brain]) < 0.2 * np.median(mean[brain])  # dark outside the head
    # temporal SNR of the raw series (signal, drift, thermal and physiological noise): the --tsnr
    # default (30), inside the 20-40 that raw 2-mm multiband EPI measures
    tsnr = mean[brain] / data[brain].std(axis=-1)
    assert 20 <= np.median(tsnr) <= 40


def story_response(root: Path, story: int, z: int, n_vols: int) -> np.ndarray:
    """The true HRF-convolved drives of ``story`` at slice ``z``'s acquisition times."""
    drive = np.load(root / f"derivatives/synth/stories/story-{story}_bold-drive_10Hz.npy")
    st = json.loads((root / "sub-05/func/sub-05_task-RDR_run-1_bold.json").read_text())["SliceTiming"]
    times = np.arange(n_vols) * TR + st[z]
    return bold_response(drive.astype(np.float64), FMRI_AUDIO_ONSET, times)


def source_rois(root: Path, subject: str) -> list[tuple[int, int, np.ndarray]]:
    """Per source: (source, slice, voxel mask in that slice) where its map is strong and dominant."""
    maps = truth(root, subject, "fmri_maps")
    rois = []
    for k, m in enumerate(maps):
        strong = (m > 0.5 * m.max()) & (m == maps.max(axis=0))
        z = int(np.argmax(strong.sum(axis=(0, 1))))
        rois.append((k, z, strong[:, :, z]))
    return rois


def test_mapped_voxels_follow_the_hrf_convolved_latents(long_root: Path):
    """The coupling is real: within the story (the on/off block excluded), each source's voxels
    follow its HRF-convolved latent drive, and not the drive of another story."""
    data = load_bold(long_root, "05", 1)
    n_vols = data.shape[-1]
    scan = np.arange(n_vols) * TR
    during = (scan > FMRI_AUDIO_ONSET + 10) & (scan < FMRI_AUDIO_ONSET + 150)
    true_r, null_r = [], []
    for k, z, roi in source_rois(long_root, "05"):
        series = data[:, :, z][roi].mean(axis=0)
        true_r.append(np.corrcoef(series[during], story_response(long_root, 1, z, n_vols)[k][during])[0, 1])
        null_r.append(np.corrcoef(series[during], story_response(long_root, 2, z, n_vols)[k][during])[0, 1])
    assert np.median(true_r) > 0.6
    assert np.median(true_r) > np.median(np.abs(null_r)) + 0.3


def test_bold_response_is_half_to_three_percent(long_root: Path):
    """The story response of each source's voxels is 0.5-3% of baseline (story vs rest)."""
    data = load_bold(long_root, "05", 2)
    baseline = truth(long_root, "05", "fmri_baseline")
    scan = np.arange(data.shape[-1]) * TR
    during = (scan > FMRI_AUDIO_ONSET + 8) & (scan < FMRI_AUDIO_ONSET + 150)
    rest = (scan < FMRI_AUDIO_ONSET + 1) | (scan > FMRI_AUDIO_ONSET + 150 + 16)
    changes = []
    for _, z, roi in source_rois(long_root, "05"):
        series = data[:, :, z][roi]
        change = (series[:, during].mean(axis=1) - series[:, rest].mean(axis=1)) / baseline[:, :, z][roi]
        changes.append(100 * np.median(change))
    assert 0.5 <= np.median(changes) <= 3.0
    assert max(changes) < 5.0
