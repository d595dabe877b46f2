"""Score the trained models and the baselines on every evaluation set, with run-level statistics.

Sets (``shards.split``): ``test`` (held-out subjects x held-out stories: the headline),
``seen_story`` (held-out subjects x training stories: ``story_clock`` scores here) and
``seen_subject`` (training subjects x held-out stories). Rows: each trained variant found under
``--runs`` (``cgan``, ``no_adversarial``, ``shuffled``) and ``--extra`` run; ``mean_image``;
``ridge`` and ``stimulus`` (``baselines``); ``story_clock`` where it exists; on synthetic data
``oracle`` and ``oracle_signal``. Everything fitted or chosen comes from the training set only.

Per held-out run: MSE and SSIM (whole slice and inside the brain mask), voxelwise r (per mask pixel,
Pearson r over the run's samples in time order, averaged) and change R^2 (1 - SSE / SS of each
pixel's change from its run mean, averaged). A row is the mean over runs; intervals resample whole
runs (``stats.cluster_bootstrap``), paired between methods; voxel r gets a circular-shift p-value
(``stats.shift_null``) and its fraction of the ceiling (``oracle`` where given, else the
inter-subject correlation of the same story). Predictions are written per set and method as npz.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from meg2fmri.loader import ShardLoader, StoreConfig, StreamConfig
from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import EmptySplitError, InputError
from meg2fmri.shards.format import TargetLayout
from meg2fmri.shards.split import EVALUATION_SETS

from ..checkpoint import load_checkpoint
from ..configs import VARIANTS, EvalConfig
from ..nets import from_tanh
from ..outputs import CHECKPOINT, location, put_json, put_nifti, put_npz, put_text
from ..train import generator_from_checkpoint
from . import baselines, figures, report, volume_maps
from .metrics import SSIM_SETTINGS, per_image, voxel_r
from .roi import training_roi
from .stats import cluster_bootstrap, resampling_unit, shift_null

HEADLINE = "cgan"  # the project's model, named before any result was seen (every row is reported)
# rows that are not MEG models (shuffled sees the MEG but not its pairing with the image)
NOT_MEG_MODELS = {"mean_image", "shuffled", "stimulus", "story_clock", "oracle", "oracle_signal"}
COMPARATORS = {"mean_image", "shuffled", "stimulus", "story_clock", "oracle_signal"}
RUN_METRICS = ("voxel_r", "change_r2", "mse", "ssim", "mse_mask", "ssim_mask")

log = logging.getLogger("meg2fmri")


@dataclass
class EvalSet:
    """One evaluation set in memory: MEG, targets, metadata, and its runs' positions."""
    name: str
    meg: np.ndarray  # (n, width)
    fmri: np.ndarray  # (n, S, S) slices or (n, values) voxels / parcels, float32
    meta: list[dict]
    by_run: list[np.ndarray]  # sample positions of each (subject, run), in time order
    run_subjects: np.ndarray  # (runs,)
    run_stories: np.ndarray  # (runs,)


def load_split(config: EvalConfig, split: str) -> tuple[EvalSet | None, object]:
    """One set, whole (rank 0 of 1 even under torchrun), or None if the index has no samples in it."""
    try:
        loader = ShardLoader(
            config.shards,
            split,
            StreamConfig(batch_size=512, shuffle=False, meta=True),
            StoreConfig(storage_options=config.storage_options or {}),
            device="cpu",
            rank=0,
            world_size=1,
        )
    except EmptySplitError:
        return None, None
    meg, fmri, meta = [], [], []
    for batch in loader:
        meg.append(batch["meg"].numpy())
        fmri.append((batch["fmri"][:, 0] if batch["fmri"].ndim == 4 else batch["fmri"]).float().numpy())
        meta += batch["meta"]
    by_run = run_groups(meta)
    return EvalSet(
        split,
        np.concatenate(meg),
        np.concatenate(fmri),
        meta,
        by_run,
        np.array([meta[g[0]]["subject"] for g in by_run]),
        np.array([meta[g[0]]["run"] for g in by_run]),
    ), loader.index


def run_groups(meta: list[dict]) -> list[np.ndarray]:
    """Sample positions of each (subject, run), in time order."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for i, m in enumerate(meta):
        groups.setdefault((m["subject"], m["run"]), []).append((m["fmri_volume"], i))
    return [np.array([i for _, i in sorted(v)]) for _, v in sorted(groups.items())]


def generator_predictions(run: str, meg: np.ndarray, width: int, target: TargetLayout,
                          storage_options: dict | None = None) -> np.ndarray:
    """A trained model's predictions ``(n, *target shape)`` in [0, 1] for the set's MEG."""
    state, card = load_checkpoint(run, storage_options, option="--runs")
    keep = list(card.feature_index)
    if tuple(card.target.shape) != tuple(target.shape) or max(keep) >= width:
        raise InputError(
            f"{run}/{CHECKPOINT}: trained on {card.width} features x {card.target.kind} "
            f"{list(card.target.shape)}, the shards give {width} x {target.kind} {list(target.shape)}"
        )
    generator = generator_from_checkpoint(state, card)
    with torch.no_grad():
        out = from_tanh(generator(torch.from_numpy(meg[:, keep]))).clamp(0, 1)
    return (out[:, 0] if target.kind == "slice" else out).numpy()


def model_runs(config: EvalConfig) -> dict[str, str]:
    """Each scored model's run folder (local or ``s3://``), by row name; none without ``runs``."""
    if config.runs is None:
        return {}
    runs = location(config.runs, config.storage_options)
    found = {v: runs.url_of(v) for v in VARIANTS if runs.exists(f"{v}/{CHECKPOINT}")}
    for name, folder in config.extra:  # e.g. a cGAN trained on --pairing paper shards
        if name in found or not location(folder, config.storage_options).exists(CHECKPOINT):
            raise InputError(f"--extra {name}={folder}: the name is taken, or {CHECKPOINT} is missing there")
        found[name] = folder
    if HEADLINE not in found:
        raise InputError(
            f"--runs {runs.url_of(HEADLINE)}/{CHECKPOINT}: no trained cGAN; run `train --out "
            f"{runs.url_of(HEADLINE)}` first"
        )
    return found


def check_inputs(config: EvalConfig) -> None:
    """Everything that can be checked before the sets are read: the output can be written, the models,
    the oracle and the story audio exist."""
    config.output().check_writable()
    model_runs(config)
    if config.oracle is not None and not Path(config.oracle).is_file():
        raise InputError(f"--oracle {config.oracle}: no such file; write it with `meg2fmri oracle`")
    if config.roi is not None and not Path(config.roi).is_file():
        raise InputError(f"--roi {config.roi}: no such file; give the roi.npz an evaluation wrote")
    if config.bids_root is not None and not (Path(config.bids_root) / "stimuli" / "audio").is_dir():
        raise InputError(f"--bids-root {config.bids_root}: no stimuli/audio/ folder (the stimulus baseline "
                         "reads story_N.wav there); pass the BIDS root, or drop --bids-root to skip the row")


def oracle_predictions(path: Path, meta: list[dict]) -> np.ndarray:
    """The oracle's images in the samples' order (matched by key)."""
    with np.load(path) as data:
        images = dict(zip(data["keys"].tolist(), data["images"], strict=True))
    missing = [m["key"] for m in meta if m["key"] not in images]
    if missing:
        raise InputError(
            f"{path}: no oracle image for {len(missing)} samples (e.g. {missing[0]}); "
            "write it with `meg2fmri oracle` from these shards"
        )
    return np.stack([images[m["key"]] for m in meta])


def oracle_signal(oracle: np.ndarray, mean_image: np.ndarray, by_run: list[np.ndarray]) -> np.ndarray:
    """The mean training image plus the true signal (each run's oracle images minus their mean): the
    ceiling of a model that knows the MEG-driven signal exactly but not the subject's anatomy."""
    return np.clip(mean_image + figures.run_changes(oracle, by_run), 0, 1).astype(oracle.dtype)


def predict(
    config: EvalConfig, train: EvalSet, sets: list[EvalSet], mean_image: np.ndarray, target: TargetLayout
) -> tuple[dict, dict]:
    """``{set: {method: (n, *target shape)}}`` and what the fitted baselines chose."""
    width = train.meg.shape[1]
    models = model_runs(config)
    chosen: dict = {"ridge": None, "stimulus": None}

    def fitted(name: str, features: np.ndarray) -> baselines.RidgeBaseline | None:
        """The baseline fitted on the training set, or None (and why, in ``chosen``) if it cannot be."""
        try:
            model = baselines.fit_ridge(features, train.fmri, train.meta, mean_image)
        except InputError as err:  # e.g. a partial dataset left one training run: no CV is possible
            chosen[name] = {"not_fitted": str(err)}
            return None
        chosen[name] = model.summary()
        return model

    ridge = fitted("ridge", train.meg)
    stimulus, envelopes = None, {}
    if config.bids_root is not None:
        stories = {m["run"] for s in [train, *sets] for m in s.meta}
        envelopes = baselines.story_envelopes(Path(config.bids_root), stories)
        stimulus = fitted("stimulus", baselines.stimulus_features(envelopes, train.meta))
        if stimulus is not None:
            chosen["stimulus"] |= {"features": "audio RMS envelope, 1-s bins lagged 0-15 s"}
    out: dict[str, dict[str, np.ndarray]] = {}
    for ev in sets:
        pred = {name: generator_predictions(folder, ev.meg, width, target, config.storage_options)
                for name, folder in models.items()}
        pred["mean_image"] = np.broadcast_to(mean_image, ev.fmri.shape).copy()
        if ridge is not None:
            pred["ridge"] = ridge.predict(ev.meg)
        if stimulus is not None:
            pred["stimulus"] = stimulus.predict(baselines.stimulus_features(envelopes, ev.meta))
        clock = baselines.story_clock(train.fmri, train.meta, ev.meta, mean_image)
        if clock is not None:
            pred["story_clock"] = clock
        if config.oracle is not None:
            pred["oracle"] = oracle_predictions(Path(config.oracle), ev.meta)
            pred["oracle_signal"] = oracle_signal(pred["oracle"], mean_image, ev.by_run)
        out[ev.name] = {k: v.astype(np.float32) for k, v in pred.items()}
    return out, chosen


def change_r2(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """1 - SSE / SS of each mask pixel's change from its run mean, averaged over pixels."""
    p, r = pred[:, mask].astype(np.float64), real[:, mask].astype(np.float64)
    p, r = p - p.mean(axis=0), r - r.mean(axis=0)
    ss = (r**2).sum(axis=0)
    return float(np.mean(np.where(ss > 0, 1 - ((r - p) ** 2).sum(axis=0) / np.where(ss > 0, ss, 1), 0.0)))


def constant_over_time(pred: np.ndarray, by_run: list[np.ndarray], tolerance: float = 1e-6) -> bool:
    """Whether every run's predictions are one image repeated (to ``tolerance`` in [0, 1] units)."""
    return all(np.ptp(pred[g], axis=0).max() <= tolerance for g in by_run if len(g) > 1)


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN if none (SSIM of voxel targets), without numpy's warning."""
    finite = np.asarray(values, dtype=np.float64)[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def run_scores(ev: EvalSet, pred: np.ndarray, mask: np.ndarray,
               roi: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-run values of every metric in ``RUN_METRICS``, ``{metric: (runs,)}`` (SSIM is for
    images: NaN for voxel and parcel targets), and ``roi_r`` (voxel r in the ROI) given one."""
    if ev.fmri.ndim == 2:
        err = ((pred.astype(np.float64) - ev.fmri) ** 2).mean(axis=1)
        images = {"mse": err, "mse_mask": err, "ssim": np.full(len(err), np.nan),
                  "ssim_mask": np.full(len(err), np.nan)}
    else:
        images = per_image(pred.astype(np.float64), ev.fmri.astype(np.float64), mask)
    out = {
        k: np.array([images[k][g].mean() for g in ev.by_run])
        for k in ("mse", "ssim", "mse_mask", "ssim_mask")
    }
    out["voxel_r"] = np.array(
        [voxel_r(pred[g], ev.fmri[g], mask) if len(g) > 1 else np.nan for g in ev.by_run]
    )
    out["change_r2"] = np.array(
        [change_r2(pred[g], ev.fmri[g], mask) if len(g) > 1 else np.nan for g in ev.by_run]
    )
    if roi is not None:
        out["roi_r"] = np.array([voxel_r(pred[g], ev.fmri[g], roi) if len(g) > 1 else np.nan
                                 for g in ev.by_run])
    return out


def isc_ceiling(ev: EvalSet, mask: np.ndarray) -> float:
    """Inter-subject correlation on the same story: each subject's pixel series (its run's samples
    in volume order) against the mean of the other subjects' at the same volumes, averaged over mask
    pixels, subjects and stories; NaN if no story has two subjects in the set."""
    values = []
    for story in np.unique(ev.run_stories):
        runs = [g for g, s in zip(ev.by_run, ev.run_stories, strict=True) if s == story]
        if len(runs) < 2:
            continue
        volumes = [np.array([ev.meta[i]["fmri_volume"] for i in g]) for g in runs]
        common = sorted(set.intersection(*(set(v.tolist()) for v in volumes)))
        if len(common) < 3:
            continue
        series = np.stack(
            [ev.fmri[g[np.searchsorted(v, common)]] for g, v in zip(runs, volumes, strict=True)]
        )
        for i in range(len(series)):
            others = np.delete(series, i, axis=0).mean(axis=0)
            values.append(voxel_r(others, series[i], mask))
    return float(np.mean(values)) if values else float("nan")


def score_set(
    ev: EvalSet,
    predictions: dict[str, np.ndarray],
    mask: np.ndarray,
    config: EvalConfig,
    rng: np.random.Generator,
    roi: np.ndarray | None = None,
) -> dict:
    """Every row's scores on one set: per-run metrics, intervals, the shift null, paired differences."""
    scores = {name: run_scores(ev, pred, mask, roi) for name, pred in predictions.items()}
    # the ROI's statistics draw from their own generator: the whole-mask figures stay as they were
    roi_rng = np.random.default_rng(config.seed + 1)
    if roi is not None:
        roi_ceiling = float(scores["oracle"]["roi_r"].mean()) if "oracle" in scores else isc_ceiling(ev, roi)
    spacing = (
        np.median(np.diff([ev.meta[i]["fmri_time_s"] for i in ev.by_run[0]])) if len(ev.by_run[0]) > 1 else 0
    )
    min_shift = max(1, math.ceil(config.min_shift_s / spacing)) if spacing > 0 else 1
    isc = isc_ceiling(ev, mask)
    ceiling = float(scores["oracle"]["voxel_r"].mean()) if "oracle" in scores else isc
    rows = []
    for name, pred in predictions.items():
        s = scores[name]
        null = shift_null(
            [pred[g][:, mask] for g in ev.by_run],
            [ev.fmri[g][:, mask] for g in ev.by_run],
            rng,
            config.null_draws,
            min_shift,
        )
        row = {
            "name": name,
            **{k: finite_mean(v) for k, v in s.items()},
            **{
                f"{k}_ci": cluster_bootstrap(s[k], ev.run_subjects, rng, config.bootstrap)
                for k in ("voxel_r", "mse", "ssim", "change_r2")
            },
            "voxel_r_p": null["p"],
            "voxel_r_null_95": null["null_95"],
            "voxel_r_of_ceiling": finite_mean(s["voxel_r"]) / ceiling if ceiling > 0 else float("nan"),
        }
        if roi is not None:
            roi_null = shift_null([pred[g][:, roi] for g in ev.by_run],
                                  [ev.fmri[g][:, roi] for g in ev.by_run], roi_rng, config.null_draws,
                                  min_shift)
            row |= {"roi_r": finite_mean(s["roi_r"]),
                    "roi_r_ci": cluster_bootstrap(s["roi_r"], ev.run_subjects, roi_rng, config.bootstrap),
                    "roi_r_p": roi_null["p"],
                    "roi_r_of_ceiling": (finite_mean(s["roi_r"]) / roi_ceiling if roi_ceiling > 0
                                         else float("nan"))}
        if name != "mean_image" and constant_over_time(pred, ev.by_run):
            row["degenerate"] = "its predictions do not change over time within any run (a constant image)"
        rows.append(row)

    def paired(a: str, b: str) -> dict:
        out = {
            k: cluster_bootstrap(scores[a][k] - scores[b][k], ev.run_subjects, rng, config.bootstrap)
            for k in ("voxel_r", "mse", "ssim", "mse_mask", "ssim_mask")
        }
        if roi is not None:
            out["roi_r"] = cluster_bootstrap(scores[a]["roi_r"] - scores[b]["roi_r"], ev.run_subjects,
                                             roi_rng, config.bootstrap)
        return out

    return {
        "samples": len(ev.meta),
        "runs": len(ev.by_run),
        "subjects": sorted(set(ev.run_subjects.tolist())),
        "stories": sorted({int(s) for s in ev.run_stories}),
        "resampling": resampling_unit(ev.run_subjects),
        "min_shift_samples": min_shift,
        "isc": isc,
        "ceiling": "oracle" if "oracle" in scores else "isc (inter-subject correlation, same story)",
        "roi_ceiling": roi_ceiling if roi is not None else None,
        "rows": rows,
        "per_run": {n: {k: v.tolist() for k, v in s.items()} for n, s in scores.items()},
        # every MEG model against every baseline and the other MEG models (run-level, paired)
        "paired_differences": {
            f"{a}-{b}": paired(a, b)
            for a in predictions if a not in NOT_MEG_MODELS
            for b in predictions if b != a and b in COMPARATORS | (set(predictions) - NOT_MEG_MODELS)
        },
        "paired_differences_minus_mean_image": {
            n: paired(n, "mean_image") for n in predictions if n != "mean_image"
        },
    }


def save_predictions(out: Location, ev: EvalSet, predictions: dict[str, np.ndarray]) -> None:
    """``predictions/SET/METHOD.npz``: keys, targets, predictions (float16 for voxel targets, as the
    shards store them: a whole-brain set is large)."""
    keys = np.array([m["key"] for m in ev.meta])
    dtype = np.float16 if ev.fmri.ndim == 2 and ev.fmri.shape[1] > 4096 else np.float32
    for name, pred in predictions.items():
        put_npz(out, f"predictions/{ev.name}/{name}.npz", keys=keys, targets=ev.fmri.astype(dtype),
                predictions=pred.astype(dtype))



def given_roi(path: Path, mask: np.ndarray, volume=None) -> tuple[np.ndarray, dict]:
    """The ROI of ``--roi``, checked against this target's shape and mask: an evaluation's roi.npz, or for
    volume targets its roi.nii.gz (``volume``: these shards' mask image), whose voxels are matched on the
    grid: a learning curve's training sets each have their own training mask."""
    if path.name.endswith((".nii", ".nii.gz")):
        if volume is None:
            raise InputError(f"--roi {path}: a NIfTI ROI is for volume targets; give the roi.npz of a slice "
                             "evaluation")
        image = nib.load(path)
        if image.shape != volume.shape or not np.allclose(image.affine, volume.affine, atol=1e-4):
            raise InputError(f"--roi {path}: its grid {image.shape} is not these shards' {volume.shape} (or "
                             "the affines differ)")
        inside = np.asarray(volume.dataobj) > 0
        chosen = np.asarray(image.dataobj) > 0
        roi = chosen[inside]
        return roi, {"rule": f"given: {path} (chosen there, on training data only; matched on the grid)",
                     "values": int(roi.sum()), "of": int(roi.size),
                     "outside_this_mask": int((chosen & ~inside).sum())}
    with np.load(path) as data:
        roi = data["roi"] if "roi" in data else None
    if roi is None or roi.dtype != bool or roi.shape != mask.shape:
        raise InputError(f"--roi {path}: expected an 'roi' boolean array of shape {mask.shape} (the roi.npz "
                         f"of an evaluation of the same target), got "
                         f"{None if roi is None else (roi.dtype, roi.shape)}")
    outside = int((roi & ~mask).sum())
    return roi & mask, {"rule": f"given: {path} (chosen there, on training data only)",
                        "values": int((roi & mask).sum()), "of": int(mask.sum()),
                        "outside_this_mask": outside}


def evaluation_settings(config: EvalConfig, index, mask: np.ndarray, chosen: dict, roi_choice: dict,
                        missing: list[str]) -> dict:
    """``results.json``'s ``settings``: how each figure was computed, what was chosen on training data."""
    target = index.target_layout
    return {
        "ssim": SSIM_SETTINGS,
        "images": "[0, 1], one data_range for every image",
        "mask": f"mean training image > {config.mask_fraction} x its max "
        f"({int(mask.sum())} of {mask.size} px)" if target.kind == "slice" else
        f"every {target.kind} value ({mask.size}; voxels are inside the training mask)",
        "headline": f"{HEADLINE} (named in advance; every MEG model is compared with every baseline)",
        "intervals": f"95% percentile bootstrap ({config.bootstrap}) of the mean over runs, resampling whole "
        "runs (subjects then runs with >= 3 subjects), paired between methods",
        "null": f"time shift (not circular: r over the overlapping samples) of each run's predictions "
        f"against its targets by >= {config.min_shift_s} s, {config.null_draws} draws; "
        "p = (1 + #null mean voxel r >= observed) / (1 + draws)",
        "voxel_r": "per mask pixel, Pearson r over time within each run, averaged over pixels then runs; a "
        "prediction constant over time scores 0",
        "choices": {
            "ridge": chosen["ridge"],
            "stimulus": chosen["stimulus"] or "not scored (needs --bids-root)",
            "story_clock": "training subjects' mean change at the same story and volume",
        },
        "split": index.split,
        "roi": roi_choice,
        "missing_runs": missing,
        "slice": index.config.get("slice_choice"),
        "oracle": "noise-free synth truth" if config.oracle else "not given (--oracle, synthetic data only)",
        "config": asdict(config) | {"storage_options": {}},
        "shards": config.shards,
        "extra": {name: folder for name, folder in config.extra},
    }


def evaluate(config: EvalConfig) -> dict:
    """Score every trained variant and baseline on every evaluation set; write results and figures."""
    check_inputs(config)
    train, index = load_split(config, "train")
    if train is None:
        raise InputError(f"{config.shards}: the index has no training samples")
    loaded = [load_split(config, name)[0] for name in EVALUATION_SETS]
    sets = [ev for ev in loaded if ev is not None]
    if not sets:
        raise InputError(
            f"{config.shards}: the index has no evaluation samples ({', '.join(EVALUATION_SETS)})"
        )
    mean_image = train.fmri.mean(axis=0)
    target = index.target_layout
    if target.kind == "slice":
        mask = mean_image > config.mask_fraction * mean_image.max()
    else:  # voxels are in-mask already (the training mask); parcels are regions
        mask = np.ones(mean_image.shape, dtype=bool)
    if config.roi is not None:
        volume = (volume_maps.read_mask(config.shards, index, config.storage_options)
                  if target.kind == "volume" else None)
        roi, roi_choice = given_roi(Path(config.roi), mask, volume)
    else:
        try:  # the headline region, from the training split only
            roi, roi_choice = training_roi(train.fmri, train.meta, mask)
        except InputError as err:
            roi, roi_choice = None, {"not_chosen": str(err)}
    missing = index.missing_runs()
    if missing:  # a partial dataset is said, here and in results.md
        log.warning(f"evaluate: warning: {len(missing)} run(s) of the dataset are not in these shards "
                    "(ingest could not use them):\n" + "\n".join(f"  {line}" for line in missing))
    predictions, chosen = predict(config, train, sets, mean_image, target)
    rng = np.random.default_rng(config.seed)
    results = {ev.name: score_set(ev, predictions[ev.name], mask, config, rng, roi) for ev in sets}
    settings = evaluation_settings(config, index, mask, chosen, roi_choice, missing)
    settings["target"] = {k: v for k, v in index.target.items() if k not in ("affine", "labels")}
    for name in ("ridge", "stimulus"):  # a fit that says nothing is named as such in every set's row
        why = (chosen[name] or {}).get("degenerate")
        for set_result in results.values():
            for row in set_result["rows"]:
                if why and row["name"] == name:
                    row["degenerate"] = why
    result = {"settings": settings, "sets": results}
    out = config.output()
    if target.kind == "volume":  # maps on the grid, FDR fraction, correlation with the truth
        volume = volume_maps.read_mask(config.shards, index, config.storage_options)
        shown_rows = tuple(n for n in predictions[sets[0].name] if n not in NOT_MEG_MODELS) + ("oracle",)
        for ev in sets:
            results[ev.name]["maps"] = volume_maps.volume_report(
                out, ev, predictions[ev.name], volume, rng, config.null_draws,
                results[ev.name]["min_shift_samples"], config.bids_root,
                shown_rows if ev is sets[0] else ())
        settings["maps"] = volume_maps.__doc__.split("\n\n", 1)[1].strip()
    for ev in sets:
        save_predictions(out, ev, predictions[ev.name])
    if roi is not None:  # anyone can reuse it: the NIfTI mask for volumes, the pixel mask for slices
        if target.kind == "volume":
            put_nifti(out, "roi.nii.gz", volume_maps.to_image(roi.astype(np.float32), volume))
        put_npz(out, "roi.npz", roi=roi)
    put_json(out, "results.json", result)
    put_text(out, "results.md", report.markdown(result))
    shown = sets[0]  # test where it exists: the figures show the headline set
    if target.kind == "slice":
        affine = index.target.get("affine")  # the grid's: where L/R and A/P are
        runs = {n: location(f, config.storage_options) for n, f in model_runs(config).items()}
        figures.figures(out, shown.fmri, predictions[shown.name], shown.meta, runs, affine)
        figures.changes_figure(out, shown.fmri, predictions[shown.name], shown.meta, shown.by_run, mask,
                               affine)
        figures.slice_figure(out, index)
    return result
