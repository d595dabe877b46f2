"""Figures of an evaluation: real vs predicted slices (the paper's Fig. 2), each image's change from
its run mean (what the MEG should explain), the slice-selection profile (Fig. 1), training curves.

Every axial image of the project (here, ``generate``'s montage) is drawn by ``show_axial``: the
voxel axis i left to right, j bottom to top, labelled from the affine's axis signs (on a RAS+
affine, as the demo's and MNI's: L on the left, R on the right, P below, A above, the neurological
convention nilearn's axial views also use), with a colour bar beside each figure."""

from __future__ import annotations

import numpy as np

from meg2fmri.shards.commit import Location

from ..outputs import put_figure, read_log


def run_changes(images: np.ndarray, by_run: list[np.ndarray]) -> np.ndarray:
    """Each image minus the mean of its run's images (float64): the change over time within a run."""
    change = np.empty_like(images, dtype=np.float64)
    for g in by_run:
        change[g] = images[g] - images[g].mean(axis=0)
    return change


def orientation(affine) -> tuple[tuple[str, str], tuple[str, str]]:
    """``((left, right), (bottom, top))`` labels of an axial image drawn by ``show_axial`` (i to the
    right, j up), from the signs of the affine's first two axes (RAS+ world coordinates)."""
    a = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    x_right = a[0, 0] >= 0 if abs(a[0, 0]) >= abs(a[1, 0]) else a[1, 0] >= 0
    y_up = a[1, 1] >= 0 if abs(a[1, 1]) >= abs(a[0, 1]) else a[0, 1] >= 0
    return ("L", "R") if x_right else ("R", "L"), ("P", "A") if y_up else ("A", "P")


def label_orientation(ax, affine, fontsize: int = 6) -> None:
    """L/R and P/A at the edges of an axial image drawn by ``show_axial``."""
    (left, right), (bottom, top) = orientation(affine)
    style = {"transform": ax.transAxes, "fontsize": fontsize, "color": "yellow", "weight": "bold"}
    ax.text(0.03, 0.5, left, ha="left", va="center", **style)
    ax.text(0.97, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.03, bottom, ha="center", va="bottom", **style)
    ax.text(0.5, 0.97, top, ha="center", va="top", **style)


def show_axial(ax, image: np.ndarray, affine=None, labels: bool = True, **style):
    """Draw an axial image ``(i, j)`` in the project's one orientation; return the image drawn."""
    shown = ax.imshow(np.asarray(image).T, origin="lower", **style)
    ax.set_xticks([])
    ax.set_yticks([])
    if labels:
        label_orientation(ax, affine)
    return shown


def slice_figure(out: Location, index) -> None:
    """The slice-selection profile (the paper's Fig. 1) of the training runs the slice was chosen
    from: each training run's per-slice correlation of the slice means with its MEG profile (grey),
    their mean (the consensus ``ingest`` picks the maximum of), and the slice used, with how it was
    chosen (by that mean, or fixed a priori with ``--slice``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in index.runs if r.get("slice_correlation") and r.get("split") == "train"]
    if not runs:
        return
    profiles = np.array([[np.nan if c is None else c for c in r["slice_correlation"]] for r in runs], float)
    used = runs[0]["slice"]
    choice = index.config.get("slice_choice") or {}
    how = ("fixed a priori with --slice" if choice.get("chosen_from") == "--slice"
           else choice.get("chosen_from", "chosen by ingest"))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for profile in profiles:
        ax.plot(range(profiles.shape[1]), profile, color="0.75", lw=0.5)
    with np.errstate(all="ignore"):
        mean = np.nanmean(np.where(np.isfinite(profiles), profiles, np.nan), axis=0)
    ax.plot(range(profiles.shape[1]), mean, marker="o", ms=2, lw=1.2, color="tab:blue",
            label=f"mean of {len(runs)} training runs")
    ax.axvline(used, color="tab:red", lw=1, label=f"slice used: {used} ({how})")
    ax.set_xlabel("axial slice (NIfTI k, inferior to superior)")
    ax.set_ylabel("r(slice mean, MEG profile)")
    ax.set_title("slice selection on the training runs (test runs not looked at)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    put_figure(out, "slice_selection.png", fig, dpi=110)
    plt.close(fig)


FIGURE_SAMPLES = 6  # held-out samples shown in pairs.png and changes.png, evenly spaced


def sample_grid(axis, rows: dict[str, np.ndarray], meta: list[dict], affine=None,
                **style) -> tuple[list, object]:
    """Draw ``FIGURE_SAMPLES`` evenly spaced samples (columns) of each named image stack (rows) on the
    axes ``axis(row, col)`` gives, orientation labels on the first column; return the axes and the
    last image drawn (for a colour bar)."""
    picks = np.linspace(0, len(meta) - 1, FIGURE_SAMPLES).astype(int)
    drawn, shown = [], None
    for col, i in enumerate(picks):
        for row, (name, images) in enumerate(rows.items()):
            ax = axis(row, col)
            drawn.append(ax)
            shown = show_axial(ax, images[i], affine, labels=col == 0, **style)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
            if row == 0:
                ax.set_title(f"sub-{meta[i]['subject']} run {meta[i]['run']}\nvol {meta[i]['fmri_volume']}",
                             fontsize=7)
    return drawn, shown


def figures(out: Location, real: np.ndarray, predictions: dict, meta: list[dict],
            runs: dict[str, Location], affine=None) -> None:
    """pairs.png and training_curves.png (``runs``: each trained model's run folder, by row name;
    ``affine``: the slice's, for the orientation labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"real": real} | predictions
    fig, axes = plt.subplots(len(rows), FIGURE_SAMPLES, figsize=(1.6 * FIGURE_SAMPLES + 1, 1.6 * len(rows)),
                             layout="constrained", squeeze=False)
    drawn, shown = sample_grid(lambda row, col: axes[row, col], rows, meta, affine, cmap="gray", vmin=0,
                               vmax=1)
    fig.colorbar(shown, ax=drawn, shrink=0.5, label="BOLD, min-max over the run")
    fig.suptitle("held-out samples: real vs predicted (axial, data range [0, 1])", fontsize=9)
    put_figure(out, "pairs.png", fig, dpi=110)
    plt.close(fig)

    if not runs:  # baselines only (evaluate without --runs): no training curve to draw
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, run in runs.items():
        steps = [record for record in read_log(run) if "epoch_end" not in record]
        if steps:
            ax.plot([s["step"] for s in steps], [s["loss_g_mse"] for s in steps], label=name, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("generator MSE on [-1, 1] images")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    put_figure(out, "training_curves.png", fig, dpi=110)
    plt.close(fig)


def changes_figure(out: Location, real: np.ndarray, predictions: dict, meta: list[dict],
                   by_run: list[np.ndarray], mask: np.ndarray, affine=None) -> None:
    """What pairs.png cannot show: each image's change from its run's mean (real, and every method),
    as maps for the pairs.png samples and as the time course of the pixel where the truth (else the
    real data) varies most over the first held-out run, on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in predictions if n not in ("mean_image", "oracle")]  # oracle_signal: same change
    changes = {"real": run_changes(real, by_run)} | {n: run_changes(predictions[n], by_run) for n in names}
    reference = changes.get("oracle_signal", changes["real"])
    scale = float(np.percentile(np.abs(reference[:, mask]), 99.5)) or 1e-6
    fig = plt.figure(figsize=(1.6 * FIGURE_SAMPLES + 1, 1.6 * len(changes) + 3), layout="constrained")
    grid = fig.add_gridspec(len(changes) + 1, FIGURE_SAMPLES, height_ratios=[1] * len(changes) + [1.6])
    maps, shown = sample_grid(lambda row, col: fig.add_subplot(grid[row, col]), changes, meta, affine,
                              cmap="RdBu_r", vmin=-scale, vmax=scale)
    fig.colorbar(shown, ax=maps, shrink=0.5, label="change from run mean")
    run = by_run[0]
    pixel = np.unravel_index(np.argmax(np.where(mask, reference[run].var(axis=0), -1)), mask.shape)
    course = fig.add_subplot(grid[-1, :])
    volumes = [meta[i]["fmri_volume"] for i in run]
    for name, change in changes.items():
        course.plot(volumes, change[run][:, pixel[0], pixel[1]], label=name,
                    lw=0.6 if name == "real" else 1.2, color="0.6" if name == "real" else None)
    course.set_xlabel(f"fMRI volume (sub-{meta[run[0]]['subject']} run {meta[run[0]]['run']}), "
                      f"pixel {pixel[0]}, {pixel[1]}")
    course.set_ylabel("change")
    course.legend(fontsize=6, ncol=4)
    fig.suptitle("held-out samples: change from each run's mean (what the MEG should explain)", fontsize=9)
    put_figure(out, "changes.png", fig, dpi=110)
    plt.close(fig)
