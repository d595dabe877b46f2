"""MEG runs read back with MNE and MNE-BIDS as the real files do; the coupling is real."""

from __future__ import annotations

from pathlib import Path

import mne
import mne_bids
import numpy as np
import pytest
from conftest import DATA, read_tsv, truth_config

from meg2fmri.ingest.synth.config import Coupling
from meg2fmri.ingest.synth.sources import story_sources

FIF = "sub-{s}/meg/sub-{s}_task-RDR_run-{r}_meg.fif"


def read_fif(root: Path, subject: str, run: int, preload: bool = False) -> mne.io.Raw:
    return mne.io.read_raw_fif(root / FIF.format(s=subject, r=run), preload=preload, verbose="error")


def test_fif_has_the_real_328_channels(tiny_root: Path):
    raw = read_fif(tiny_root, "01", 1)
    real = read_tsv(DATA / "ref_channels.tsv")
    assert raw.ch_names == [row["name"] for row in real]
    assert raw.info["sfreq"] == 1000.0
    types = raw.get_channel_types()
    assert types.count("grad") == 204 and types.count("mag") == 102
    assert types.count("stim") == 9 and types.count("ias") == 11
    assert types.count("syst") == 1 and types.count("bio") == 1
    # Positions are MNE's own Neuromag-306 geometry: the same as MNE's Vectorview layout.
    layout = mne.channels.read_layout("Vectorview-all")
    assert {n.replace(" ", "") for n in layout.names} == {n for n in raw.ch_names if n.startswith("MEG")}
    chs = {ch["ch_name"]: ch for ch in raw.info["chs"]}
    assert chs["MEG0113"]["coil_type"] == 3012 and chs["MEG0111"]["coil_type"] == 3024
    assert np.allclose(chs["MEG0113"]["loc"][:3], [-0.1066, 0.0464, -0.0604])


@pytest.mark.parametrize(("subject", "run"), [("01", 1), ("02", 2), ("04", 1)])
def test_sti101_triggers_agree_with_events_tsv(tiny_root: Path, subject: str, run: int):
    raw = read_fif(tiny_root, subject, run)
    assert 6000 <= raw.first_samp <= 21000  # the file starts 6-21 s into the acquisition
    events = mne.find_events(raw, stim_channel="STI101", verbose="error")
    assert events[:, 2].tolist() == [1, 2]
    rows = read_tsv(tiny_root / f"sub-{subject}/meg/sub-{subject}_task-RDR_run-{run}_events.tsv")
    # events.tsv onsets are relative to the file start; find_events samples include first_samp.
    tsv_samples = [int(row["sample"]) for row in rows]
    assert (events[:, 0] - raw.first_samp).tolist() == tsv_samples
    assert events[0, 0] != tsv_samples[0]
    beg, end = (float(row["onset"]) for row in rows)
    assert 7.0 <= beg <= 14.0
    assert end - beg == pytest.approx(40.0, abs=1e-3)  # the story length in func events.tsv
    # STI001 / STI002 carry the bits of STI101's values 1 and 2
    sti = raw.get_data(picks=["STI001", "STI002", "STI101"])
    on = sti[2] > 0
    assert np.array_equal(sti[0] > 0, sti[2] == 1) and np.array_equal(sti[1] > 0, sti[2] == 2)
    assert on.sum() > 0


def test_read_raw_bids_gives_channels_and_annotations(tiny_root: Path):
    path = mne_bids.BIDSPath(root=tiny_root, subject="03", task="RDR", run=2, datatype="meg")
    raw = mne_bids.read_raw_bids(path, verbose="error")
    assert len(raw.ch_names) == 328
    assert list(raw.annotations.description) == ["Beg", "End"]
    rows = read_tsv(tiny_root / "sub-03/meg/sub-03_task-RDR_run-2_events.tsv")
    onsets = raw.annotations.onset - raw.first_samp / raw.info["sfreq"]
    assert np.allclose(onsets, [float(row["onset"]) for row in rows], atol=1e-6)
    assert raw.info["line_freq"] == 50.0


def truth_coupling(root: Path) -> Coupling:
    c = truth_config(root)["coupling"]
    return Coupling(**{**c, "carrier_band": tuple(c["carrier_band"]), "hrf_peak": tuple(c["hrf_peak"])})


def stimulus_and_noise(root: Path, subject: str, run: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The run's MEG channels split into the stimulus-driven part (from the ground truth) and
    the rest, over the story; returns (signal, noise, story start in s)."""
    config = truth_config(root)
    coupling = truth_coupling(root)
    sources = story_sources(config["seed"], run, config["story_duration"], coupling)
    mixing = np.load(root / f"derivatives/synth/sub-{subject}/sub-{subject}_meg_mixing.npy")
    raw = read_fif(root, subject, run, preload=True).pick(["grad", "mag"])
    runs = read_tsv(root / "derivatives/synth/runs.tsv")
    row = next(r for r in runs if r["subject"] == subject and int(r["run"]) == run)
    start = float(row["meg_story_start_s"])
    i0 = int(round(start * 1000))
    signal = mixing @ sources.neural[coupling.meg_rows()]  # the hidden sources reach no sensor
    data = raw.get_data()[:, i0:i0 + signal.shape[1]]
    return signal, data - signal, start


def test_stimulus_is_below_sensor_noise_on_every_channel(tiny_root: Path):
    signal, noise, _ = stimulus_and_noise(tiny_root, "02", 1)
    ratio = signal.std(axis=1) / noise.std(axis=1)
    assert ratio.max() < 1.0  # SNR < 1 in any single sample, on every channel
    assert ratio.max() > 0.25  # ... but the stimulus is there (default --snr 0.5 on the best channel)


def test_band_power_of_sources_follows_the_envelope(long_root: Path):
    """An oracle spatial filter (the true mixing's pseudo-inverse) recovers each source, whose
    carrier-band power follows the story envelope, and the same run's data does not fit another story."""
    signal, noise, start = stimulus_and_noise(long_root, "05", 2)
    mixing = np.load(long_root / "derivatives/synth/sub-05/sub-05_meg_mixing.npy")
    data = signal + noise
    recovered = np.linalg.pinv(mixing) @ data
    band = truth_coupling(long_root).carrier_band  # 30-45 Hz (gamma) calibrated; 4-30 Hz before
    filtered = mne.filter.filter_data(recovered, 1000.0, *band, verbose="error")
    power = filtered**2
    n = power.shape[1] // 1000
    power_1s = power[:, : n * 1000].reshape(len(power), n, 1000).mean(axis=2)
    rows = truth_coupling(long_root).meg_rows()
    envelope = np.load(long_root / "derivatives/synth/stories/story-2_envelope_100Hz.npy")[rows]
    other = np.load(long_root / "derivatives/synth/stories/story-1_envelope_100Hz.npy")[rows]
    def env_1s(e):
        return (e[:, : n * 100] ** 2).reshape(len(e), n, 100).mean(axis=2)
    true_r = [np.corrcoef(p, e)[0, 1] for p, e in zip(power_1s, env_1s(envelope), strict=True)]
    null_r = [np.corrcoef(p, e)[0, 1] for p, e in zip(power_1s, env_1s(other), strict=True)]
    assert np.median(true_r) > 0.5
    assert np.median(true_r) > np.median(null_r) + 0.4
