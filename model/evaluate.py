"""Score the trained variants and honest baselines on the held-out subjects.

Rows: ``cgan``, ``no_adversarial``, ``shuffled`` (each a run folder with ``checkpoint.pt``, where
present), ``mean_image`` (the mean training image for every input) and ``ridge`` (MEG vector ->
pixels, its penalty chosen by leave-one-subject-out on the training subjects only). Every metric
is on [0, 1] images with data_range 1, over the whole slice and inside a brain mask (pixels where
the mean training image exceeds ``mask_fraction`` of its maximum). Intervals are bootstrap 95%
over held-out samples (over held-out runs for ``voxel_r``); differences against ``cgan`` are
paired (the same resampled samples for both methods).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from meg2fmri.loader import ShardLoader, StoreConfig, StreamConfig
from meg2fmri.shards.errors import InputError

from .metrics import SSIM_SETTINGS, bootstrap_ci, per_image, voxel_r
from .nets import Generator, from_tanh
from .train import CHECKPOINT, VARIANTS

METRICS = ("mse", "ssim", "psnr", "pearson", "mse_mask", "ssim_mask")


@dataclass(frozen=True)
class EvalConfig:
    shards: str
    runs: str  # folder holding one run folder per variant (cgan/, no_adversarial/, shuffled/)
    out: str
    mask_fraction: float = 0.2
    bootstrap: int = 2000
    seed: int = 0
    storage_options: dict | None = None
    oracle: str | None = None  # .npz from `synth-oracle` (synthetic data): the noise-free truth
    extra: tuple[tuple[str, str], ...] = ()  # (row name, run folder): more models on the same pairs


def load_split(config: EvalConfig, split: str) -> dict:
    loader = ShardLoader(config.shards, split, StreamConfig(batch_size=512, shuffle=False, meta=True),
                         StoreConfig(storage_options=config.storage_options or {}), device="cpu",
                         rank=0, world_size=1)  # the whole split, even if started under torchrun
    meg, fmri, meta = [], [], []
    for batch in loader:
        meg.append(batch["meg"].numpy())
        fmri.append(batch["fmri"][:, 0].numpy())
        meta += batch["meta"]
    return {"meg": np.concatenate(meg), "fmri": np.concatenate(fmri), "meta": meta, "index": loader.index}


def ridge_fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
              alphas: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights ``(width + 1, pixels)`` and the penalty with the lowest leave-one-subject-out MSE."""
    def solve(xa, ya, alpha):
        xa = np.hstack([xa, np.ones((len(xa), 1))])
        u, s, vt = np.linalg.svd(xa, full_matrices=False)
        return vt.T @ ((s / (s ** 2 + alpha))[:, None] * (u.T @ ya))

    scores = []
    for alpha in alphas:
        errors = []
        for g in np.unique(groups):
            w = solve(x[groups != g], y[groups != g], alpha)
            pred = np.hstack([x[groups == g], np.ones(((groups == g).sum(), 1))]) @ w
            errors.append(((pred - y[groups == g]) ** 2).mean())
        scores.append(np.mean(errors))
    best = float(alphas[int(np.argmin(scores))])
    return solve(x, y, best), best


def generator_predictions(run: Path, meg: np.ndarray, width: int, size: int) -> np.ndarray:
    state = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    keep = state["model"]["feature_index"]
    if (state["model"]["size"], len(keep)) != (size, state["model"]["width"]) or max(keep) >= width:
        raise InputError(f"{run / CHECKPOINT}: trained on {state['model']['width']} features x "
                         f"{state['model']['size']} px, the shards give {width} x {size}")
    generator = Generator(len(keep), size, smooth=state["model"].get("smooth", 0.0))
    generator.load_state_dict(state["generator"])
    generator.eval()
    with torch.no_grad():
        out = from_tanh(generator(torch.from_numpy(meg[:, keep]))).clamp(0, 1)
    return out[:, 0].numpy()


def oracle_predictions(path: Path, meta: list[dict]) -> np.ndarray:
    """The oracle's images in the held-out samples' order (matched by key)."""
    with np.load(path) as data:
        images = dict(zip(data["keys"].tolist(), data["images"], strict=True))
    missing = [m["key"] for m in meta if m["key"] not in images]
    if missing:
        raise InputError(f"{path}: no oracle image for {len(missing)} held-out samples (e.g. {missing[0]}); "
                         "write it with `synth-oracle` from these shards")
    return np.stack([images[m["key"]] for m in meta])


def run_changes(images: np.ndarray, by_run: list[np.ndarray]) -> np.ndarray:
    """Each image minus the mean of its run's images (float64): the change over time within a run."""
    change = np.empty_like(images, dtype=np.float64)
    for g in by_run:
        change[g] = images[g] - images[g].mean(axis=0)
    return change


def oracle_signal(oracle: np.ndarray, mean_image: np.ndarray, by_run: list[np.ndarray]) -> np.ndarray:
    """The mean training image plus the true signal: each held-out run's oracle images minus their
    mean over the run. No model that predicts from the MEG alone can know the held-out subject's
    anatomy, so this, not ``oracle``, bounds what the trained models can gain over ``mean_image``."""
    return np.clip(mean_image + run_changes(oracle, by_run), 0, 1).astype(oracle.dtype)


def run_groups(meta: list[dict]) -> list[np.ndarray]:
    """Sample positions of each held-out (subject, run), in time order."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for i, m in enumerate(meta):
        groups.setdefault((m["subject"], m["run"]), []).append((m["fmri_volume"], i))
    return [np.array([i for _, i in sorted(v)]) for _, v in sorted(groups.items())]


def evaluate(config: EvalConfig) -> dict:
    train, held = load_split(config, "train"), load_split(config, "held_out")
    size, width = held["fmri"].shape[1], held["meg"].shape[1]
    mean_image = train["fmri"].mean(axis=0)
    mask = mean_image > config.mask_fraction * mean_image.max()
    predictions = {}
    runs = Path(config.runs)
    for variant in VARIANTS:
        if (runs / variant / CHECKPOINT).is_file():
            predictions[variant] = generator_predictions(runs / variant, held["meg"], width, size)
    for name, folder in config.extra:  # e.g. a cGAN trained on --pairing paper shards
        if name in predictions or not (Path(folder) / CHECKPOINT).is_file():
            raise InputError(f"--extra {name}={folder}: the name is taken, or {CHECKPOINT} is missing there")
        predictions[name] = generator_predictions(Path(folder), held["meg"], width, size)
    if "cgan" not in predictions:
        raise InputError(f"{runs}/cgan/{CHECKPOINT}: no trained cGAN; run `train --out {runs}/cgan` first")
    by_run = run_groups(held["meta"])
    if config.oracle is not None:
        predictions["oracle"] = oracle_predictions(Path(config.oracle), held["meta"])
        predictions["oracle_signal"] = oracle_signal(predictions["oracle"], mean_image, by_run)
    predictions["mean_image"] = np.broadcast_to(mean_image, held["fmri"].shape).copy()
    groups = np.array([m["subject"] for m in train["meta"]])
    weights, alpha = ridge_fit(train["meg"], train["fmri"].reshape(len(groups), -1), groups,
                               np.logspace(-1, 5, 7))
    ridge = np.hstack([held["meg"], np.ones((len(held["meg"]), 1))]) @ weights
    predictions["ridge"] = np.clip(ridge.reshape(-1, size, size), 0, 1)

    rng = np.random.default_rng(config.seed)
    real = held["fmri"]
    scores = {name: per_image(pred.astype(np.float64), real.astype(np.float64), mask)
              for name, pred in predictions.items()}
    run_r = {name: np.array([voxel_r(pred[g], real[g], mask) for g in by_run])
             for name, pred in predictions.items()}
    rows = []
    for name in predictions:
        row = {"name": name, **{k: float(v.mean()) for k, v in scores[name].items()},
               "mse_ci": bootstrap_ci(scores[name]["mse"], rng, config.bootstrap),
               "ssim_ci": bootstrap_ci(scores[name]["ssim"], rng, config.bootstrap),
               "voxel_r": float(run_r[name].mean()),
               "voxel_r_ci": bootstrap_ci(run_r[name], rng, config.bootstrap)}
        rows.append(row)
    paired = {}
    for name in predictions:
        if name == "cgan":
            continue
        diffs = {k: bootstrap_ci(scores["cgan"][k] - scores[name][k], rng, config.bootstrap)
                 for k in ("mse", "ssim", "mse_mask", "ssim_mask")}
        diffs["voxel_r"] = bootstrap_ci(run_r["cgan"] - run_r[name], rng, config.bootstrap)
        paired[f"cgan-{name}"] = diffs
    # Each method against the mean image: is its gain over "predict the average anatomy" detectable at
    # all? oracle_signal's interval says whether any model of the MEG could be, on these samples.
    versus_mean = {name: {k: bootstrap_ci(scores[name][k] - scores["mean_image"][k], rng, config.bootstrap)
                          for k in ("mse", "ssim", "mse_mask", "ssim_mask")}
                   for name in predictions if name != "mean_image"}
    settings = {"ssim": SSIM_SETTINGS, "images": "[0, 1], one data_range for every image",
                "mask": f"mean training image > {config.mask_fraction} x its max ({int(mask.sum())} of "
                        f"{mask.size} px)", "ridge_alpha": alpha, "bootstrap": config.bootstrap,
                "held_out_samples": len(real), "held_out_runs": len(by_run),
                "held_out_subjects": held["index"].split["held_out"], "shards": config.shards,
                "voxel_r": "per pixel in the mask, Pearson r over time within each held-out run, averaged; "
                           "a prediction constant over time scores 0",
                "oracle": ("noise-free synth truth at each sample's volume and slice, normalised and "
                           "resized like the shards" if config.oracle
                           else "not given (--oracle, synthetic data only)"),
                "oracle_signal": ("mean training image + the oracle's change from its own run mean: the "
                                  "ceiling of a model that knows the MEG-driven signal exactly but not the "
                                  "held-out subject's anatomy" if config.oracle else "needs --oracle"),
                "config": asdict(config) | {"storage_options": {}},
                "extra": {name: folder for name, folder in config.extra}}
    result = {"settings": settings, "rows": rows, "paired_differences_cgan_minus": paired,
              "paired_differences_minus_mean_image": versus_mean}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result))
    figures(out, real, predictions, held["meta"], runs)
    changes_figure(out, real, predictions, held["meta"], by_run, mask)
    slice_figure(out, held["index"])
    return result


def markdown(result: dict) -> str:
    lines = ["| method | MSE [95% CI] | SSIM [95% CI] | PSNR | Pearson r | MSE (mask) | SSIM (mask) "
             "| voxel r |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['mse']:.6f} [{r['mse_ci'][0]:.6f}, {r['mse_ci'][1]:.6f}] | "
                     f"{r['ssim']:.5f} [{r['ssim_ci'][0]:.5f}, {r['ssim_ci'][1]:.5f}] | {r['psnr']:.2f} | "
                     f"{r['pearson']:.4f} | {r['mse_mask']:.6f} | {r['ssim_mask']:.5f} | "
                     f"{r['voxel_r']:.3f} |")
    lines += ["", "Paired bootstrap 95% intervals of cgan minus each method:", ""]
    for name, diffs in result["paired_differences_cgan_minus"].items():
        parts = [f"{k} [{lo:+.2e}, {hi:+.2e}]" for k, (lo, hi) in diffs.items()]
        lines.append(f"- {name}: " + ", ".join(parts))
    lines += ["", "Paired bootstrap 95% intervals of each method minus mean_image (negative MSE, positive "
              "SSIM = better than the mean image):", ""]
    for name, diffs in result["paired_differences_minus_mean_image"].items():
        parts = [f"{k} [{lo:+.2e}, {hi:+.2e}]" for k, (lo, hi) in diffs.items()]
        lines.append(f"- {name}: " + ", ".join(parts))
    s = result["settings"]["ssim"]
    lines += ["", f"SSIM: {s['library']} {s['function']}, data_range={s['data_range']}, Gaussian window "
              f"{s['kernel_size']} px, sigma {s['sigma']}. {result['settings']['mask']}.", ""]
    return "\n".join(lines)


def slice_figure(out: Path, index) -> None:
    """The slice-selection profile of one run (the paper's Fig. 1): per-slice correlation of the slice
    means with the MEG profile, and the slice used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = next((r for r in index.runs if r.get("slice_correlation")), None)
    if run is None:
        return
    values = [np.nan if c is None else c for c in run["slice_correlation"]]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(range(len(values)), values, marker="o", ms=2, lw=0.8)
    ax.axvline(run["slice"], color="tab:red", lw=1, label=f"slice used: {run['slice']}")
    ax.set_xlabel("axial slice (NIfTI k)")
    ax.set_ylabel("r(slice mean, MEG profile)")
    ax.set_title(f"slice selection, sub-{run['subject']} run {run['run']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "slice_selection.png", dpi=110)
    plt.close(fig)


FIGURE_SAMPLES = 6  # held-out samples shown in pairs.png and changes.png, evenly spaced


def sample_grid(axis, rows: dict[str, np.ndarray], meta: list[dict], **style) -> tuple[list, object]:
    """Draw ``FIGURE_SAMPLES`` evenly spaced samples (columns) of each named image stack (rows) on the
    axes ``axis(row, col)`` gives; return the axes and the last image drawn (for a colour bar)."""
    picks = np.linspace(0, len(meta) - 1, FIGURE_SAMPLES).astype(int)
    drawn, shown = [], None
    for col, i in enumerate(picks):
        for row, (name, images) in enumerate(rows.items()):
            ax = axis(row, col)
            drawn.append(ax)
            shown = ax.imshow(images[i].T, origin="lower", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
            if row == 0:
                ax.set_title(f"sub-{meta[i]['subject']} run {meta[i]['run']}\nvol {meta[i]['fmri_volume']}",
                             fontsize=7)
    return drawn, shown


def figures(out: Path, real: np.ndarray, predictions: dict, meta: list[dict], runs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"real": real} | predictions
    fig, axes = plt.subplots(len(rows), FIGURE_SAMPLES, figsize=(1.6 * FIGURE_SAMPLES, 1.6 * len(rows)))
    sample_grid(lambda row, col: axes[row, col], rows, meta, cmap="gray", vmin=0, vmax=1)
    fig.suptitle("held-out samples: real vs predicted (data range [0, 1])", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "pairs.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for variant in VARIANTS:
        log = runs / variant / "log.jsonl"
        if log.is_file():
            steps = [json.loads(line) for line in log.read_text().splitlines() if '"epoch_end"' not in line]
            ax.plot([s["step"] for s in steps], [s["loss_g_mse"] for s in steps], label=variant, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("generator MSE on [-1, 1] images")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)


def changes_figure(out: Path, real: np.ndarray, predictions: dict, meta: list[dict],
                   by_run: list[np.ndarray], mask: np.ndarray) -> None:
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
    maps, shown = sample_grid(lambda row, col: fig.add_subplot(grid[row, col]), changes, meta,
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
    fig.savefig(out / "changes.png", dpi=110)
    plt.close(fig)
