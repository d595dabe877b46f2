"""Statistics that match the data: whole runs are the unit, because samples within a run are
autocorrelated (HRF, drift, slow physiological noise) and share a subject and a story.

- ``cluster_bootstrap``: the 95% interval of a mean over runs, resampling whole runs, or (with at
  least ``MIN_SUBJECTS`` subjects) subjects and then runs within them. Paired comparisons pass the
  per-run differences, so both methods see the same resampled runs.
- ``shift_null``: a time-shift null for voxelwise r: each run's predictions shifted in time
  against its targets by at least ``min_shift`` samples (several HRF lengths), which keeps every
  series' autocorrelation; the p-value counts null means at or above the observed one. The shift
  is not circular by default (measured: on short runs a circular one is too narrow).
- ``grouped_folds``: cross-validation folds over training subjects *and* stories, each validating
  on subjects and stories its training part never saw (the test condition, inside training data).
"""

from __future__ import annotations

import numpy as np

from meg2fmri.shards.errors import InputError

MIN_SUBJECTS = 3  # fewer subjects than this: resample runs only


def sample_bootstrap(values: np.ndarray, rng: np.random.Generator, n: int = 2000) -> list[float]:
    """95% percentile interval of the mean, resampling entries as if independent (kept to show, in
    tests, how it goes wrong on autocorrelated samples; the evaluation uses ``cluster_bootstrap``)."""
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def cluster_bootstrap(
    values: np.ndarray, subjects: np.ndarray, rng: np.random.Generator, n: int = 2000
) -> list[float]:
    """95% percentile interval of the mean of per-run ``values`` ``(runs,)``; ``subjects[i]`` is run
    i's subject. Two stages (subjects, then runs of each drawn subject) when there are at least
    ``MIN_SUBJECTS`` subjects, else runs alone. NaN entries (a statistic a run cannot have) are
    left out; an empty or single-valued input gives [nan, nan] or that value twice."""
    keep = np.isfinite(values)
    values, subjects = np.asarray(values, dtype=np.float64)[keep], np.asarray(subjects)[keep]
    if len(values) == 0:
        return [float("nan"), float("nan")]
    groups = [np.flatnonzero(subjects == s) for s in np.unique(subjects)]
    if len(groups) < MIN_SUBJECTS:
        idx = rng.integers(0, len(values), size=(n, len(values)))
        means = values[idx].mean(axis=1)
    else:
        means = np.empty(n)
        for b in range(n):
            drawn = [groups[g] for g in rng.integers(0, len(groups), len(groups))]
            means[b] = values[np.concatenate([g[rng.integers(0, len(g), len(g))] for g in drawn])].mean()
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def resampling_unit(subjects: np.ndarray) -> str:
    """What the bootstrap resamples, in words: subjects then runs within them, or runs alone when too few
    subjects."""
    n = len(np.unique(subjects))
    return (
        "subjects, then runs within each drawn subject"
        if n >= MIN_SUBJECTS
        else f"runs (only {n} subject(s): too few to resample)"
    )


def standardise(series: np.ndarray) -> np.ndarray:
    """Each column of ``(times, pixels)`` centred and scaled to unit norm; a constant column is 0
    (tested with ``ptp``: centring a constant float32 column leaves rounding residue, which scaling
    would blow up into noise)."""
    x = series.astype(np.float64)
    varies = np.ptp(x, axis=0) > 0
    x = x - x.mean(axis=0)
    norm = np.sqrt((x**2).sum(axis=0))
    return np.where(varies & (norm > 0), x / np.where(norm > 0, norm, 1), 0.0)


def shift_tables(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per pixel, Pearson r between ``pred[:T - s]`` and ``real[s:]`` for every shift ``s`` in
    ``0..T-1``, ``(T, pixels)`` float64, from running sums and one FFT cross-correlation per pixel
    (the same numbers as standardising each overlap, in O(T log T) instead of O(T^2) per pixel: a
    whole-brain run has 100k+ of them). A pixel whose prediction or target does not vary is 0."""
    p = pred.astype(np.float64).reshape(len(pred), -1)
    r = real.astype(np.float64).reshape(len(real), -1)
    varies = (np.ptp(p, axis=0) > 0) & (np.ptp(r, axis=0) > 0)
    p, r = p - p.mean(axis=0), r - r.mean(axis=0)
    t = len(p)
    n = (t - np.arange(t))[:, None].astype(np.float64)  # overlap of each shift
    head = np.concatenate([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])  # sums of p[:k]
    head2 = np.concatenate([np.zeros((1, p.shape[1])), np.cumsum(p**2, axis=0)])
    tail = np.concatenate([np.cumsum(r[::-1], axis=0)[::-1], np.zeros((1, r.shape[1]))])  # of r[k:]
    tail2 = np.concatenate([np.cumsum(r[::-1] ** 2, axis=0)[::-1], np.zeros((1, r.shape[1]))])
    sp, spp = head[t - np.arange(t)], head2[t - np.arange(t)]
    sr, srr = tail[np.arange(t)], tail2[np.arange(t)]
    size = 1 << (2 * t - 1).bit_length()
    cross = np.fft.irfft(np.conj(np.fft.rfft(p, size, axis=0)) * np.fft.rfft(r, size, axis=0), size,
                         axis=0)[:t]  # sum_u p[u] r[u + s]
    cov = cross - sp * sr / n
    vp, vr = spp - sp**2 / n, srr - sr**2 / n
    ok = varies & (vp > 0) & (vr > 0)
    return np.where(ok, cov / np.sqrt(np.where(ok, vp * vr, 1.0)), 0.0)


def shifted_r(pred: np.ndarray, real: np.ndarray, circular: bool = False) -> np.ndarray:
    """Mean over pixels of Pearson r between ``real`` and ``pred`` shifted by each ``0..T-1``
    samples, ``(T,)``; ``pred`` and ``real`` are one run's ``(T, pixels)`` in time order. Not
    circular (default): r over the ``T - s`` overlapping samples (``shift_tables``). Circular:
    ``pred`` rolled."""
    if circular:
        p, r = standardise(pred), standardise(real)
        return np.array([(np.roll(p, s, axis=0) * r).sum(axis=0).mean() for s in range(len(p))])
    return shift_tables(pred, real).mean(axis=1)


def shift_null(
    runs_pred: list[np.ndarray],
    runs_real: list[np.ndarray],
    rng: np.random.Generator,
    n: int = 2000,
    min_shift: int = 8,
    circular: bool = False,
) -> dict:
    """Time-shift null of the mean over runs of voxelwise r. Each null draw shifts every run's
    predictions by its own random shift in ``[min_shift, T - min_shift]`` samples against its targets
    (runs too short for that are left out of the null and of the observed mean alike). Returns the
    observed mean, the p-value ``(1 + #null >= observed) / (1 + n)``, the null's 95th percentile and
    how many runs it used.

    Not circular by default: on runs of ~30 strongly autocorrelated samples the wrap-around seam
    narrows a circular null (tests/test_stats.py: 17-19% false positives at a nominal 5% with AR(1)
    0.8, 11% with 0.5), while r over the overlapping samples gave 8% and 2%."""
    tables = [shifted_r(p, r, circular) for p, r in zip(runs_pred, runs_real, strict=True)]
    usable = [t for t in tables if len(t) >= 2 * min_shift + 1]
    if not usable:
        return {
            "observed": float("nan"),
            "p": float("nan"),
            "null_95": float("nan"),
            "runs": 0,
            "min_shift_samples": min_shift,
            "draws": n,
        }
    observed = float(np.mean([t[0] for t in usable]))
    draws = np.stack([t[rng.integers(min_shift, len(t) - min_shift + 1, size=n)] for t in usable]).mean(
        axis=0
    )
    return {
        "observed": observed,
        "p": float((1 + (draws >= observed).sum()) / (1 + n)),
        "null_95": float(np.percentile(draws, 95)),
        "runs": len(usable),
        "min_shift_samples": min_shift,
        "draws": n,
    }


def grouped_folds(subjects: np.ndarray, stories: np.ndarray, k: int = 4) -> tuple[list, str]:
    """``k`` (train, validation) index pairs over samples labelled by ``subjects`` and ``stories``,
    and how they were grouped. Fold i validates on subject group i x story group i and trains on
    every sample of the other subjects *and* other stories (samples sharing only one of the two with
    the validation part are in neither). Groups are round-robin over the sorted ids, so the folds
    are fixed in advance. With one training story (or subject) the folds group by the other alone."""
    subject_ids, story_ids = np.unique(subjects), np.unique(stories)
    if len(subject_ids) < 2 and len(story_ids) < 2:
        raise InputError("grouped cross-validation needs at least 2 training subjects or stories; the "
                         "training set has one subject and one story")
    if len(story_ids) < 2 or len(subject_ids) < 2:
        by_subject = len(subject_ids) >= 2
        return one_label_folds(subjects if by_subject else stories, k,
                               "subjects" if by_subject else "stories",
                               f"a single training {'story' if by_subject else 'subject'}")
    k = min(k, len(subject_ids))
    folds = []
    for i in range(k):
        held_subjects = subject_ids[i::k]
        held_stories = story_ids[i % len(story_ids) :: min(k, len(story_ids))]
        in_subjects, in_stories = np.isin(subjects, held_subjects), np.isin(stories, held_stories)
        train, valid = np.flatnonzero(~in_subjects & ~in_stories), np.flatnonzero(in_subjects & in_stories)
        if len(train) and len(valid):
            folds.append((train, valid))
    if len(folds) < 2:  # runs missing (a partial dataset): too few subject x story cells are filled
        return one_label_folds(subjects, k, "subjects", f"only {len(folds)} new-subject x new-story "
                                                        "fold(s) have samples: runs are missing")
    return folds, f"{len(folds)} folds, each new subjects x new stories (of the training set)"


def one_label_folds(labels: np.ndarray, k: int, name: str, why: str) -> tuple[list, str]:
    """Folds that each validate on a group of ``labels`` (subjects or stories) and train on the rest."""
    ids = np.unique(labels)
    k = min(k, len(ids))
    folds = [(np.flatnonzero(~np.isin(labels, ids[i::k])), np.flatnonzero(np.isin(labels, ids[i::k])))
             for i in range(k)]
    return folds, f"{k} folds grouped by {name} only ({why})"
