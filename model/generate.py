"""``generate``: a new MEG recording in, a synthetic fMRI series out.

The recording goes through ingest's own code (``ingest.preprocess.preprocess_meg_file``: read once,
resample to 100 Hz, z-score each channel; ``ingest.pairing.meg_features``: the model's features over
its epochs), never a copy of it. Epochs start every TR (0.71 s) from the story onset; the epoch
starting at story time ``tau`` predicts the volume acquired at ``tau + lag`` (the model's lag), as
ingest paired them. The output holds the model's predictions in the units it was trained on: BOLD
min-max normalised over a run to [0, 1] (a new subject's scanner scale is unknown).

- volume targets: a 4D NIfTI on the training grid and affine, the voxels outside the training mask 0;
- slice targets: an ``S x S x 1 x T`` NIfTI (its affine places the resized slice in the training grid);
- parcel targets: a TSV time series, one column per atlas label (BIDS ``_timeseries.tsv``);

each with a JSON sidecar in the style of a BIDS derivative (``desc-meg2fmri`` in the default name:
sources, model, lag, features, timing) and a PNG montage.

The one place ``model/`` imports ``ingest/`` (upstream, as imports flow): a recording must go
through the very preprocessing the model was trained on.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from meg2fmri.ingest.pairing import BANDS, meg_features
from meg2fmri.ingest.preprocess import MEG_SFREQ, preprocess_meg_file
from meg2fmri.shards.errors import InputError

from .nets import from_tanh
from .train import CHECKPOINT, generator_from_checkpoint

TR = 0.71  # s, ds004078's repetition time: the output's sampling


@dataclass(frozen=True)
class GenerateConfig:
    model: str  # a train --out folder (or its checkpoint.pt)
    meg: str  # a FIF path or s3:// URL
    out: Path | None = None  # default: the FIF's name with desc-meg2fmri_bold.nii.gz, here
    events: Path | None = None  # BIDS events.tsv of the recording (Beg/End rows, or onset + duration)
    start: float | None = None  # s from the file start
    stop: float | None = None
    storage_options: dict = field(default_factory=dict)
    batch_size: int = 256
    progress: bool = True


def load_model(path: str) -> tuple[dict, Path]:
    folder = Path(path)
    checkpoint = folder if folder.suffix == ".pt" else folder / CHECKPOINT
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise InputError(f"--model {path}: no {CHECKPOINT} there; pass a `train --out` folder") from None
    model = state["model"]
    if "placement" not in model or "feature_names" not in model:
        raise InputError(f"{checkpoint}: trained before `generate` existed (no grid or feature names "
                         "saved); train it again")
    if model["pairing"].get("pairing") == "paper":
        raise InputError(f"{checkpoint}: trained on --pairing paper (one pair per run, no time course); "
                         "generate needs a model trained on --pairing windows shards")
    return state, checkpoint


def story_span(config: GenerateConfig, recording_s: float) -> tuple[float, float, str]:
    """(onset s from the file start, duration s, how it was found)."""
    if config.events is not None and (config.start is not None or config.stop is not None):
        raise InputError("give --events or --start/--stop, not both")
    if config.events is not None:
        try:
            with open(config.events, encoding="utf-8-sig", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        except FileNotFoundError:
            raise InputError(f"--events {config.events}: no such file") from None
        marks = {r.get("value"): float(r["onset"]) for r in rows if r.get("value") in ("1", "2")}
        if "1" in marks and "2" in marks:
            return marks["1"], marks["2"] - marks["1"], f"{config.events.name}: Beg (1) to End (2)"
        timed = [r for r in rows if float(r.get("duration") or 0) > 0]
        if not timed:
            raise InputError(f"--events {config.events}: no Beg/End rows (value 1 and 2) and no row with a "
                             "duration; pass --start and --stop (s from the file start)")
        return float(timed[0]["onset"]), float(timed[0]["duration"]), f"{config.events.name}: first event"
    start = 0.0 if config.start is None else config.start
    stop = recording_s if config.stop is None else config.stop
    return start, stop - start, "--start/--stop" if config.start is not None or config.stop is not None \
        else "the whole recording"


def model_channels(names: list[str], kind: str) -> list[str]:
    """The channels, in order, whose features the model reads (its training file's order)."""
    if kind == "mean":
        return list(names)
    bands = list(BANDS)
    per_band = len(names) // len(bands)
    return [name.rsplit(":", 1)[0] for name in names[:per_band]]


def recording_features(config: GenerateConfig, model: dict) -> tuple[np.ndarray, dict]:
    """The model's input vectors ``(T, width)`` for every TR of the story, and the timing facts."""
    meg = preprocess_meg_file(config.meg, Path(str(config.meg)).name, None, onset=0.0,
                              storage_options=config.storage_options)
    samples = meg.data.shape[1]
    recording_s = samples / MEG_SFREQ
    onset, duration, how = story_span(config, recording_s)
    pairing = model["pairing"]
    length = round(pairing["epoch"] * MEG_SFREQ)
    if onset < 0 or onset + duration > recording_s + 1e-6 or duration < length / MEG_SFREQ:
        raise InputError(f"{config.meg}: the time range {onset:.2f}-{onset + duration:.2f} s ({how}) is "
                         f"outside the recording (0-{recording_s:.2f} s) or shorter than one "
                         f"{pairing['epoch']} s epoch; pass --start/--stop within it")
    wanted = model_channels(model["feature_names"], model["features"])
    missing = [c for c in wanted if c not in meg.ch_names]
    if missing:
        raise InputError(f"{config.meg}: the model reads {len(wanted)} channels and {len(missing)} are not "
                         f"in "
                         f"this recording (e.g. {missing[:3]}); use a recording with the channel set the "
                         "model was trained on (Neuromag 306 + 22), or train with --meg-only")
    rows = [meg.ch_names.index(c) for c in wanted]
    first = round(onset * MEG_SFREQ)
    starts = [first + round(i * TR * MEG_SFREQ) for i in range(int(duration // TR) + 1)
              if i * TR + length / MEG_SFREQ <= duration + 1e-9]
    starts = [s for s in starts if s + length <= samples]
    features = meg_features(meg.data[rows], MEG_SFREQ, starts, length, model["features"])
    if features.shape[1] != len(model["feature_names"]):
        raise InputError(f"{config.meg}: the recording gives {features.shape[1]} features, the model was "
                         f"trained on {len(model['feature_names'])}")
    timing = {"story_onset_s": onset, "story_duration_s": duration, "found_by": how,
              "epochs": len(starts), "epoch_s": pairing["epoch"], "lag_s": pairing["lag"]}
    return features[:, model["feature_index"]], timing


def predict(generator, features: np.ndarray, batch: int, progress: bool) -> np.ndarray:
    out = []
    with torch.no_grad():
        for a in tqdm(range(0, len(features), batch), desc="generate", unit="batch", disable=not progress):
            pred = from_tanh(generator(torch.from_numpy(features[a:a + batch]))).clamp(0, 1)
            out.append((pred[:, 0] if pred.ndim == 4 else pred).numpy())  # slices: (B, 1, S, S)
    return np.concatenate(out)


def default_out(meg: str) -> Path:
    name = Path(str(meg)).name
    stem = name.removesuffix(".fif").removesuffix("_meg")
    return Path(f"{stem}_desc-meg2fmri_bold.nii.gz")


def series_image(pred: np.ndarray, placement: dict) -> nib.Nifti1Image:
    """The predictions as a 4D NIfTI on the training grid (volume) or in its slice plane (slice)."""
    if placement["kind"] == "volume":
        mask = np.unpackbits(placement["mask_bits"])[:int(np.prod(placement["grid"]))]
        mask = mask.reshape(placement["grid"]).astype(bool)
        data = np.zeros((*mask.shape, len(pred)), dtype=np.float32)
        data[mask] = pred.T
        affine = np.array(placement["affine"])
    else:
        size = placement["shape"][0]
        data = pred[:, :, :, None].transpose(2, 1, 3, 0).astype(np.float32)  # (t, j, i) -> (i, j, 1, t)
        affine = np.eye(4)
        if "affine" in placement:  # voxel (a, b, 0) of the resized slice -> voxel of the grid -> mm
            ni, nj = placement["grid"][0] / size, placement["grid"][1] / size
            to_grid = np.array([[ni, 0, 0, (ni - 1) / 2], [0, nj, 0, (nj - 1) / 2],
                                [0, 0, 1, placement["slice"]], [0, 0, 0, 1]])
            affine = np.array(placement["affine"]) @ to_grid
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((*img.header.get_zooms()[:3], TR))
    img.set_sform(affine, code=2)
    img.set_qform(affine, code=2)
    return img


def montage(pred: np.ndarray, placement: dict, path: Path, title: str) -> None:
    """Eight frames evenly spaced in time (slice targets) or the middle axial slice of eight frames'
    change from the series mean (volume targets); a line plot for parcels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = np.linspace(0, len(pred) - 1, min(8, len(pred))).astype(int)
    if placement["kind"] == "parcels":
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.plot(np.arange(len(pred)) * TR, pred)
        ax.set(xlabel="s after the first volume", ylabel="normalised BOLD", title=title)
    else:
        fig, axes = plt.subplots(1, len(frames), figsize=(2 * len(frames), 2.4), squeeze=False)
        if placement["kind"] == "volume":
            img = series_image(pred, placement).get_fdata()
            z = img.shape[2] // 2
            images = [img[:, :, z, t] - img[:, :, z].mean(axis=-1) for t in frames]
        else:
            images = [pred[t] - pred.mean(axis=0) for t in frames]
        peak = max(float(np.abs(images).max()), 1e-9)
        for ax, image, t in zip(axes[0], images, frames, strict=True):
            ax.imshow(image.T if placement["kind"] == "volume" else image, origin="lower", cmap="RdBu_r",
                      vmin=-peak, vmax=peak)
            ax.set_title(f"{t * TR:.1f} s", fontsize=8)
            ax.axis("off")
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def generate(config: GenerateConfig) -> dict:
    """Write the synthetic series, its sidecar and montage; return the sidecar."""
    state, checkpoint = load_model(config.model)
    model = state["model"]
    features, timing = recording_features(config, model)
    pred = predict(generator_from_checkpoint(state), features, config.batch_size, config.progress)
    out = Path(config.out) if config.out is not None else default_out(config.meg)
    placement = model["placement"]
    stem = out.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".tsv")
    out.parent.mkdir(parents=True, exist_ok=True)
    if placement["kind"] == "parcels":
        out = out.with_name(stem + ".tsv") if not out.name.endswith(".tsv") else out
        with open(out, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow([f"label-{label}" for label in placement["labels"]])
            writer.writerows([[f"{v:.6f}" for v in row] for row in pred])
    else:
        nib.save(series_image(pred, placement), out)
    sidecar = {
        "Description": "Synthetic BOLD predicted from MEG by meg2fmri (not a recording). Values are BOLD "
                       "min-max normalised over a run to [0, 1], the units the model was trained on.",
        "GeneratedBy": [{"Name": "meg2fmri generate", "Description": "model/generate.py"}],
        "Sources": [str(config.meg)],
        "RepetitionTime": TR,
        "Model": {"checkpoint": str(checkpoint),
                  "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
                  "variant": state["config"]["variant"], "step": state["step"], "target": model["target"],
                  "head": model.get("head"), "trained_on": state["config"]["shards"]},
        "Features": {"kind": model["features"], "width": len(model["feature_names"]),
                     "used": len(model["feature_index"]), "epoch_s": timing["epoch_s"]},
        "Lag": timing["lag_s"],
        "Timing": {**timing, "first_volume_story_time_s": timing["lag_s"],
                   "first_volume_file_time_s": timing["story_onset_s"] + timing["lag_s"],
                   "volumes": len(pred),
                   "rule": "volume i is predicted from the epoch starting i * TR after the story onset "
                           "and lies Lag s after it"},
    }
    (out.parent / f"{stem}.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    montage(pred, placement, out.parent / f"{stem}.png", f"{out.name}: {len(pred)} volumes")
    sidecar["outputs"] = [str(out), str(out.parent / f"{stem}.json"), str(out.parent / f"{stem}.png")]
    return sidecar
