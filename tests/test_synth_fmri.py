"""BOLD runs: scanner-like NIfTI headers, realistic signal and noise levels, a real coupling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from meg2fmri.ingest.synth.config import FMRI_AUDIO_ONSET, TR
from meg2fmri.ingest.synth.fmri import grid_affine
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
    # the grid spans the MNI152 brain's box, one voxel size per axis: voxels -> MNI millimetres
    np.testing.assert_allclose(img.affine, grid_affine((24, 24, 18)))
    assert img.header.get_zooms() == pytest.approx((160 / 24, 194 / 24, 170 / 18, 0.71))
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
    # the brain is nilearn's MNI152 brain (each subject slightly scaled and shifted): its mask,
    # resampled to the grid, overlaps the subject's (Dice)
    from nilearn import datasets, image

    mni = datasets.load_mni152_brain_mask(resolution=2)
    grid = nib.load(tiny_root / BOLD.format(s="02", r=1))
    mni = image.resample_to_img(mni, image.index_img(grid, 0), interpolation="nearest",
                                copy_header=True, force_resample=True).get_fdata() > 0
    assert 2 * (mni & brain).sum() / (mni.sum() + brain.sum()) > 0.8
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


def source_rois(root: Path, subject: str) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """Per source: (every source's mean map weight in the ROI, slice, voxel mask in that slice) where
    its map is strong. Sources share networks in the calibrated world (two auditory sources on the
    same nodes, the others in turn on the language and default-mode networks), so a voxel follows a
    mixture: the weights say which."""
    maps = truth(root, subject, "fmri_maps")
    rois = []
    for m in maps:
        strong = m > 0.5 * m.max()
        z = int(np.argmax(strong.sum(axis=(0, 1))))
        roi = strong[:, :, z]
        rois.append((maps[:, :, :, z][:, roi].mean(axis=1), z, roi))
    return rois


def test_mapped_voxels_follow_the_hrf_convolved_latents(long_root: Path):
    """The coupling is real: within the story (the on/off block excluded), each source's voxels
    follow their map-weighted HRF-convolved latent drives, and not the drives of another story."""
    data = load_bold(long_root, "05", 1)
    n_vols = data.shape[-1]
    scan = np.arange(n_vols) * TR
    during = (scan > FMRI_AUDIO_ONSET + 10) & (scan < FMRI_AUDIO_ONSET + 150)
    true_r, null_r = [], []
    for weights, z, roi in source_rois(long_root, "05"):
        series = data[:, :, z][roi].mean(axis=0)
        own = weights @ story_response(long_root, 1, z, n_vols)
        other = weights @ story_response(long_root, 2, z, n_vols)
        true_r.append(np.corrcoef(series[during], own[during])[0, 1])
        null_r.append(np.corrcoef(series[during], other[during])[0, 1])
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


def test_physiological_noise_is_smooth_correlated_in_time_and_keeps_the_total_tsnr():
    """With no signal and no drift, the noise of a run has temporal SNR ``--tsnr`` whatever its
    physiological share; the earlier worlds' physiological part (``--physio local``) is spatially smooth
    and an AR(1) with a 5-s time constant, so the series are autocorrelated in proportion to the share
    (the calibrated world's: tests/test_synth_world.py)."""
    from meg2fmri.ingest.synth.config import Coupling, RunPlan
    from meg2fmri.ingest.synth.fmri import physio_field, subject_anatomy, synthesize_bold

    anatomy = subject_anatomy(np.random.default_rng(0), (20, 20, 12))
    plan = RunPlan("01", 1, 60.0, 300, False)

    def noise(share):
        c = Coupling(physio_share=share, tsnr=30.0, drift_percent=0.0, physio="local")
        data = synthesize_bold(plan, np.zeros((1, 600)), anatomy, np.zeros((1, 20, 20, 12), np.float32), c,
                               np.random.default_rng(1), 5.0, np.random.default_rng(2)).astype(np.float64)
        return data[anatomy.brain]

    def lag1(x):
        return float(np.median([np.corrcoef(v[:-1], v[1:])[0, 1] for v in x]))

    for share in (0.0, 0.6):
        x = noise(share)
        assert np.median(x.mean(axis=1) / x.std(axis=1)) == pytest.approx(30, rel=0.15)
    assert abs(lag1(noise(0.0))) < 0.1  # thermal noise is white
    # about share x exp(-0.71 / 5) = 0.52 at a voxel of mean intensity; less in dimmer voxels, whose
    # physiological part (proportional to the signal) is smaller against the same thermal noise
    assert 0.3 < lag1(noise(0.6)) < 0.55
    patterns, courses = physio_field(np.random.default_rng(3), anatomy.brain, 300)
    assert lag1(courses) == pytest.approx(np.exp(-0.71 / 5), abs=0.06)
    field = (patterns[..., None] * courses[:, None, None, None, :5]).sum(axis=0)[..., 0]
    inside = anatomy.brain[1:] & anatomy.brain[:-1]
    assert np.corrcoef(field[1:][inside], field[:-1][inside])[0, 1] > 0.8  # neighbours move together
    assert ((patterns ** 2).sum(axis=0)[anatomy.brain].mean()) == pytest.approx(1.0, rel=1e-4)


def test_each_subject_has_its_own_hrf_and_hidden_sources_drive_bold_only(tiny_root: Path):
    from meg2fmri.ingest.synth.sources import canonical_hrf

    config = json.loads((tiny_root / "derivatives/synth/synth_config.json").read_text())
    peaks = list(config["hrf_peak_s"].values())
    assert all(4.0 <= p <= 6.0 for p in peaks) and len(set(peaks)) == len(peaks)
    for p in (4.0, 5.0, 6.0):
        assert np.argmax(canonical_hrf(peak=p)) / 10 == pytest.approx(p, abs=0.11)
    coupling = config["config"]["coupling"]
    groups = config["sources"]
    assert (len(groups["meg_and_bold"]), len(groups["bold_only"]), len(groups["meg_only"])) == (
        coupling["n_sources"], coupling["hidden_sources"], coupling["meg_only_sources"])
    # the MEG mixes shared + MEG-only sources; BOLD maps and drives cover shared + hidden ones
    shared = len(groups["meg_and_bold"])
    assert truth(tiny_root, "01", "meg_mixing").shape[1] == shared + len(groups["meg_only"])
    assert truth(tiny_root, "01", "fmri_maps").shape[0] == shared + len(groups["bold_only"])
    drive = np.load(tiny_root / "derivatives/synth/stories/story-1_bold-drive_10Hz.npy")
    envelope = np.load(tiny_root / "derivatives/synth/stories/story-1_envelope_100Hz.npy")
    assert drive.shape[0] == truth(tiny_root, "01", "fmri_maps").shape[0] < envelope.shape[0]
    assert float(truth(tiny_root, "03", "fmri_hrf_peak_s")) == pytest.approx(config["hrf_peak_s"]["sub-03"],
                                                                             abs=1e-4)
