"""The paper's own evaluation protocol, to place our figures beside its MSE 0.046 and SSIM 0.622.

The paper scores held-out slices with MSE on [0, 1] images and scikit-image's SSIM with its default
7x7 uniform window and a per-image ``data_range`` (here: the real image's max - min, as its code
passes a range computed from the images). Every trained run found under ``--runs`` (and
``--extra``) is scored so, beside the mean training image scored the same way.

What is comparable and what is not: the protocol (pairing, targets, schedule, metrics) is the
paper's; the data are not (synthetic, a different scanner grid and normalisation), and our held-out
set also holds out stories, so the paper's numbers are a reference point, not a target.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from skimage.metrics import structural_similarity

from meg2fmri.shards.errors import InputError
from meg2fmri.shards.split import EVALUATION_SETS

from ..outputs import put_json, put_text
from .evaluate import EvalConfig, check_inputs, generator_predictions, load_split, model_runs
from .stats import cluster_bootstrap

PAPER = {"mse": 0.046, "ssim": 0.622}
SSIM_PAPER = {
    "library": "scikit-image",
    "function": "structural_similarity",
    "win_size": 7,
    "gaussian_weights": False,
    "data_range": "per image: real.max() - real.min()",
}


def paper_scores(pred: np.ndarray, real: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image MSE and scikit-image SSIM (7x7, per-image data_range) of ``(n, S, S)`` images."""
    mse = ((pred.astype(np.float64) - real) ** 2).mean(axis=(1, 2))
    ssim = np.array(
        [
            structural_similarity(
                r.astype(np.float64),
                p.astype(np.float64),
                win_size=7,
                data_range=float(r.max() - r.min()) or 1.0,
            )
            for p, r in zip(pred, real, strict=True)
        ]
    )
    return {"mse": mse, "ssim": ssim}


def paper_protocol(config: EvalConfig) -> dict:
    """The paper's protocol: MSE and scikit-image SSIM of every run and the mean image, as the paper
    scores them."""
    check_inputs(config)
    train, index = load_split(config, "train")
    if train is None:
        raise InputError(f"{config.shards}: the index has no training samples")
    mean_image = train.fmri.mean(axis=0)
    if index.target["kind"] != "slice":
        raise InputError(f"{config.shards}: the paper's protocol scores slices (MSE and SSIM of images); "
                         f"these shards hold {index.target['kind']} targets")
    width, target = train.meg.shape[1], index.target_layout
    models = model_runs(config)
    rng = np.random.default_rng(config.seed)
    sets = {}
    for name in EVALUATION_SETS:
        ev = load_split(config, name)[0]
        if ev is None:
            continue
        rows = []
        predictions = {m: generator_predictions(f, ev.meg, width, target, config.storage_options)
                       for m, f in models.items()}
        predictions["mean_image"] = np.broadcast_to(mean_image, ev.fmri.shape)
        for method, pred in predictions.items():
            scores = paper_scores(pred, ev.fmri)
            per_run = {k: np.array([v[g].mean() for g in ev.by_run]) for k, v in scores.items()}
            rows.append(
                {
                    "name": method,
                    **{k: float(v.mean()) for k, v in per_run.items()},
                    **{
                        f"{k}_ci": cluster_bootstrap(v, ev.run_subjects, rng, config.bootstrap)
                        for k, v in per_run.items()
                    },
                }
            )
        sets[name] = {"samples": len(ev.meta), "runs": len(ev.by_run), "rows": rows}
    result = {
        "protocol": "paper",
        "paper": PAPER,
        "ssim": SSIM_PAPER,
        "sets": sets,
        "split": index.split,
        "pairing": index.config.get("pairing"),
        "config": asdict(config) | {"storage_options": {}},
    }
    out = config.output()
    put_json(out, "paper_protocol.json", result)
    put_text(out, "paper_protocol.md", paper_markdown(result))
    return result


def paper_markdown(result: dict) -> str:
    """The paper protocol's table beside the paper's 0.046 / 0.622."""
    lines = [
        "| set | method | MSE [0,1] [95% CI] | SSIM (skimage 7x7) [95% CI] |",
        "|---|---|---|---|",
        f"| (paper, its held-out subjects) | cGAN | {PAPER['mse']} | {PAPER['ssim']} |",
    ]
    for name, s in result["sets"].items():
        for r in s["rows"]:
            lines.append(
                f"| {name} ({s['runs']} runs) | {r['name']} | {r['mse']:.4f} [{r['mse_ci'][0]:.4f}, "
                f"{r['mse_ci'][1]:.4f}] | {r['ssim']:.3f} [{r['ssim_ci'][0]:.3f}, "
                f"{r['ssim_ci'][1]:.3f}] |"
            )
    lines += [
        "",
        "Comparable: the protocol (one pair per run, raw-image targets, the paper's schedule and "
        "reconstruction weight, MSE on [0, 1], scikit-image SSIM with a 7x7 window and a per-image "
        "data_range). Not comparable: the data (synthetic, not SMN4Lang) and the held-out set (here new "
        "subjects and, in `test`, new stories).",
        "",
    ]
    return "\n".join(lines)
