"""Evaluation on volumes: per-voxel maps as NIfTI, how many voxels pass the null, and where.

For voxel targets (``ingest --target volume``) every scored method gets, on each evaluation set:

- ``maps/SET/METHOD_r.nii.gz`` and ``..._r2.nii.gz``: per in-mask voxel, Pearson r over each run's
  samples in time order and the change R^2 (1 - SSE / SS of the voxel's change from its run mean),
  averaged over runs, on the training grid (the index's affine; 0 outside the mask);
- the fraction of in-mask voxels whose r passes the time-shift null (``voxel_shift_p``: the same
  non-circular shifts as the headline p-value, one shift per run and draw shared by all voxels, so
  their spatial correlation is kept) after Benjamini-Hochberg FDR at q = 0.05;
- on synthetic data, the correlation over in-mask voxels of the r map with the ground truth: the
  amplitude of the MEG-visible BOLD sources' maps, ``sqrt(sum_k map_k^2)``, averaged over the set's
  subjects (does the model light up where the sources are?);
- ``maps/SET/METHOD_r.png``: nilearn's ``plot_stat_map`` of the r map over the set's mean image.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.stats import false_discovery_control

from meg2fmri.loader import StoreConfig, open_store, storage
from meg2fmri.shards.commit import Location

from ..outputs import put_figure, put_nifti
from .stats import shift_tables, standardise

FDR_Q = 0.05


def read_mask(shards: str, index, storage_options: dict | None = None) -> nib.Nifti1Image:
    """The volume targets' mask beside the index, checked against the index's sha256."""
    return storage.read_mask(open_store(shards, StoreConfig(storage_options=storage_options or {})), index)


def to_image(values: np.ndarray, mask: nib.Nifti1Image) -> nib.Nifti1Image:
    """In-mask ``values (voxels,)`` as a float32 NIfTI on the mask's grid (0 outside)."""
    inside = np.asarray(mask.dataobj) > 0
    data = np.zeros(inside.shape, dtype=np.float32)
    data[inside] = values
    return nib.Nifti1Image(data, mask.affine)


def run_maps(pred: np.ndarray, real: np.ndarray, by_run: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel r and change R^2, each averaged over runs, ``(voxels,)`` twice."""
    rs, r2s = [], []
    for g in by_run:
        if len(g) < 2:
            continue
        p, r = standardise(pred[g]), standardise(real[g])
        rs.append((p * r).sum(axis=0))
        pc = pred[g].astype(np.float64) - pred[g].mean(axis=0)
        rc = real[g].astype(np.float64) - real[g].mean(axis=0)
        ss = (rc**2).sum(axis=0)
        r2s.append(np.where(ss > 0, 1 - ((rc - pc) ** 2).sum(axis=0) / np.where(ss > 0, ss, 1), 0.0))
    return np.mean(rs, axis=0), np.mean(r2s, axis=0)


def voxel_shift_p(pred: np.ndarray, real: np.ndarray, by_run: list[np.ndarray], rng: np.random.Generator,
                  draws: int, min_shift: int, batch: int = 100) -> np.ndarray:
    """Per voxel, the time-shift p-value of its run-mean r: ``(1 + #null >= observed) / (1 + draws)``.
    Each draw shifts every run by its own shift in ``[min_shift, T - min_shift]`` samples (r over
    the overlapping samples); runs too short for that are left out, as in ``stats.shift_null``."""
    tables = []
    for g in by_run:
        if len(g) < 2 * min_shift + 1:
            continue
        tables.append(shift_tables(pred[g], real[g])[: len(g) - min_shift + 1].astype(np.float32))
    if not tables:
        return np.full(pred.shape[1], np.nan)
    observed = np.mean([t[0] for t in tables], axis=0)
    exceed = np.zeros(pred.shape[1], dtype=np.int64)
    for start in range(0, draws, batch):
        n = min(batch, draws - start)
        null = sum(t[rng.integers(min_shift, len(t), size=n)] for t in tables) / len(tables)
        exceed += (null >= observed).sum(axis=0)
    return (1 + exceed) / (1 + draws)


def truth_amplitude(bids_root: Path, subjects: list[str], inside: np.ndarray) -> np.ndarray | None:
    """The MEG-visible sources' map amplitude, averaged over ``subjects``, in-mask ``(voxels,)``;
    None if the dataset has no synth ground truth."""
    from meg2fmri.ingest.synth import truth

    if not truth.is_synth(bids_root):
        return None
    shared = len(truth.read_config(bids_root)["sources"]["meg_and_bold"])
    maps = [truth.read_subject(bids_root, s, "fmri_maps")[:shared] for s in subjects]
    return np.mean([np.sqrt((m**2).sum(axis=0))[inside] for m in maps], axis=0)


def map_figure(r_map: nib.Nifti1Image, background: nib.Nifti1Image, out: Location, rel: str,
               title: str) -> None:
    """An r map on its background as an axial nilearn stat map (orientation labels, colour bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    data = np.asarray(r_map.dataobj)
    peak = float(np.abs(data).max()) or 1.0
    display = plotting.plot_stat_map(r_map, bg_img=background, display_mode="z", cut_coords=6,
                                     threshold=0.1 * peak, vmax=peak, title=title, colorbar=True,
                                     draw_cross=False, black_bg=True)
    put_figure(out, rel, display.frame_axes.figure, dpi=90, facecolor="k", edgecolor="k")
    display.close()
    plt.close("all")


def volume_report(out: Location, ev, predictions: dict[str, np.ndarray], mask: nib.Nifti1Image, rng,
                  draws: int, min_shift: int, bids_root: str | None, figures: tuple[str, ...]) -> dict:
    """Maps, FDR fraction and truth correlation of every method on one set (see the module doc)."""
    folder = f"maps/{ev.name}"
    inside = np.asarray(mask.dataobj) > 0
    subjects = sorted(set(ev.run_subjects))
    truth = None if bids_root is None else truth_amplitude(Path(bids_root), subjects, inside)
    background = to_image(ev.fmri.mean(axis=0), mask)
    rows = {}
    for name, pred in predictions.items():
        r, r2 = run_maps(pred, ev.fmri, ev.by_run)
        p = voxel_shift_p(pred, ev.fmri, ev.by_run, rng, draws, min_shift)
        passed = false_discovery_control(p) < FDR_Q if np.isfinite(p).all() else np.zeros(len(p), bool)
        put_nifti(out, f"{folder}/{name}_r.nii.gz", to_image(r, mask))
        put_nifti(out, f"{folder}/{name}_r2.nii.gz", to_image(r2, mask))
        row = {"mean_r": float(r.mean()), "fdr_fraction": float(passed.mean()),
               "fdr_voxels": int(passed.sum()),
               "truth_r": float(np.corrcoef(r, truth)[0, 1]) if truth is not None and r.std() > 0 else None}
        if name in figures:
            map_figure(to_image(r, mask), background, out, f"{folder}/{name}_r.png",
                       f"{name}: voxel r on {ev.name} (mean {row['mean_r']:.3f})")
        rows[name] = row
    return {"voxels": int(inside.sum()), "fdr_q": FDR_Q, "draws": draws, "rows": rows,
            "truth": "MEG-visible source maps' amplitude (synth)" if truth is not None else None}

