"""Baselines scored beside the trained models, each fitted on the training set only.

- ``story_clock``: no MEG, no model: the training subjects' mean change (image minus its run mean) at
  the same story and fMRI volume, on the mean training image. It exists only for stories the
  training subjects heard (``seen_story``), where it bounds any model of stimulus-locked responses.
- ``stimulus``: no MEG: ridge from the story's audio envelope (``stimuli/audio/story_N.wav``), lagged
  0-15 s before each volume, to each pixel's change; does the MEG add anything beyond the sound?
- ``ridge``: the field's linear encoding model on the same MEG features as the generator and the
  same deviation targets.

Both ridge models use himalaya's ``RidgeCV`` with one penalty per pixel, chosen by cross-validation
grouped by training subject and story (``stats.grouped_folds``), never on evaluation data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from meg2fmri.shards.errors import InputError

from .stats import grouped_folds

ALPHAS = np.logspace(-1, 9, 21)  # up to 1e9: on data with little signal the CV wants heavy shrinkage
ENVELOPE_SFREQ = 10.0  # Hz: the audio envelope's sampling rate
TARGETS_BATCH = 2048  # pixels or voxels fitted at once (memory: alphas x samples x batch)
DEGENERATE_FRACTION = 0.95  # targets at the largest penalty beyond which a ridge fit is called degenerate
STIMULUS_LAGS = np.arange(0, 16)  # s: lagged envelope features, 0-15 s before the volume


def run_deviations(images: np.ndarray, meta: list[dict]) -> np.ndarray:
    """Each image minus the mean image of its (subject, run), ``(n, S, S)`` float64."""
    keys = np.array([f"{m['subject']}:{m['run']}" for m in meta])
    out = np.empty(images.shape, dtype=np.float64)
    for key in np.unique(keys):
        rows = keys == key
        out[rows] = images[rows] - images[rows].mean(axis=0)
    return out


PRIMAL_MIN_SAMPLES = 16384  # above this, PrimalRidgeCV: himalaya's RidgeCV holds alphas x val x train


class PrimalRidgeCV:
    """himalaya's ``RidgeCV`` (svd solver, one penalty per target by its default score, the mean over
    folds of ``-SSE / n_val``, larger penalty on ties, intercept) computed in the primal: per fold one
    SVD of the training features and ``(n_val, features) @ (features, targets)`` per penalty. himalaya
    forms an ``(alphas, n_val, n_train)`` array instead: 73 GB at ``make study``'s 48k samples."""

    def __init__(self, alphas: np.ndarray, cv: list, n_targets_batch: int = TARGETS_BATCH):
        self.alphas, self.cv, self.batch = np.asarray(alphas, dtype=np.float64), cv, n_targets_batch

    def fit(self, X: np.ndarray, Y: np.ndarray) -> PrimalRidgeCV:
        X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
        scores = np.zeros((len(self.alphas), Y.shape[1]))
        for train, val in self.cv:
            x_mean, y_mean = X[train].mean(0), Y[train].mean(0)
            u, s, vt = np.linalg.svd(X[train] - x_mean, full_matrices=False)
            xv = (X[val] - x_mean) @ vt.T
            for start in range(0, Y.shape[1], self.batch):
                cols = slice(start, start + self.batch)
                uty = u.T @ (Y[train, cols] - y_mean[cols])
                real = Y[val, cols] - y_mean[cols]
                for i, alpha in enumerate(self.alphas):
                    pred = xv @ ((s / (s**2 + alpha))[:, None] * uty)
                    scores[i, cols] += -((real - pred) ** 2).sum(0) / len(val) / len(self.cv)
        scores += (np.log(self.alphas) * 1e-10)[:, None]
        self.best_alphas_ = self.alphas[np.argmax(scores, axis=0)]
        x_mean, y_mean = X.mean(0), Y.mean(0)
        u, s, vt = np.linalg.svd(X - x_mean, full_matrices=False)
        self.coef_ = np.empty((X.shape[1], Y.shape[1]))
        for alpha in np.unique(self.best_alphas_):
            cols = np.flatnonzero(self.best_alphas_ == alpha)
            for start in range(0, len(cols), self.batch):
                part = cols[start:start + self.batch]
                shrunk = (s / (s**2 + alpha))[:, None] * (u.T @ (Y[:, part] - y_mean[part]))
                self.coef_[:, part] = vt.T @ shrunk
        self.intercept_ = y_mean - x_mean @ self.coef_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, np.float64) @ self.coef_ + self.intercept_


@dataclass
class RidgeBaseline:
    """A fitted per-pixel ridge from features to image changes; ``predict`` adds the mean image."""

    model: object  # himalaya's RidgeCV or (fewer samples than features) linear KernelRidgeCV
    mean: np.ndarray  # (features,) training feature means
    scale: np.ndarray  # (features,) training feature std
    mean_image: np.ndarray
    folds: str  # how the penalty's cross-validation grouped the training samples

    def predict(self, features: np.ndarray) -> np.ndarray:
        change = self.model.predict((features - self.mean) / self.scale)
        return np.clip(self.mean_image + np.asarray(change).reshape(-1, *self.mean_image.shape), 0, 1)

    def degenerate(self) -> str | None:
        """Why the fit says nothing, if it does not: (nearly) every target chose the grid's largest
        penalty, so the predictions are the mean image (the cross-validation found no signal)."""
        alphas = np.asarray(self.model.best_alphas_)
        at_edge = float(np.mean(np.isclose(alphas, ALPHAS[-1], rtol=1e-6)))
        if at_edge >= DEGENERATE_FRACTION:
            return (f"{at_edge:.0%} of the targets chose the largest penalty ({ALPHAS[-1]:.0e}): the fit "
                    "shrank to the mean image (cross-validation on the training set found no signal)")
        return None

    def summary(self) -> dict:
        alphas = np.asarray(self.model.best_alphas_)
        return {
            "penalty": "one per pixel by grouped CV (himalaya RidgeCV, r2)",
            "alphas_tried": [float(ALPHAS[0]), float(ALPHAS[-1]), len(ALPHAS)],
            "folds": self.folds,
            "alpha_median": float(np.median(alphas)),
            "alpha_quartiles": [float(np.percentile(alphas, 25)), float(np.percentile(alphas, 75))],
            "degenerate": self.degenerate(),
        }


def fit_ridge(
    features: np.ndarray, images: np.ndarray, meta: list[dict], mean_image: np.ndarray
) -> RidgeBaseline:
    """Per-pixel ridge on the training set's run changes, penalties by subject x story grouped CV."""
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    subjects = np.array([m["subject"] for m in meta])
    stories = np.array([m["run"] for m in meta])
    folds, grouping = grouped_folds(subjects, stories)
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    targets = run_deviations(images, meta).reshape(len(images), -1)
    # the same ridge either way; the kernel (dual) form is faster with fewer samples than features
    # targets in batches: the CV's (alphas x samples x targets) scores stay small at 100k+ voxels
    batches = {"n_targets_batch": TARGETS_BATCH, "n_targets_batch_refit": TARGETS_BATCH}
    if len(features) < features.shape[1]:
        model = KernelRidgeCV(alphas=ALPHAS, kernel="linear", fit_intercept=True, cv=folds,
                              solver_params=batches)
    elif len(features) > PRIMAL_MIN_SAMPLES:
        model = PrimalRidgeCV(ALPHAS, folds)
    else:
        model = RidgeCV(alphas=ALPHAS, fit_intercept=True, cv=folds, solver_params=batches)
    model.fit(((features - mean) / scale).astype(np.float64), targets)
    return RidgeBaseline(model, mean, scale, mean_image, grouping)


def audio_envelope(path: Path) -> np.ndarray:
    """RMS amplitude of a WAV file in bins of 1 / ``ENVELOPE_SFREQ`` s, ``(bins,)`` float64."""
    try:
        rate, wave = wavfile.read(path)
    except FileNotFoundError:
        raise InputError(
            f"{path}: no story audio; the stimulus baseline needs the BIDS root's "
            "stimuli/audio/story_N.wav (pass --bids-root, or drop it to skip the row)"
        ) from None
    wave = wave.astype(np.float64)
    if wave.ndim > 1:
        wave = wave.mean(axis=1)
    step = int(rate / ENVELOPE_SFREQ)
    n = len(wave) // step
    return np.sqrt((wave[: n * step].reshape(n, step) ** 2).mean(axis=1))


def stimulus_features(envelopes: dict[int, np.ndarray], meta: list[dict]) -> np.ndarray:
    """Per sample, the story's audio envelope averaged over each 1-s bin ``[t - lag - 1, t - lag)``
    for lag in ``STIMULUS_LAGS``, where t is the volume's acquisition in story time (0 outside the
    story), ``(n, lags)``."""
    out = np.zeros((len(meta), len(STIMULUS_LAGS)))
    for i, m in enumerate(meta):
        env = envelopes[m["run"]]
        for j, lag in enumerate(STIMULUS_LAGS):
            lo = int(round((m["fmri_time_s"] - lag - 1) * ENVELOPE_SFREQ))
            hi = int(round((m["fmri_time_s"] - lag) * ENVELOPE_SFREQ))
            part = env[max(lo, 0) : max(min(hi, len(env)), 0)]
            out[i, j] = part.mean() if len(part) else 0.0
    return out


def story_envelopes(bids_root: Path, stories: set[int]) -> dict[int, np.ndarray]:
    """Each story's audio envelope, read from ``stimuli/audio/story_N.wav``."""
    return {
        s: audio_envelope(Path(bids_root) / "stimuli" / "audio" / f"story_{s}.wav") for s in sorted(stories)
    }


def story_clock(
    train_images: np.ndarray, train_meta: list[dict], meta: list[dict], mean_image: np.ndarray
) -> np.ndarray | None:
    """The training subjects' mean change at each sample's (story, volume), on the mean image; None
    if no sample's story was heard in training (the clock needs the same story)."""
    changes = run_deviations(train_images, train_meta)
    sums: dict[tuple[int, int], list] = {}
    for change, m in zip(changes, train_meta, strict=True):
        entry = sums.setdefault((m["run"], m["fmri_volume"]), [0.0, 0])
        entry[0] = entry[0] + change
        entry[1] += 1
    found = [(m["run"], m["fmri_volume"]) in sums for m in meta]
    if not any(found):
        return None
    out = np.empty((len(meta), *mean_image.shape))
    for i, m in enumerate(meta):
        total, count = sums.get((m["run"], m["fmri_volume"]), (0.0, 1))
        out[i] = mean_image + total / count
    return np.clip(out, 0, 1)
