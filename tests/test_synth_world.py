"""The calibrated world (issue 18): the sound and the auditory sources that follow it, the MEG's
phase-locked envelope following and its alpha that falls with activity, graded network maps, and
cardiac and respiratory noise at their aliased frequencies; the earlier worlds stay reachable."""

from __future__ import annotations

from pathlib import Path

import mne
import numpy as np
import pytest
from conftest import truth_config
from scipy import signal as sps
from scipy.io import wavfile
from test_synth_meg import stimulus_and_noise, truth_coupling

from meg2fmri.ingest.synth import calibrate
from meg2fmri.ingest.synth.config import TR, WORLDS, Coupling, world_coupling
from meg2fmri.ingest.synth.fmri import (
    NETWORKS,
    cardiorespiratory_field,
    grid_affine,
    quasi_periodic,
    subject_anatomy,
)

STORIES = "derivatives/synth/stories"


def wav_envelope(root: Path, story: int) -> np.ndarray:
    """The story audio's RMS in 10-ms bins (100 Hz), as a listener's loudness."""
    rate, wave = wavfile.read(root / f"stimuli/audio/story_{story}.wav")
    step = rate // 100
    n = len(wave) // step
    return np.sqrt((wave[: n * step].astype(np.float64).reshape(n, step) ** 2).mean(axis=1))


def test_the_auditory_sources_follow_the_sound_and_the_others_do_not(long_root: Path):
    config = truth_config(long_root)
    auditory = config["coupling"]["auditory_sources"]
    assert auditory == 2
    envelope = np.load(long_root / STORIES / "story-1_envelope_100Hz.npy")
    acoustic = np.load(long_root / STORIES / "story-1_acoustic_100Hz.npy")
    heard = wav_envelope(long_root, 1)
    n = min(len(heard), envelope.shape[1])
    smooth = sps.sosfiltfilt(sps.butter(4, 8.0, fs=100, output="sos"), heard[:n])  # 8-Hz loudness
    assert np.corrcoef(smooth, acoustic[:n])[0, 1] > 0.9  # the file carries the true sound
    r = [np.corrcoef(np.log(acoustic[:n]), np.log(e[:n]))[0, 1] for e in envelope]
    assert r[0] > 0.99 and 0.6 < r[1] < 0.95  # the first follows it exactly, the second partly
    assert max(abs(x) for x in r[auditory:]) < 0.4  # language, default-mode, hidden, MEG-only: their own


def test_meg_follows_the_envelope_phase_locked_and_alpha_falls_with_activity(long_root: Path):
    """An oracle spatial filter recovers the first auditory source: its 0.5-8 Hz signal follows the
    sound's envelope about 100 ms later (and not another story's), its alpha power falls when its
    envelope rises, and its gamma power (the carrier band) rises with it."""
    signal, noise, _ = stimulus_and_noise(long_root, "05", 2)
    mixing = np.load(long_root / "derivatives/synth/sub-05/sub-05_meg_mixing.npy")
    source = (np.linalg.pinv(mixing) @ (signal + noise))[0]
    coupling = truth_coupling(long_root)
    low = mne.filter.filter_data(source, 1000.0, 0.5, 8.0, verbose="error")[::10]  # 100 Hz
    acoustic = {s: np.load(long_root / STORIES / f"story-{s}_acoustic_100Hz.npy") for s in (1, 2)}
    n = min(len(low), len(acoustic[2]))

    def lagged(x, y, lag):
        return np.corrcoef(x[lag:n], y[: n - lag])[0, 1]

    r = [lagged(low, acoustic[2], lag) for lag in range(0, 31)]
    # 80-120 ms: the evoked latency; weak (the source's own slow field and its gamma carry far more
    # variance: --evoked-weight 0.2), but well above another story's sound at the same lag
    assert 8 <= int(np.argmax(r)) <= 12 and max(r) > 0.06
    assert abs(lagged(low, acoustic[1], int(np.argmax(r)))) < max(r) / 3
    envelope = np.load(long_root / STORIES / "story-2_envelope_100Hz.npy")[0]

    def power(band):
        x = mne.filter.filter_data(source, 1000.0, *band, verbose="error") ** 2
        return x[: n * 10].reshape(n, 10).mean(axis=1)

    def one_second(x):
        return x[: n // 100 * 100].reshape(-1, 100).mean(axis=1)

    alpha_r = np.corrcoef(one_second(power((8.0, 12.0))), one_second(envelope[:n]))[0, 1]
    gamma_r = np.corrcoef(one_second(power(coupling.carrier_band)), one_second(envelope[:n] ** 2))[0, 1]
    assert alpha_r < -0.2
    assert gamma_r > 0.5


def test_network_maps_are_graded_along_auditory_language_and_default_mode_cortex(tiny_root: Path):
    """Each BOLD source's map peaks on its network: the auditory sources in the temporal lobe near
    Heschl's gyrus, the language source left-lateralised; auditory peaks are the strongest."""
    maps = np.load(tiny_root / "derivatives/synth/sub-01/sub-01_fmri_maps.npy")
    networks = __import__("json").loads((tiny_root / "derivatives/synth/synth_config.json").read_text())[
        "sources"]["bold_networks"]
    assert networks[:2] == ["auditory", "auditory"] and {"language", "default"} <= set(networks)
    affine = grid_affine(maps.shape[1:])
    peaks = {}
    for k, network in enumerate(networks):
        mm = affine[:3, :3] @ np.unravel_index(np.argmax(maps[k]), maps.shape[1:]) + affine[:3, 3]
        peaks.setdefault(network, []).append(float(maps[k].max()))
        if network == "auditory":
            assert abs(mm[0]) > 30 and -45 < mm[1] < 0 and -15 < mm[2] < 30, mm
        if network == "language":
            x = (affine[:3, :3] @ np.indices(maps.shape[1:]).reshape(3, -1) + affine[:3, 3:])[0]
            flat = maps[k].ravel()
            assert flat[x < 0].sum() > 1.3 * flat[x > 0].sum()  # left-lateralised
    assert min(peaks["auditory"]) > max(peaks["default"])
    assert NETWORKS["auditory"][0] > NETWORKS["language"][0] > NETWORKS["default"][0]


def test_the_heart_beat_aliases_when_each_slice_is_sampled_at_its_own_time():
    """A 1.1-Hz rhythm sampled once per TR (0.71 s, Nyquist 0.70 Hz) appears at 1/TR - 1.1 = 0.31 Hz."""
    times = np.arange(1024) * TR + 0.3
    course = quasi_periodic(np.random.default_rng(0), (1.1, 1.1), times[None, :], 1)[0, 0]
    freqs, power = sps.periodogram(course, fs=1 / TR)
    # the rate wanders by 5% (about +-0.06 Hz), so the alias spreads around 0.31 Hz, far from 1.1
    assert freqs[np.argmax(power)] == pytest.approx(1 / TR - 1.1, abs=0.1)
    assert power[freqs < 0.1].sum() < 0.05 * power.sum()
    assert course.std() == pytest.approx(1.0, rel=0.1)


def test_cardiorespiratory_noise_is_mostly_fast_except_its_global_part():
    """The calibrated physiological field: about unit variance per brain voxel; a global part (the
    brain-mean series) carries about its 35% share, slow; what is left after removing it sits mostly
    above 0.1 Hz (aliased cardiac and respiratory noise), unlike the earlier worlds' AR(1) field."""
    anatomy = subject_anatomy(np.random.default_rng(0), (20, 20, 12))
    times = np.arange(400)[None, :] * TR + np.linspace(0, 0.6, 12)[:, None]
    parts = cardiorespiratory_field(np.random.default_rng(1), anatomy, times)
    field = sum(np.einsum("kxyz,kzt->xyzt", p, c) for p, c in parts)[anatomy.brain]  # (voxels, time)
    assert (field ** 2).mean() == pytest.approx(1.0, rel=0.25)
    global_course = field.mean(axis=0)
    share = np.var(global_course) / field.var(axis=1).mean()
    assert 0.2 < share < 0.6
    freqs, power = sps.periodogram(global_course, fs=1 / TR)
    assert power[freqs < 0.1].sum() > 0.8 * power.sum()
    beta = field @ global_course / (global_course @ global_course)
    rest = field - beta[:, None] * global_course
    freqs, power = sps.periodogram(rest, fs=1 / TR, axis=1)
    assert power[:, freqs > 0.1].sum() > 0.6 * power.sum()


def test_earlier_worlds_are_reachable_by_name_and_options_win():
    before = world_coupling("2026-12")
    assert (before.carrier_band, before.maps, before.physio, before.auditory_sources) == (
        (4.0, 30.0), "blobs", "local", 0)
    assert world_coupling("easy").tsnr == 70.0 and world_coupling("easy").hidden_sources == 0
    assert world_coupling("2026-12", tsnr=25.0).tsnr == 25.0
    assert Coupling() == world_coupling("calibrated") and set(WORLDS) == {"calibrated", "2026-12", "easy"}


def test_calibration_preprocessing_removes_white_matter_noise_and_smooths():
    """aCompCor + smoothing: a noise course shared by white and grey matter is regressed out, a signal
    only in grey matter survives, and each voxel keeps its mean."""
    rng = np.random.default_rng(0)
    shape, t = (16, 16, 10), 120
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    brain = np.zeros(shape, bool)
    brain[2:14, 2:14, 2:8] = True
    white = np.zeros(shape, bool)
    white[3:7, 3:13, 3:7] = True
    grey = brain & ~white
    common = rng.standard_normal(t)
    story = sps.sosfiltfilt(sps.butter(2, 0.1, fs=1 / TR, output="sos"), rng.standard_normal(t))
    data = 1000 + 20 * common[:, None, None, None] * brain + 5 * rng.standard_normal((t, *shape))
    data[:, grey] += 10 * story[:, None] / story.std()
    out = calibrate.preprocess(data, affine, brain, white)
    grey_cols = grey[brain]
    r_common = np.corrcoef(out[:, grey_cols].mean(axis=1), common)[0, 1]
    r_story = np.corrcoef(out[:, grey_cols].mean(axis=1), story)[0, 1]
    assert abs(r_common) < 0.2 and r_story > 0.9
    assert out.mean(axis=0) == pytest.approx(data.mean(axis=0)[brain], rel=1e-3)
