"""``synth --calibrate``: measure a dataset the way published studies measure real story-listening data,
from the data (and the story audio) alone, no model, beside the published ranges.

Rows (each with the range it is held to and where the range comes from; the ranges are the ones issue
#18 gathered, fixed before any model is scored):

- ``isc_top1``, ``isc_best``: leave-one-subject-out inter-subject correlation (each subject's story
  segment against the mean of the other subjects' on the same story, per voxel; averaged over subjects
  and stories), measured as published ISC is: after nuisance regression (aCompCor: five principal
  components of the white-matter signal, Behzadi et al. 2007, NeuroImage 37:90; the linear trend) and
  6-mm FWHM smoothing, as in the smoothed derivatives of Narratives (Nastase et al. 2021): the mean
  of the top 1% of brain voxels, and the best voxel.
  Published: about 0.4-0.6 in early auditory cortex (Nastase et al. 2021, *Narratives*, Sci Data 8:250).
- ``isc_significant``: the fraction of cortical voxels (nilearn's MNI152 grey-matter mask) whose ISC
  passes a time-shift null (each subject's series circularly shifted against the others' mean,
  shifts shared by all voxels; p from the null's mean and spread per voxel) after Benjamini-Hochberg
  FDR at q = 0.05. Published: widespread, STG/STS, IFG, parietal and default-mode cortex (Lerner et
  al. 2011, J Neurosci 31:2906; Simony et al. 2016, Nat Commun 7:12141); 20-40% of cortical voxels is
  the target.
- ``stimulus_share_top1``: the stimulus-locked share of a voxel's variance implied by its ISC (for
  subject = s + n_i, the leave-one-out r with the mean of m others solves
  ``f^2 - r^2 (1 - 1/m) f - r^2 / m = 0``), in the top 1% voxels. Published: 20-35% in the best voxels.
- ``noise_above_0.1hz`` (no range; physiological noise should sit mostly above 0.1 Hz, aliased, except
  its global slow part): the share of the raw series' non-stimulus-locked variance above 0.1 Hz.
- ``tsnr``: the brain median of mean / std over time of the raw series (linear trend removed).
  Published: 20-40 for 2-mm multiband EPI at 3 T.
- ``bold_change_top1``: twice the std over time of the other subjects' mean series in the top 1% ISC
  voxels, in percent of the voxel's mean: the stimulus-driven BOLD change. Published: 0.5-3%.
- ``meg_envelope_r``: phase-locked tracking of the speech envelope: per subject, the best MEG sensor's
  |r| between its 0.5-8 Hz signal and the story's audio envelope (8 Hz low-passed) at the best lag of
  0-300 ms, averaged over the subject's runs; the median over subjects. Published: about 0.05-0.15 per
  sensor (Ding & Simon 2012, PNAS 109:11854; Gross et al. 2013, PLoS Biol 11:e1001752).
  ``meg_envelope_r_chance`` is the same with another story's envelope (the floor the best-of-sensors
  and best-of-lags selection gives on its own).
- ``meg_alpha_power_r``, ``meg_beta_power_r``: the same for the band's power envelope. Published: weak
  (held to |r| <= 0.2 here, fixed a priori), alpha power falling with activity.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage, signal
from scipy.io import wavfile
from scipy.stats import false_discovery_control, norm

from meg2fmri.shards.errors import InputError

from . import truth
from .config import FMRI_AUDIO_ONSET, TR

MEG_RATE = 100.0  # Hz, after ingest's preprocessing
NULL_SHIFTS = 100
FDR_Q = 0.05
TOP = 0.01  # the top fraction of brain voxels by ISC


@dataclass(frozen=True)
class Target:
    """A published range a calibration figure must fall in, and its source."""
    low: float
    high: float
    source: str


TARGETS = {
    "isc_top1": Target(0.4, 0.6, "Nastase et al. 2021 (Narratives): early auditory cortex"),
    "isc_best": Target(0.4, 0.8, "Nastase et al. 2021 (Narratives)"),
    "isc_significant": Target(0.2, 0.4, "Lerner et al. 2011; Simony et al. 2016: widespread"),
    "stimulus_share_top1": Target(0.2, 0.35, "implied by the ISC of the best voxels"),
    "tsnr": Target(20.0, 40.0, "2-mm multiband EPI at 3 T"),
    "bold_change_top1": Target(0.5, 3.0, "percent signal change of story responses"),
    "meg_envelope_r": Target(0.05, 0.15, "Ding & Simon 2012; Gross et al. 2013"),
    "meg_alpha_power_r": Target(0.0, 0.2, "weak (alpha power falls with activity)"),
    "meg_beta_power_r": Target(0.0, 0.2, "weak"),
}


NOTES = {"meg_envelope_r_chance": "chance floor (another story's envelope)",
         "noise_above_0.1hz": "physiological noise aliased above 0.1 Hz; thermal alone: 0.86"}


def detrend(series: np.ndarray) -> np.ndarray:
    """Remove each column's mean and linear trend, ``(time, voxels)``."""
    return signal.detrend(series, axis=0, type="linear")


def zscore(series: np.ndarray) -> np.ndarray:
    """A series z-scored over its first axis (time); constant columns left at 0."""
    sd = series.std(axis=0)
    return (series - series.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def loo_isc(subjects: np.ndarray) -> np.ndarray:
    """Leave-one-subject-out ISC ``(subjects, voxels)`` of ``(subjects, time, voxels)`` series: each
    subject against the mean of the others (Pearson r over time)."""
    z = zscore_each(subjects)
    total = z.sum(axis=0)
    out = np.empty((len(z), z.shape[2]))
    for i in range(len(z)):
        others = zscore((total - z[i]) / (len(z) - 1))
        out[i] = (z[i] * others).mean(axis=0)
    return out


def zscore_each(subjects: np.ndarray) -> np.ndarray:
    """Each subject's series z-scored over time."""
    return np.stack([zscore(detrend(s)) for s in subjects])


def shifted_isc_null(subjects: np.ndarray, rng: np.random.Generator, draws: int) -> np.ndarray:
    """``(draws, voxels)``: the mean leave-one-out ISC with each subject's series circularly shifted by
    a random amount (at least 10% of the series) against the others' mean, one shift per subject and
    draw, shared by every voxel (so the voxels' spatial correlation is kept)."""
    z = zscore_each(subjects)
    n, t = z.shape[:2]
    total = z.sum(axis=0)
    others = [zscore((total - z[i]) / (n - 1)) for i in range(n)]
    out = np.zeros((draws, z.shape[2]))
    low = max(1, t // 10)
    for d in range(draws):
        for i in range(n):
            out[d] += (np.roll(z[i], int(rng.integers(low, t - low + 1)), axis=0) * others[i]).mean(axis=0)
    return out / n


def stimulus_share(r: np.ndarray, others: int) -> np.ndarray:
    """The stimulus-locked share of variance ``f`` implied by a leave-one-out ISC ``r`` with the mean of
    ``others`` subjects (each subject = shared signal + independent noise of equal variance)."""
    r2 = np.clip(r, 0, None) ** 2
    a = 1 - 1 / others
    return (r2 * a + np.sqrt(r2**2 * a**2 + 4 * r2 / others)) / 2


def story_segments(root: Path, runs: list[dict]) -> dict[int, dict[str, np.ndarray]]:
    """Per story, each subject's BOLD over the story ``(volumes, i, j, k)`` as float32."""
    out: dict[int, dict[str, np.ndarray]] = {}
    first = round(FMRI_AUDIO_ONSET / TR)
    for row in runs:
        subject, run = row["subject"], int(row["run"])
        path = root / f"sub-{subject}/func/sub-{subject}_task-RDR_run-{run}_bold.nii.gz"
        data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        count = int(float(row["story_duration_s"]) // TR)
        out.setdefault(run, {})[subject] = np.moveaxis(data[..., first:first + count], -1, 0)
    return out


SMOOTH_FWHM_MM = 6.0  # the smoothed Narratives derivatives' kernel (Nastase et al. 2021)
COMPCOR_COMPONENTS = 5  # aCompCor: principal components of white-matter signal (Behzadi et al. 2007)


def template_mask(kind: str, like: nib.Nifti1Image) -> np.ndarray:
    """nilearn's bundled MNI152 grey- or white-matter mask on ``like``'s grid (no download)."""
    from nilearn import datasets, image

    load = {"gm": datasets.load_mni152_gm_mask, "wm": datasets.load_mni152_wm_mask}[kind]
    return np.asarray(image.resample_to_img(load(resolution=2), like, interpolation="nearest",
                                            force_resample=True, copy_header=True).dataobj) > 0


def preprocess(segment: np.ndarray, affine: np.ndarray, brain: np.ndarray, white: np.ndarray) -> np.ndarray:
    """A story segment ``(time, i, j, k)`` as published ISC is measured on it: nuisance regression
    (linear trend and the first ``COMPCOR_COMPONENTS`` principal components of the eroded white-matter
    signal, taken before smoothing, as aCompCor does), then spatial smoothing at ``SMOOTH_FWHM_MM``; the
    brain voxels ``(time, voxels)`` with their mean put back (percent change keeps its meaning)."""
    t = len(segment)
    wm = detrend(segment[:, white].astype(np.float64))
    u, _, _ = np.linalg.svd(wm, full_matrices=False)
    design = np.column_stack([np.ones(t), np.linspace(-1, 1, t), u[:, :COMPCOR_COMPONENTS]])
    flat = segment.reshape(t, -1).astype(np.float64)
    mean = flat.mean(axis=0)
    beta, *_ = np.linalg.lstsq(design, flat, rcond=None)
    clean = (flat - design @ beta).reshape(segment.shape)
    sigma = SMOOTH_FWHM_MM / 2.3548 / np.abs(np.diag(affine)[:3])
    inside = brain.astype(np.float64)
    weight = ndimage.gaussian_filter(inside, sigma)  # smoothing within the brain (no background leak)
    out = ndimage.gaussian_filter(clean * inside, (0, *sigma))[:, brain]  # (each volume on its own)
    return out / np.maximum(weight[brain], 1e-6) + mean.reshape(segment.shape[1:])[brain]


def bold_rows(root: Path, runs: list[dict], rng: np.random.Generator) -> tuple[dict, dict]:
    """The calibration table's BOLD rows (ISC, tSNR, spectra) of a dataset."""
    stories = story_segments(root, runs)
    means = [seg.mean(axis=0) for subs in stories.values() for seg in subs.values()]
    mean_image = np.mean(means, axis=0)
    from nilearn.masking import compute_epi_mask

    affine = nib.load(next(root.glob("sub-*/func/*_bold.nii.gz"))).affine
    like = nib.Nifti1Image(mean_image, affine)
    brain = np.asarray(compute_epi_mask(like).dataobj) > 0
    white = ndimage.binary_erosion(template_mask("wm", like), iterations=1) & brain
    cortex = template_mask("gm", like)[brain]  # brain voxels in the MNI grey-matter mask
    tsnr, isc, null, change, others, above = [], [], [], [], [], []
    for subs in stories.values():
        raw = np.stack([seg[:, brain] for seg in subs.values()])  # (subjects, time, voxels)
        for s in raw:
            d = detrend(s)
            tsnr.append(np.median(s.mean(axis=0) / np.maximum(d.std(axis=0), 1e-6)))
        if len(raw) < 3:
            continue
        series = np.stack([preprocess(seg, affine, brain, white) for seg in subs.values()])
        above.append(noise_above(raw, 0.1))
        isc.append(loo_isc(series).mean(axis=0))
        null.append(shifted_isc_null(series, rng, NULL_SHIFTS))
        level = np.maximum(series.mean(axis=(0, 1)), 1e-6)
        change.append(200 * detrend(series.mean(axis=0)).std(axis=0) / level)
        others.append(len(series) - 1)
    if not isc:
        raise InputError(f"{root}: --calibrate needs a story heard by at least 3 subjects")
    isc_map = np.mean(isc, axis=0)
    null_map = np.mean(null, axis=0)  # (draws, voxels): the null of the story-averaged ISC
    # one-sided p from the null's mean and spread per voxel (a normal tail: the few hundred draws
    # could not give the small p-values that FDR over thousands of voxels needs)
    p = norm.sf((isc_map - null_map.mean(axis=0)) / np.maximum(null_map.std(axis=0), 1e-12))
    top = np.argsort(isc_map)[-max(1, int(round(TOP * len(isc_map)))):]
    m = int(np.median(others))
    significant = false_discovery_control(p) < FDR_Q
    values = {"isc_top1": float(isc_map[top].mean()), "isc_best": float(isc_map.max()),
              "isc_significant": float(significant[cortex].mean()),
              "stimulus_share_top1": float(stimulus_share(isc_map[top], m).mean()),
              "tsnr": float(np.median(tsnr)), "bold_change_top1": float(np.mean(change, axis=0)[top].mean()),
              "noise_above_0.1hz": float(np.mean(above))}
    return values, {"brain_voxels": int(brain.sum()), "cortex_voxels": int(cortex.sum()),
                    "significant_brain_fraction": float(significant.mean()),
                    "stories_with_3_subjects": len(isc), "null_shifts": NULL_SHIFTS,
                    "preprocessing": f"aCompCor ({COMPCOR_COMPONENTS} white-matter components) + linear "
                    f"trend, then {SMOOTH_FWHM_MM:g}-mm FWHM smoothing"}


def noise_above(raw: np.ndarray, cutoff: float) -> float:
    """The share of the non-stimulus-locked variance above ``cutoff`` Hz in the raw series
    ``(subjects, time, voxels)``: each subject minus the others' mean, linear trend removed, power
    spectrum pooled over voxels (thermal white noise alone gives (Nyquist - cutoff) / Nyquist = 0.86)."""
    n = len(raw)
    total = raw.sum(axis=0)
    shares = []
    for i in range(n):
        residual = detrend(raw[i] - (total - raw[i]) / (n - 1))
        freqs, power = signal.periodogram(residual, fs=1 / TR, axis=0)
        power = power.sum(axis=1)
        shares.append(power[freqs > cutoff].sum() / max(power[1:].sum(), 1e-12))
    return float(np.mean(shares))


def audio_envelope(path: Path, rate: float = MEG_RATE) -> np.ndarray:
    """The RMS envelope of a WAV file at ``rate`` Hz, low-passed at 8 Hz."""
    sfreq, wave = wavfile.read(path)
    wave = wave.astype(np.float64)
    wave = wave.mean(axis=1) if wave.ndim > 1 else wave
    step = int(sfreq / rate)
    n = len(wave) // step
    envelope = np.sqrt((wave[: n * step].reshape(n, step) ** 2).mean(axis=1))
    return signal.sosfiltfilt(signal.butter(4, 8.0, fs=rate, output="sos"), envelope)


def best_lagged_r(channels: np.ndarray, envelope: np.ndarray, max_lag: int) -> np.ndarray:
    """Per channel ``(channels, time)``, r with ``envelope`` at each lag of 0..``max_lag`` samples (the
    brain after the sound): ``(lags, channels)``."""
    out = []
    n = min(channels.shape[1], len(envelope))
    for lag in range(max_lag + 1):
        x, y = channels[:, lag:n], envelope[: n - lag]
        x = (x - x.mean(axis=1, keepdims=True)) / np.maximum(x.std(axis=1, keepdims=True), 1e-12)
        y = (y - y.mean()) / max(y.std(), 1e-12)
        out.append((x * y).mean(axis=1))
    return np.array(out)


def meg_rows(root: Path, runs: list[dict]) -> dict:
    """The calibration table's MEG rows (envelope tracking, spectra) of a dataset."""
    from meg2fmri.ingest.preprocess import preprocess_meg_file

    per_subject: dict[str, dict[str, list]] = {}
    stories = sorted({int(r["run"]) for r in runs})
    envelopes = {s: audio_envelope(root / "stimuli" / "audio" / f"story_{s}.wav") for s in stories}
    bands = {"envelope": (0.5, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0)}
    for row in runs:
        subject, run = row["subject"], int(row["run"])
        fif = root / f"sub-{subject}/meg/sub-{subject}_task-RDR_run-{run}_meg.fif"
        meg = preprocess_meg_file(fif, fif.name, float(row["story_duration_s"]))
        sensors = [i for i, name in enumerate(meg.ch_names) if name.startswith("MEG")]
        start = round(meg.story_onset * MEG_RATE)
        stop = start + round(float(row["story_duration_s"]) * MEG_RATE)
        data = meg.data[sensors, max(start, 0):stop].astype(np.float64)
        other = stories[(stories.index(run) + 1) % len(stories)]
        entry = per_subject.setdefault(subject, {})
        for band, (low, high) in bands.items():
            sos = signal.butter(4, (low, high), btype="bandpass", fs=MEG_RATE, output="sos")
            filtered = signal.sosfiltfilt(sos, data, axis=1)
            if band != "envelope":  # the band's power envelope, as slow as the speech envelope
                filtered = signal.sosfiltfilt(signal.butter(4, 8.0, fs=MEG_RATE, output="sos"),
                                              np.abs(signal.hilbert(filtered, axis=1)), axis=1)
            lag = 50 if band != "envelope" else 30  # samples: 0-500 ms for power, 0-300 ms phase-locked
            entry.setdefault(band, []).append(best_lagged_r(filtered, envelopes[run], lag))
            if band == "envelope" and other != run:
                entry.setdefault("chance", []).append(best_lagged_r(filtered, envelopes[other], lag))

    def summary(band: str) -> float:
        best = [np.abs(np.mean(e[band], axis=0)).max() for e in per_subject.values() if band in e]
        return float(np.median(best)) if best else float("nan")

    return {"meg_envelope_r": summary("envelope"), "meg_envelope_r_chance": summary("chance"),
            "meg_alpha_power_r": summary("alpha"), "meg_beta_power_r": summary("beta")}


def calibrate(root: Path, seed: int = 0) -> dict:
    """Every row's value, range and verdict, for the synth dataset at ``root``."""
    runs_tsv = truth.runs_file(root)
    if not runs_tsv.is_file():
        raise InputError(f"--calibrate {root}: no {runs_tsv.relative_to(root)} (a dataset written by synth)")
    with open(runs_tsv, newline="") as f:
        runs = list(csv.DictReader(f, delimiter="\t"))
    values, details = bold_rows(root, runs, np.random.default_rng(seed))
    values |= meg_rows(root, runs)
    rows = []
    for name, value in values.items():
        target = TARGETS.get(name)
        ok = None if target is None else bool(target.low <= value <= target.high)
        rows.append({"name": name, "value": value, "ok": ok,
                     "range": None if target is None else [target.low, target.high],
                     "source": None if target is None else target.source})
    return {"dataset": str(root), "rows": rows, "details": details,
            "in_range": all(r["ok"] for r in rows if r["ok"] is not None)}


def table(result: dict) -> str:
    """The calibration table as text: each figure beside its published range."""
    lines = ["| quantity | value | published range | in range | source |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        span = "-" if r["range"] is None else f"{r['range'][0]:g}-{r['range'][1]:g}"
        verdict = "-" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        source = r["source"] or NOTES.get(r["name"], "")
        lines.append(f"| {r['name']} | {r['value']:.3f} | {span} | {verdict} | {source} |")
    lines.append("")
    lines.append(json.dumps(result["details"]))
    return "\n".join(lines)
