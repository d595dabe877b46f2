"""The headline region of interest, chosen from training data only, fixed in size before any result.

The ROI is the top ``ROI_FRACTION`` (5%, fixed a priori) of the evaluation mask's pixels or voxels by
leave-one-subject-out inter-subject correlation (ISC) among the *training* subjects on the *training*
stories: each training subject's series of a story (its samples in volume order, on the volumes every
training subject of that story has) against the mean of the other training subjects', averaged over
stories heard by at least two of them. No held-out subject or story is looked at. This is how studies
of naturalistic stimuli pick where a stimulus-driven response can be predicted at all (Nastase et al.
2019, SCAN 14:667, "Measuring shared responses across subjects using intersubject correlation"), and it
works on real data as on synthetic data: it needs the data only.
"""

from __future__ import annotations

import numpy as np

from meg2fmri.shards.errors import InputError

ROI_FRACTION = 0.05  # fixed a priori: the top 5% of the evaluation mask by training ISC


def zscore_time(series: np.ndarray) -> np.ndarray:
    """Each column of ``(time, values)`` with its linear trend removed, z-scored over time."""
    t = np.arange(len(series), dtype=np.float64)
    t -= t.mean()
    x = series - series.mean(axis=0)
    if len(series) > 2:
        x = x - np.outer(t, (t @ x) / (t @ t))
    sd = x.std(axis=0)
    return x / np.where(sd > 0, sd, 1.0)


def story_series(images: np.ndarray, meta: list[dict]) -> dict[int, np.ndarray]:
    """Per story, ``(subjects, time, values)``: each subject's samples on the volumes all the story's
    subjects have, in volume order (stories with fewer than two subjects are left out)."""
    flat = images.reshape(len(images), -1)
    rows: dict[int, dict[str, dict[int, int]]] = {}
    for i, m in enumerate(meta):
        rows.setdefault(m["run"], {}).setdefault(m["subject"], {})[m["fmri_volume"]] = i
    out = {}
    for story, subjects in sorted(rows.items()):
        if len(subjects) < 2:
            continue
        common = sorted(set.intersection(*(set(v) for v in subjects.values())))
        if len(common) < 3:
            continue
        out[story] = np.stack([flat[[by_volume[v] for v in common]]
                               for _, by_volume in sorted(subjects.items())])
    return out


def loo_isc(series: np.ndarray) -> np.ndarray:
    """Mean over subjects of each subject's r with the mean of the others, per value: ``(values,)``."""
    z = np.stack([zscore_time(s.astype(np.float64)) for s in series])
    total = z.sum(axis=0)
    return np.mean([(z[i] * zscore_time((total - z[i]) / (len(z) - 1))).mean(axis=0) for i in range(len(z))],
                   axis=0)


def training_roi(images: np.ndarray, meta: list[dict], mask: np.ndarray,
                 fraction: float = ROI_FRACTION) -> tuple[np.ndarray, dict]:
    """The ROI (a boolean array of the target's shape, inside ``mask``) from the *training* samples
    ``images`` ``(n, *target shape)`` and their ``meta``, and how it was chosen."""
    stories = story_series(images, meta)
    if not stories:
        raise InputError("the ROI needs a training story heard by at least two training subjects (with 3 "
                         "common volumes); the training split has none")
    isc = np.mean([loo_isc(s) for s in stories.values()], axis=0).reshape(mask.shape)
    inside = np.flatnonzero(mask.ravel())
    size = max(1, int(round(fraction * len(inside))))
    chosen = inside[np.argsort(isc.ravel()[inside])[-size:]]
    roi = np.zeros(mask.size, dtype=bool)
    roi[chosen] = True
    return roi.reshape(mask.shape), {
        "rule": f"top {fraction:.0%} of the evaluation mask by leave-one-subject-out ISC among the training "
                "subjects on the training stories (fixed a priori; no held-out data used)",
        "values": int(roi.sum()), "of": int(len(inside)), "stories": sorted(int(s) for s in stories),
        "subjects": sorted({m["subject"] for m in meta}),
        "training_isc_in_roi": float(isc.ravel()[chosen].mean()),
        "training_isc_threshold": float(isc.ravel()[chosen].min())}
