"""Synthetic Elekta/Neuromag MEG runs: the real 328 channels, sensor mixing, noise, triggers, FIF.

Sensor names, coil types and positions come from MNE's own Neuromag-306 table; the other 22
channels (IAS*, SYS201, BIO001, STI001-STI008, STI101) are those of the real ds004078 files.
"""

from __future__ import annotations

import csv
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import mne
import numpy as np
from scipy import fft

from .config import DEFECT_RUNS, MEG_SFREQ, Coupling, RunPlan, data_file, read_tsv
from .sources import AUDITORY_FOLLOW, StorySources, band_noise

MAG_NOISE_RMS = 2e-13  # T (200 fT), broadband 0.1-330 Hz
GRAD_NOISE_RMS = 4e-12  # T/m (40 fT/cm)
TRIGGER_SECONDS = 0.05  # width of an STI101 pulse (50 samples at 1000 Hz)
NOISE_BAND = (0.1, 330.0)  # Hz: the sensor noise's band at 1000 Hz (MAG/GRAD_NOISE_RMS are over it)


def lowpass(sfreq: float) -> float:
    """The acquisition's anti-alias low-pass (Elekta: a third of the sampling rate, 330 Hz at 1000)."""
    return min(NOISE_BAND[1], sfreq / 3.0)
BEG, END = 1, 2  # STI101 values of story begin and story end
STIM_VOLTS = 5.0  # STI001..STI008 level while their bit is set


@dataclass(frozen=True)
class SensorArray:
    """The 306 Neuromag sensors in file order (sorted names, as in ds004078's channels.tsv)."""

    names: tuple[str, ...]
    coil_types: np.ndarray
    locs: np.ndarray  # (306, 12) MNE ``loc`` vectors (device frame)

    @property
    def pos(self) -> np.ndarray:
        return self.locs[:, :3]

    @property
    def is_grad(self) -> np.ndarray:
        return self.coil_types == 3012


def sensor_array() -> SensorArray:
    """MNE's canonical Neuromag-306 sensor positions and orientations, in the real files' channel order."""
    path = Path(mne.__file__).parent / "channels/data/canonical_meg/neuromag306.csv"
    with open(path, newline="") as f:  # sorted by name: the channel order of the real files
        rows = sorted(csv.DictReader(f), key=lambda row: row["name"].replace(" ", ""))
    names = tuple(row["name"].replace(" ", "") for row in rows)
    keys = ["x", "y", "z"] + [f"e{a}_{b}" for a in "xyz" for b in "xyz"]
    locs = np.array([[float(row[k]) for k in keys] for row in rows])
    coil_types = np.array([int(row["coil_type"]) for row in rows])
    return SensorArray(names, coil_types, locs)


def channel_table() -> list[dict[str, str]]:
    """The 328 channels of a real ds004078 run, in file order (name, type, units, ...)."""
    return read_tsv("channels.tsv")


def dipolar_fields(rng: np.random.Generator, sensors: SensorArray, n_fields: int) -> np.ndarray:
    """Smooth dipolar field patterns on the sensors, ``(306, n_fields)``.

    Each pattern is a pair of Gaussian lobes of opposite sign over the helmet; magnetometers see
    the field, planar gradiometers its derivative along their baseline. Mags and grads are each
    scaled to unit RMS over channels.
    """
    pos, ex = sensors.pos, sensors.locs[:, 3:6]
    centre = pos.mean(axis=0)
    mags = np.flatnonzero(~sensors.is_grad)
    sigma, half_gap = 0.03, 0.02
    out = np.empty((len(pos), n_fields))
    for k in range(n_fields):
        c = pos[rng.choice(mags)] + rng.normal(0, 0.01, 3)
        radial = (c - centre) / np.linalg.norm(c - centre)
        u = rng.standard_normal(3)
        u -= radial * (u @ radial)
        u /= np.linalg.norm(u)
        field = np.zeros(len(pos))
        grad = np.zeros_like(pos)
        for sign, lobe in ((1.0, c + half_gap * u), (-1.0, c - half_gap * u)):
            d = pos - lobe
            g = sign * np.exp(-0.5 * (d**2).sum(axis=1) / sigma**2)
            field += g
            grad += -d / sigma**2 * g[:, None]
        out[:, k] = np.where(sensors.is_grad, (grad * ex).sum(axis=1), field)
    for rows in (sensors.is_grad, ~sensors.is_grad):
        out[rows] /= np.sqrt((out[rows] ** 2).mean(axis=0, keepdims=True))
    return out


def subject_mixing(group: np.ndarray, rng: np.random.Generator, sensors: SensorArray,
                   coupling: Coupling) -> np.ndarray:
    """Per-subject sensor mixing ``(306, n_sources)`` in T and T/m.

    Group pattern plus a per-subject smooth perturbation of relative size
    ``subject_variability``, scaled so that the stimulus RMS on the best channel of each sensor
    type is ``snr`` times that type's noise RMS.
    """
    mixing = group + coupling.subject_variability * dipolar_fields(rng, sensors, group.shape[1])
    source_var = source_variances(coupling)
    for rows, noise_rms in ((sensors.is_grad, GRAD_NOISE_RMS), (~sensors.is_grad, MAG_NOISE_RMS)):
        if np.all(source_var == source_var[0]):  # (the earlier worlds' arithmetic, bit for bit)
            channel_rms = np.sqrt((mixing[rows] ** 2).sum(axis=1) * source_var[0])
        else:
            channel_rms = np.sqrt((mixing[rows] ** 2 * source_var).sum(axis=1))
        mixing[rows] *= coupling.snr * noise_rms / channel_rms.max()
    return mixing


def source_variances(coupling: Coupling) -> np.ndarray:
    """Expected variance of each MEG-visible source's signal (``Coupling.meg_rows`` order):
    E[env^2] var(carrier) + var(slow), plus the evoked response and the alpha rhythm where present."""
    rows = coupling.meg_rows()
    var = np.full(len(rows), np.exp(coupling.envelope_log_std**2) + 1.0)
    var += coupling.alpha_weight**2
    for j in range(coupling.auditory_sources):
        follow = 1.0 if j == 0 else AUDITORY_FOLLOW
        syllables = np.exp((follow * coupling.syllable_depth) ** 2) - 1
        var[j] += syllables + (coupling.evoked_weight * follow) ** 2
    return var


def in_band_std(knee: float, exponent: float, high: float) -> float:
    """Std of the part below ``high`` Hz of unit-std noise with spectrum ``1 + (knee / f) ** exponent``
    over ``NOISE_BAND``: a recording at a lower rate keeps the same noise density where it has one."""
    freqs = np.linspace(*NOISE_BAND, 200_001)
    power = 1.0 + (knee / freqs) ** exponent
    return float(np.sqrt(power[freqs <= high].sum() / power.sum()))


def coloured_noise(rng: np.random.Generator, n_series: int, n_times: int, knee: float,
                   exponent: float, sfreq: float = MEG_SFREQ) -> np.ndarray:
    """Noise with amplitude spectrum ``sqrt(1 + (knee / f) ** exponent)`` over 0.1 Hz to the low-pass,
    unit std over 0.1-330 Hz (at 1000 Hz: unit std; below, the in-band part of it)."""
    high = lowpass(sfreq)
    freqs = fft.rfftfreq(n_times, 1.0 / sfreq)
    with np.errstate(divide="ignore"):
        gain = np.sqrt(1.0 + (knee / freqs) ** exponent)
    gain[(freqs < NOISE_BAND[0]) | (freqs > high)] = 0.0
    out = np.empty((n_series, n_times), dtype=np.float32)
    for start in range(0, n_series, 32):  # chunks bound the memory of long runs
        block = rng.standard_normal((min(32, n_series - start), n_times), dtype=np.float32)
        block = fft.irfft(fft.rfft(block, axis=1) * gain, n=n_times, axis=1)
        out[start:start + len(block)] = block / block.std(axis=1, keepdims=True)
    if high < NOISE_BAND[1]:
        out *= np.float32(in_band_std(knee, exponent, high))
    return out


def sensor_noise(rng: np.random.Generator, background: np.ndarray, n_times: int,
                 sensors: SensorArray, coupling: Coupling, sfreq: float = MEG_SFREQ) -> np.ndarray:
    """Noise on the 306 MEG sensors ``(306, n_times)`` float32, in T and T/m.

    Correlated brain background (``background`` patterns, pink with an alpha rhythm) plus
    independent sensor noise with a 1/f knee, plus mains interference and two harmonics.
    """
    n_bg = background.shape[1]
    bg_courses = coloured_noise(rng, n_bg, n_times, knee=20.0, exponent=1.0, sfreq=sfreq)
    bg_courses += 0.7 * band_noise(rng, n_bg, n_times, (8.0, 12.0), sfreq).astype(np.float32)
    brain = background.astype(np.float32) @ bg_courses
    brain /= brain.std(axis=1).mean()
    if sfreq != MEG_SFREQ:  # the in-band part of the 1000-Hz background (pink + alpha), not unit std
        pink = in_band_std(20.0, 1.0, lowpass(sfreq))
        brain *= np.float32(np.sqrt((pink**2 + 0.7**2) / (1.0 + 0.7**2)))
    own = coloured_noise(rng, len(sensors.names), n_times, knee=5.0, exponent=1.0, sfreq=sfreq)
    share = coupling.background_share
    noise = float(np.sqrt(share)) * brain + float(np.sqrt(1 - share)) * own  # python floats: stays float32
    t = np.arange(n_times) / sfreq
    for harmonic, level in ((1, 1.0), (2, 0.3), (3, 0.5)):
        if coupling.line_freq * harmonic > lowpass(sfreq):  # filtered out before sampling
            continue
        amp = coupling.line_share * level * np.sqrt(2) * rng.uniform(0.3, 1.0, (len(noise), 1))
        phase = rng.uniform(0, 2 * np.pi, (len(noise), 1))
        # amp sin(wt + phase) = (amp cos phase) sin wt + (amp sin phase) cos wt: two rank-1 products
        # instead of a sine per channel and sample (the slowest line of synth before)
        wt = 2 * np.pi * coupling.line_freq * harmonic * t
        waves = np.stack([np.sin(wt), np.cos(wt)]).astype(np.float32)
        noise += np.hstack([amp * np.cos(phase), amp * np.sin(phase)]).astype(np.float32) @ waves
    noise[sensors.is_grad] *= GRAD_NOISE_RMS
    noise[~sensors.is_grad] *= MAG_NOISE_RMS
    return noise


@dataclass(frozen=True)
class MegTiming:
    """Where things are in one MEG file; seconds from the file start (not the acquisition)."""

    first_samp: int  # samples between acquisition start and file start
    story_start: float  # true story onset (may be < 0 if the file starts late)
    beg_trigger: float  # the recorded "Beg" trigger (wrong in the defect runs)
    end_trigger: float
    n_times: int


def meg_timing(rng: np.random.Generator, plan: RunPlan, tail: tuple[float, float],
               sfreq: float = MEG_SFREQ) -> MegTiming:
    # the file starts 6-21 s into the acquisition (drawn in ms: the same times at every rate)
    """A run's recording timing: first sample, story start, trigger times, length."""
    first_samp = int(round(int(rng.integers(6000, 21001)) * sfreq / 1000.0))
    beg = round(float(rng.uniform(7.0, 14.0)), 3)
    story_start = beg
    if plan.defect:
        defect = DEFECT_RUNS[(plan.subject, plan.run)]
        story_start = round(defect["true_start_s"], 3)
        beg = defect["spurious_beg_s"]
    end = round(story_start + plan.story_duration, 3)
    n_times = int(round((end + float(rng.uniform(*tail))) * sfreq)) + 1
    return MegTiming(first_samp, story_start, beg, end, n_times)


def stimulus_channels(timing: MegTiming, table: list[dict[str, str]],
                      sfreq: float = MEG_SFREQ) -> dict[str, np.ndarray]:
    """The STI channels' data: Beg (1) and End (2) pulses on STI101 at the story's start and end."""
    sti101 = np.zeros(timing.n_times, dtype=np.float32)
    width = int(round(TRIGGER_SECONDS * sfreq))
    for onset, value in ((timing.beg_trigger, BEG), (timing.end_trigger, END)):
        start = int(round(onset * sfreq))
        sti101[start:start + width] = value
    lines = {row["name"]: np.zeros(timing.n_times, dtype=np.float32)
             for row in table if row["name"].startswith("STI0")}
    for bit, name in enumerate(sorted(lines)):
        lines[name] = np.where(sti101.astype(int) & (1 << bit), STIM_VOLTS, 0).astype(np.float32)
    return {"STI101": sti101, **lines}


def meg_info(sensors: SensorArray, table: list[dict[str, str]], coupling: Coupling,
             sfreq: float = MEG_SFREQ) -> mne.Info:
    """The 328-channel ``mne.Info`` of a ds004078 recording."""
    kinds = {"MEGGRADPLANAR": "grad", "MEGMAG": "mag", "MISC": "bio", "TRIG": "stim"}
    types = [kinds.get(row["type"], "syst" if row["name"] == "SYS201" else "ias") for row in table]
    info = mne.create_info([row["name"] for row in table], sfreq, types, verbose="error")
    where = {name: i for i, name in enumerate(sensors.names)}
    with info._unlock():
        info["highpass"], info["lowpass"] = NOISE_BAND[0], lowpass(sfreq)
        info["line_freq"] = coupling.line_freq
        for ch in info["chs"]:
            if ch["ch_name"] in where:
                i = where[ch["ch_name"]]
                ch["loc"][:12] = sensors.locs[i]
                ch["coil_type"] = int(sensors.coil_types[i])
    coords = json.loads(data_file("coordsystem.json").read_text())["HeadCoilCoordinates"]
    montage = mne.channels.make_dig_montage(
        nasion=coords["NAS"], lpa=coords["LPA"], rpa=coords["RPA"],
        hpi=np.array([coords[f"coil{i}"] for i in range(1, 5)]), coord_frame="head")
    info.set_montage(montage, verbose="error")
    return info


def synthesize_meg(plan: RunPlan, timing: MegTiming, sources: StorySources, mixing: np.ndarray,
                   background: np.ndarray, coupling: Coupling, rng: np.random.Generator,
                   sensors: SensorArray, sfreq: float = MEG_SFREQ) -> mne.io.RawArray:
    """One run's raw recording (328 channels, file-relative times) as an MNE Raw object, sampled at
    ``sfreq``: the sources (1000 Hz) every ``1000 / sfreq``-th sample (they hold nothing above
    50 Hz, so nothing aliases), the noise drawn at ``sfreq`` with the same density below the
    low-pass."""
    table = channel_table()
    meg = sensor_noise(rng, background, timing.n_times, sensors, coupling, sfreq)
    start = int(round(timing.story_start * sfreq))
    neural = sources.neural[coupling.meg_rows()]  # the hidden sources reach no sensor
    if sfreq != MEG_SFREQ:
        neural = neural[:, ::int(round(MEG_SFREQ / sfreq))]
    skip = max(0, -start)  # a file that starts after the story loses the story's first samples
    n = min(neural.shape[1] - skip, timing.n_times - max(start, 0))
    meg[:, max(start, 0):max(start, 0) + n] += mixing.astype(np.float32) @ neural[:, skip:skip + n]
    channels = dict(zip(sensors.names, meg, strict=True))
    channels.update(stimulus_channels(timing, table, sfreq))
    heart = np.sin(2 * np.pi * 1.1 * np.arange(timing.n_times) / sfreq) ** 31
    channels["BIO001"] = (1e-4 * heart + 5e-6 * rng.standard_normal(timing.n_times)).astype(np.float32)
    zeros = np.zeros(timing.n_times, dtype=np.float32)
    data = np.stack([channels.get(row["name"], zeros) for row in table])
    info = meg_info(sensors, table, coupling, sfreq)
    date = datetime.datetime(2021, 3, 1, 9, 0, tzinfo=datetime.UTC)
    info.set_meas_date(date + datetime.timedelta(days=int(plan.subject) * 7, hours=plan.run % 6))
    return mne.io.RawArray(data, info, first_samp=timing.first_samp, verbose="error")


def write_fif(raw: mne.io.BaseRaw, path: Path) -> None:
    """Write one run's MEG as a FIF file."""
    raw.save(path, fmt="single", overwrite=False, verbose="error")
