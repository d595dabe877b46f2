"""BIDS files of the synthetic dataset: names, sidecars and events exactly as in ds004078.

The templates in ``data/`` are the real ds004078 sidecars (CC0); only the values that describe
our recordings are changed. Like the real files, MEG ``events.tsv``/``channels.tsv`` and
``participants.tsv`` start with a UTF-8 byte-order mark.
"""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.io import wavfile

from .config import (
    FMRI_AUDIO_ONSET,
    HURRYUP_DELAY,
    HURRYUP_DURATION,
    MEG_SFREQ,
    TR,
    Coupling,
    RunPlan,
    SynthConfig,
    data_file,
    read_tsv,
)
from .fmri import SHOT_TIMES, slice_times
from .meg import BEG, END, MegTiming, lowpass
from .sources import band_noise

BOM = "\ufeff"
TASK = "RDR"
AUDIO_SFREQ = 16000  # Hz


def run_stem(subject: str, run: int) -> str:
    """``sub-XX_task-RDR_run-N`` (runs are not zero-padded in ds004078)."""
    return f"sub-{subject}_task-{TASK}_run-{run}"


def meg_dir(root: Path, subject: str) -> Path:
    """``root/sub-XX/meg``."""
    return root / f"sub-{subject}" / "meg"


def func_dir(root: Path, subject: str) -> Path:
    """``root/sub-XX/func``."""
    return root / f"sub-{subject}" / "func"


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented JSON."""
    path.write_text(json.dumps(obj, indent=4) + "\n", encoding="utf-8")


def write_tsv(path: Path, header: list[str], rows: list[list[object]], bom: bool = False) -> None:
    """Write a BIDS TSV (``n/a`` for missing values)."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text((BOM if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def template(name: str) -> dict:
    """A real ds004078 sidecar (``reference/ds004078``) as a dict."""
    return json.loads(data_file(name).read_text(encoding="utf-8"))


def write_top_level(root: Path, config: SynthConfig) -> None:
    """dataset_description.json, participants.tsv/json and README of the raw dataset."""
    real = template("ds004078_description.json")
    write_json(root / "dataset_description.json", {
        "Name": "Synthetic SMN4Lang-like dataset (meg2fmri synth; not real recordings)",
        "BIDSVersion": real["BIDSVersion"],
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["meg2fmri synth generator"],
        "GeneratedBy": [{"Name": "meg2fmri synth", "Version": version("meg2fmri")}],
        "SourceDatasets": [{"DOI": real["DatasetDOI"], "URL": "https://openneuro.org/datasets/ds004078"}],
    })
    people = {row["participant_id"]: row for row in read_tsv("participants.tsv")}
    rows = [[f"sub-{s}", people[f"sub-{s}"]["age"], people[f"sub-{s}"]["sex"], people[f"sub-{s}"]["hand"]]
            for s in config.subjects]
    write_tsv(root / "participants.tsv", ["participant_id", "age", "sex", "hand"], rows, bom=True)
    shutil.copyfile(data_file("participants.json"), root / "participants.json")
    (root / "README").write_text(readme_text(config), encoding="utf-8")
    image_dir = root / "stimuli" / "images"
    image_dir.mkdir(parents=True)
    image = Image.new("L", (320, 80), 0)
    ImageDraw.Draw(image).text((60, 30), "Please answer the questions", fill=255)
    image.save(image_dir / "hurryup.png")


def readme_text(config: SynthConfig) -> str:
    """The dataset README: what is synthetic, how it was made, where the truth is."""
    c: Coupling = config.coupling
    return f"""#### Overview

SYNTHETIC data written by `meg2fmri synth` (preset `{config.preset}`, seed {config.seed}). It copies
the layout, file names, channels, sidecars and event timing of SMN4Lang (OpenNeuro ds004078) so
that code written for the real dataset reads it unchanged. It contains no real recordings.

#### Generative model (ground truth in derivatives/synth/)

Each story N (run N) has {c.n_latent} latent sources shared by every subject and both modalities
({c.n_sources} seen by MEG and BOLD, {c.hidden_sources} driving BOLD only, {c.meg_only_sources} seen by
the MEG only): source = envelope x carrier ({c.carrier_band[0]:g}-{c.carrier_band[1]:g} Hz) + slow
field. MEG = per-subject sensor mixing (group pattern + {c.subject_variability:.0%} perturbation) of the
sources + correlated brain background + sensor noise + {c.line_freq:g} Hz mains; stimulus RMS is
{c.snr:g} x the noise RMS on the best channel. BOLD = baseline x (1 + maps x HRF * drive + drift +
physiological noise) + thermal noise, with drive = {c.power_weight:g} x band power +
{1 - c.power_weight:g} x slow field, an HRF peaking {c.hrf_peak[0]:g}-{c.hrf_peak[1]:g} s per subject,
{c.bold_percent:g}% signal change at a map's peak, temporal SNR {c.tsnr:g} ({c.physio_share:.0%} of
the noise variance physiological: {c.physio}); response maps: {c.maps}. {c.auditory_sources} of the
shared sources follow the story's sound (stimuli/audio) directly; the MEG sees their phase-locked
envelope following (weight {c.evoked_weight:g}) and an alpha rhythm (weight {c.alpha_weight:g}) that
falls with each source's activity (exponent {c.alpha_suppression:g}).

#### Usage Notes (as in the real dataset)

For the MEG data of sub-08_run-16 and sub-09_run-7, the stimuli-starting triggers were not
recorded due to technical problems. The starting time can be computed by subtracting the stimuli
duration from the time point of the ending trigger.
{"These two runs are reproduced here (synth --defects)." if config.defects else ""}
"""


def write_subject_sidecars(root: Path, subject: str) -> None:
    """A subject's folders and its MEG ``_coordsystem.json`` (from ds004078's)."""
    meg_dir(root, subject).mkdir(parents=True, exist_ok=True)
    func_dir(root, subject).mkdir(parents=True, exist_ok=True)
    write_json(meg_dir(root, subject) / f"sub-{subject}_coordsystem.json", template("coordsystem.json"))


def write_meg_sidecars(root: Path, plan: RunPlan, timing: MegTiming, coupling: Coupling,
                       sfreq: float = MEG_SFREQ) -> None:
    """A MEG run's ``_meg.json``, ``_channels.tsv`` and ``_events.tsv`` as ds004078 writes them."""
    stem = meg_dir(root, plan.subject) / run_stem(plan.subject, plan.run)
    sidecar = template("meg.json")
    sidecar["PowerLineFrequency"] = coupling.line_freq
    sidecar["RecordingDuration"] = round((timing.n_times - 1) / sfreq, 3)
    sidecar["ContinuousHeadLocalization"] = False  # no cHPI signals are simulated
    sidecar["DigitizedHeadPoints"] = False  # fiducials and HPI coils only
    if sfreq != MEG_SFREQ:
        sidecar["SamplingFrequency"] = sfreq
    write_json(Path(f"{stem}_meg.json"), sidecar)
    if sfreq == MEG_SFREQ:
        shutil.copyfile(data_file("channels.tsv"), f"{stem}_channels.tsv")
    else:  # the real table with this rate and its anti-alias low-pass
        table = read_tsv("channels.tsv")
        for row in table:
            row["sampling_frequency"], row["high_cutoff"] = f"{sfreq:g}", f"{lowpass(sfreq):.4g}"
        write_tsv(Path(f"{stem}_channels.tsv"), list(table[0]), [list(r.values()) for r in table], bom=True)
    rows = [[f"{onset:.3f}", "0.0", kind, value, int(round(onset * sfreq))]
            for onset, kind, value in ((timing.beg_trigger, "Beg", BEG), (timing.end_trigger, "End", END))]
    write_tsv(Path(f"{stem}_events.tsv"), ["onset", "duration", "trial_type", "value", "sample"],
              rows, bom=True)


def write_bold_sidecars(root: Path, plan: RunPlan, n_slices: int) -> None:
    """A BOLD run's ``_bold.json`` and ``_events.tsv`` as ds004078 writes them."""
    stem = func_dir(root, plan.subject) / run_stem(plan.subject, plan.run)
    sidecar = template("bold.json")
    sidecar["RepetitionTime"] = TR
    sidecar["SliceTiming"] = [float(t) for t in slice_times(n_slices)]
    sidecar["MultibandAccelerationFactor"] = -(-n_slices // len(SHOT_TIMES))
    sidecar["SeriesDescription"] = sidecar["ProtocolName"] = f"fMRI_run{plan.run}_AP"
    write_json(Path(f"{stem}_bold.json"), sidecar)
    hurry = FMRI_AUDIO_ONSET + plan.story_duration + HURRYUP_DELAY
    rows = [[f"{FMRI_AUDIO_ONSET:.6f}", f"{plan.story_duration:.6f}", f"audio/story_{plan.run}.wav"],
            [f"{hurry:.6f}", f"{HURRYUP_DURATION:.6f}", "images/hurryup.png"]]
    write_tsv(Path(f"{stem}_events.tsv"), ["onset", "duration", "stim_file"], rows)


def write_stimuli(root: Path, story: int, envelope: np.ndarray, seed: int) -> None:
    """``stimuli/audio/story_N.wav``, the story named in func events.tsv.

    The audio is speech-shaped noise (100-4000 Hz) whose loudness follows the story's mean source
    envelope, ``envelope`` being ``(n_sources, n_times)`` at ``MEG_SFREQ``.
    """
    audio_dir = root / "stimuli" / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4, story])
    n = int(envelope.shape[1] / MEG_SFREQ * AUDIO_SFREQ)
    loudness = np.interp(np.arange(n) / AUDIO_SFREQ, np.arange(envelope.shape[1]) / MEG_SFREQ,
                         envelope.mean(axis=0))
    carrier = band_noise(rng, 1, n, (100.0, 4000.0), AUDIO_SFREQ)[0]
    wave = 0.1 * loudness / loudness.max() * carrier
    wavfile.write(audio_dir / f"story_{story}.wav", AUDIO_SFREQ, (wave * 32767).astype(np.int16))
