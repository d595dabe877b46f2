"""``generate``: a new MEG recording in, a synthetic fMRI series out.

The recording goes through ingest's own code (``ingest.preprocess.preprocess_meg_file``: read once,
resample to 100 Hz, z-score each channel; ``ingest.pairing.meg_features``: the model's features over
its epochs), never a copy of it. Epochs start every TR (the model card's: the TR it was trained on)
from the story onset; the epoch starting at story time ``tau`` predicts the volume acquired at
``tau + lag`` (the model's lag), as ingest paired them. The output holds the model's predictions in
the units it was trained on: BOLD min-max normalised over a run to [0, 1] (a new subject's scanner
scale is unknown).

- volume targets: a 4D NIfTI on the training grid and affine, the voxels outside the training mask 0;
- slice targets: an ``S x S x 1 x T`` NIfTI (its affine places the resized slice in the training grid);
- parcel targets: a TSV time series, one column per atlas label (BIDS ``_timeseries.tsv``);

each with a JSON sidecar in the style of a BIDS derivative (``desc-meg2fmri`` in the default name:
sources, model, lag, features, timing) and a PNG montage.

The one place ``model/`` imports ``ingest/`` (upstream, as imports flow): a recording must go
through the very preprocessing the model was trained on.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from meg2fmri.ingest.pairing import PairingConfig, feature_names, meg_features
from meg2fmri.ingest.preprocess import MEG_SFREQ, preprocess_meg_file
from meg2fmri.shards.errors import InputError

from .checkpoint import ModelCard, load_checkpoint
from .configs import GenerateConfig
from .eval.figures import show_axial
from .nets import from_tanh
from .outputs import checkpoint_of, location, put_figure, put_json, put_nifti, put_text
from .train import generator_from_checkpoint


def load_model(path: str, storage_options: dict | None = None) -> tuple[dict, ModelCard, str]:
    """The checkpoint's state, card and URL (a folder, its ``checkpoint.pt``, or an ``s3://`` prefix)."""
    folder, name = checkpoint_of(path, storage_options)
    checkpoint = folder.url_of(name)
    digest: list[str] = []
    state, card = load_checkpoint(path, storage_options, digest=digest)
    state["sha256"] = digest[0]
    if not card.placement or not card.feature_names:
        raise InputError(f"{checkpoint}: trained before `generate` existed (no grid or feature names "
                         "saved); train it again")
    if card.pairing.get("pairing") == "paper":
        raise InputError(f"{checkpoint}: trained on --pairing paper (one pair per run, no time course); "
                         "generate needs a model trained on --pairing windows shards")
    return state, card, checkpoint


NOT_MEG_DATATYPES = ("func", "anat", "fmap", "dwi", "perf", "beh", "eeg", "ieeg", "pet", "nirs")


def read_events(path: Path):
    """A BIDS events.tsv with ``n/a`` read as missing (pandas), checked: it belongs to the MEG session
    (not the fMRI session's file of the same name) and its onsets are numbers."""
    import pandas as pd

    datatype = path.absolute().parent.name
    # (a file not named *_events.tsv has no BOLD namesake: the name itself must not count as one)
    bold_beside = path.name.endswith("_events.tsv") and any(
        path.with_name(path.name.removesuffix("_events.tsv") + suffix).exists()
        for suffix in ("_bold.nii.gz", "_bold.nii", "_bold.json"))
    if datatype in NOT_MEG_DATATYPES or bold_beside:
        meg_file = path.absolute().parent.parent / "meg" / path.name
        session = datatype if datatype in NOT_MEG_DATATYPES else "fMRI"
        raise InputError(f"--events {path}: this is the {session} "
                         f"session's events file (its onsets are in scanner time, not in the MEG file's); "
                         f"pass the MEG session's, e.g. {meg_file}")
    try:
        table = pd.read_csv(path, sep="\t", encoding="utf-8-sig", na_values=["n/a"], keep_default_na=False,
                            dtype=str)
    except FileNotFoundError:
        raise InputError(f"--events {path}: no such file") from None
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"--events {path}: not a readable TSV ({err})") from None
    if "onset" not in table.columns:
        raise InputError(f"--events {path}: no 'onset' column (BIDS events files need onset and duration)")
    for column in ("onset", "duration", "value"):
        if column in table.columns:
            numbers = pd.to_numeric(table[column], errors="coerce")
            bad = table[column].notna() & numbers.isna()
            if bad.any():
                row = int(bad.idxmax())
                raise InputError(f"--events {path}: row {row + 1} has {column} {table[column][row]!r}, not a "
                                 f"number or n/a; fix the file")
            table[column] = numbers
    if table["onset"].isna().any():
        raise InputError(f"--events {path}: row {int(table['onset'].isna().idxmax()) + 1} has onset n/a; "
                         "BIDS requires a numeric onset for every event")
    return table


def story_span(config: GenerateConfig, recording_s: float) -> tuple[float, float, str]:
    """(onset s from the file start, duration s, how it was found)."""
    if config.events is not None and (config.start is not None or config.stop is not None):
        raise InputError("give --events or --start/--stop, not both")
    if config.events is not None:
        events = Path(config.events)
        table = read_events(events)
        if "value" in table.columns:
            marks = {int(v): float(o) for v, o in zip(table["value"], table["onset"], strict=True)
                     if v in (1, 2)}
            if 1 in marks and 2 in marks:
                return marks[1], marks[2] - marks[1], f"{events.name}: Beg (1) to End (2)"
        if "duration" in table.columns:
            timed = table[table["duration"].fillna(0) > 0]
            if len(timed):
                first = timed.iloc[0]
                return float(first["onset"]), float(first["duration"]), f"{events.name}: first event"
        raise InputError(f"--events {events}: no Beg/End rows (value 1 and 2) and no row with a duration; "
                         "pass --start and --stop (s from the file start)")
    start = 0.0 if config.start is None else config.start
    stop = recording_s if config.stop is None else config.stop
    return start, stop - start, "--start/--stop" if config.start is not None or config.stop is not None \
        else "the whole recording"


def model_channels(names: list[str], kind: str) -> list[str]:
    """The channels, in the index's canonical order, of the feature ``names`` (``CH`` for mean features,
    ``CH:band`` for band power)."""
    if kind == "mean":
        return list(names)
    return list(dict.fromkeys(name.split(":", 1)[0] for name in names))


def recording_features(config: GenerateConfig, card: ModelCard) -> tuple[np.ndarray, dict]:
    """The model's input vectors ``(T, width)`` for every TR of the story, and the timing facts."""
    meg = preprocess_meg_file(config.meg, Path(str(config.meg)).name, None, onset=0.0,
                              storage_options=config.storage_options)
    samples = meg.data.shape[1]
    recording_s = samples / MEG_SFREQ
    onset, duration, how = story_span(config, recording_s)
    pairing, tr = card.pairing, card.tr
    length = round(pairing["epoch"] * MEG_SFREQ)
    if onset < 0 or onset + duration > recording_s + 1e-6 or duration < length / MEG_SFREQ:
        raise InputError(f"{config.meg}: the time range {onset:.2f}-{onset + duration:.2f} s ({how}) is "
                         f"outside the recording (0-{recording_s:.2f} s) or shorter than one "
                         f"{pairing['epoch']} s epoch; pass --start/--stop within it")
    kind, names = card.features, list(card.feature_names)
    used = [names[i] for i in card.feature_index]
    # band power is per channel: only the channels of the features used are needed; a mean feature is
    # z-scored across every channel of the training vector, so all of them enter each one
    needed = model_channels(names if kind == "mean" else used, kind)
    missing = [c for c in needed if c not in meg.ch_names]
    if missing:
        why = ("the model's mean features are z-scored across all {n} channels of its training vectors, so "
               "each one needs them all; train on --features bandpower shards (per-channel features, with "
               "--meg-only for the 306 MEG channels) to use recordings without them") if kind == "mean" else \
            ("use a recording with these channels, or a model trained without them (--meg-only reads the "
             "306 MEG channels only)")
        raise InputError(f"{config.meg}: the model reads {len(needed)} channels and {len(missing)} are not "
                         f"in this recording (e.g. {missing[:3]}); " + why.format(n=len(needed)))
    rows = [meg.ch_names.index(c) for c in needed]
    first = round(onset * MEG_SFREQ)
    starts = [first + round(i * tr * MEG_SFREQ) for i in range(int(duration // tr) + 1)
              if i * tr + length / MEG_SFREQ <= duration + 1e-9]
    starts = [s for s in starts if s + length <= samples]
    if pairing.get("fir_lags"):  # its bins end at each volume: the recording must hold them
        second, shift = round(MEG_SFREQ), round(pairing["lag"] * MEG_SFREQ)
        starts = [s for s in starts if s + shift <= samples]
        early = starts[0] + shift - pairing["fir_lags"] * second if starts else 0
        if early < 0:
            raise InputError(f"{config.meg}: the model reads the {pairing['fir_lags']} s of MEG before each "
                             f"volume, and the first volume's bins start {-early / MEG_SFREQ:.2f} s "
                             "before the recording; pass a later --start")
    scale, fir_lags = pairing.get("power", "log"), pairing.get("fir_lags", 0)
    features = meg_features(meg.data[rows], MEG_SFREQ, starts, length, kind, scale, fir_lags, pairing["lag"])
    names_of = PairingConfig(features=kind, power=scale, fir_lags=fir_lags)
    column = {name: i for i, name in enumerate(feature_names(names_of, needed))}
    timing = {"story_onset_s": onset, "story_duration_s": duration, "found_by": how,
              "epochs": len(starts), "epoch_s": pairing["epoch"], "lag_s": pairing["lag"], "tr_s": tr}
    return features[:, [column[name] for name in used]], timing


def predict(generator, features: np.ndarray, batch: int, progress: bool) -> np.ndarray:
    """The generator's predictions for ``features``, ``batch`` at a time."""
    out = []
    with torch.no_grad():
        for a in tqdm(range(0, len(features), batch), desc="generate", unit="batch", disable=not progress):
            pred = from_tanh(generator(torch.from_numpy(features[a:a + batch]))).clamp(0, 1)
            out.append((pred[:, 0] if pred.ndim == 4 else pred).numpy())  # slices: (B, 1, S, S)
    return np.concatenate(out)


DERIVATIVE = "derivatives/meg2fmri"


def package_version() -> str:
    """meg2fmri's installed version (``unknown`` in an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meg2fmri")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def is_file_name(out: str) -> bool:
    """Whether ``--out`` names a file (``.nii.gz``, ``.nii``, ``.tsv``) rather than a folder."""
    return out.endswith((".nii.gz", ".nii", ".tsv"))


def output_path(config: GenerateConfig, kind: str) -> tuple[str, str, str | None]:
    """``(folder, file name, derivatives root or None)`` of the output: ``--out FILE`` as given (the
    default: the FIF's name with ``_desc-meg2fmri_bold.nii.gz``, here); ``--out DIR``: a BIDS
    derivatives tree ``DIR/derivatives/meg2fmri/sub-XX/[ses-YY/]func/`` named from the FIF's entities."""
    import mne_bids

    fif_name = str(config.meg).rstrip("/").rsplit("/", 1)[-1]
    suffix = "_timeseries.tsv" if kind == "parcels" else "_bold.nii.gz"
    out = None if config.out is None else str(config.out)
    if out is None or is_file_name(out):
        path = out or fif_name.removesuffix(".fif").removesuffix("_meg") + "_desc-meg2fmri" + suffix
        folder, _, name = path.rpartition("/")
        if kind == "parcels" and not name.endswith(".tsv"):
            name = name.removesuffix(".gz").removesuffix(".nii") + ".tsv"
        return folder or ".", name, None
    entities = mne_bids.get_entities_from_fname(fif_name, on_error="ignore")
    if not entities.get("subject"):
        raise InputError(f"--out {out}: a folder gets a BIDS derivatives tree named from the recording's "
                         f"BIDS entities, and {fif_name} names no subject (sub-XX_...); pass --out "
                         "FILE.nii.gz")
    parts = [f"sub-{entities['subject']}"] + [f"{key}-{entities[name]}" for name, key in
                                              (("session", "ses"), ("task", "task"), ("acquisition", "acq"),
                                               ("run", "run")) if entities.get(name)]
    folder = f"sub-{entities['subject']}" + (f"/ses-{entities['session']}" if entities.get("session") else "")
    root = f"{out.rstrip('/')}/{DERIVATIVE}"
    return f"{root}/{folder}/func", "_".join(parts) + "_desc-meg2fmri" + suffix, root


def dataset_description() -> dict:
    """The BIDS derivatives' ``dataset_description.json`` of generated series."""
    return {"Name": "meg2fmri synthetic BOLD", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "meg2fmri", "Version": package_version(),
                             "Description": "generate: synthetic BOLD predicted from MEG by a trained model",
                             "CodeURL": "https://pypi.org/project/meg2fmri/"}]}


def series_image(pred: np.ndarray, placement: dict, tr: float) -> nib.Nifti1Image:
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
    img.header.set_zooms((*img.header.get_zooms()[:3], tr))
    img.set_sform(affine, code=2)
    img.set_qform(affine, code=2)
    return img


def montage(pred: np.ndarray, placement: dict, tr: float, out, rel: str, title: str) -> None:
    """Eight frames evenly spaced in time (slice targets) or the middle axial slice of eight frames'
    change from the series mean (volume targets); a line plot for parcels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = np.linspace(0, len(pred) - 1, min(8, len(pred))).astype(int)
    if placement["kind"] == "parcels":
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.plot(np.arange(len(pred)) * tr, pred)
        ax.set(xlabel="s after the first volume", ylabel="normalised BOLD", title=title)
    else:
        fig, axes = plt.subplots(1, len(frames), figsize=(2 * len(frames) + 1, 2.6), squeeze=False,
                                 layout="constrained")
        if placement["kind"] == "volume":
            img = series_image(pred, placement, tr).get_fdata()
            z = img.shape[2] // 2
            images = [img[:, :, z, t] - img[:, :, z].mean(axis=-1) for t in frames]
        else:
            images = [pred[t] - pred.mean(axis=0) for t in frames]
        peak = max(float(np.abs(images).max()), 1e-9)
        for col, (ax, image, t) in enumerate(zip(axes[0], images, frames, strict=True)):
            shown = show_axial(ax, image, placement.get("affine"), labels=col == 0, cmap="RdBu_r",
                               vmin=-peak, vmax=peak)
            ax.set_title(f"{t * tr:.1f} s", fontsize=8)
        fig.colorbar(shown, ax=list(axes[0]), shrink=0.7, label="change from the series mean")
        fig.suptitle(title, fontsize=9)
    put_figure(out, rel, fig, dpi=80, bbox_inches="tight")
    plt.close(fig)


def generate(config: GenerateConfig) -> dict:
    """Write the synthetic series, its sidecar and montage; return the sidecar. The model, the output's
    place and the recording's time range are checked before the recording is read."""
    state, card, checkpoint = load_model(config.model, config.storage_options)
    placement = card.placement
    folder, name, root = output_path(config, placement["kind"])
    writing = {k: v for k, v in config.storage_options.items() if k != "anon"}  # outputs are signed
    out = location(folder, writing if folder.startswith("s3://") else None)
    out.check_writable()
    if config.events is not None:  # before the recording is read: the right file, readable
        story_span(config, float("inf"))
    features, timing = recording_features(config, card)
    pred = predict(generator_from_checkpoint(state, card), features, config.batch_size, config.progress)
    stem = name.removesuffix(".gz").removesuffix(".nii").removesuffix(".tsv")
    if placement["kind"] == "parcels":
        header = "\t".join(f"label-{label}" for label in placement["labels"])
        put_text(out, name, "\n".join([header, *("\t".join(f"{v:.6f}" for v in row) for row in pred)]) + "\n")
    else:
        put_nifti(out, name, series_image(pred, placement, card.tr))
    sidecar = {
        "Description": "Synthetic BOLD predicted from MEG by meg2fmri (not a recording). Values are BOLD "
                       "min-max normalised over a run to [0, 1], the units the model was trained on.",
        "GeneratedBy": [{"Name": "meg2fmri", "Version": package_version(),
                         "Description": "generate (model/generate.py)"}],
        "Sources": [str(config.meg)],
        "RepetitionTime": card.tr,
        "Model": {"checkpoint": checkpoint, "sha256": state["sha256"],
                  "variant": state["config"]["variant"], "step": state["step"],
                  "target": card.to_dict()["target"],
                  "head": card.head, "trained_on": state["config"]["shards"]},
        "Features": {"kind": card.features, "width": len(card.feature_names),
                     "used": card.width, "epoch_s": timing["epoch_s"]},
        "Lag": timing["lag_s"],
        "Timing": {**timing, "first_volume_story_time_s": timing["lag_s"],
                   "first_volume_file_time_s": timing["story_onset_s"] + timing["lag_s"],
                   "volumes": len(pred),
                   "rule": "volume i is predicted from the epoch starting i * TR after the story onset "
                           "and lies Lag s after it"},
    }
    put_json(out, f"{stem}.json", sidecar)
    montage(pred, placement, card.tr, out, f"{stem}.png", f"{name}: {len(pred)} volumes")
    if root is not None:
        put_json(location(root, out.storage_options), "dataset_description.json", dataset_description())
    sidecar["outputs"] = [out.url_of(n) for n in (name, f"{stem}.json", f"{stem}.png")]
    return sidecar
