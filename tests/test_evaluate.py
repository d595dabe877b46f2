"""``evaluate`` on trained tiny runs: the agreed JSON shape, honest baselines, figures on disk."""

from __future__ import annotations

import json

import numpy as np

from meg2fmri.ingest.synth import oracle as synth_oracle
from meg2fmri.model import evaluate_cli
from meg2fmri.model.evaluate import oracle_signal
from meg2fmri.model.metrics import bootstrap_ci, per_image, voxel_r
from meg2fmri.model.train import TrainConfig, train


def test_evaluate_writes_rows_intervals_and_figures(ingested, tiny_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    for variant in ("cgan", "no_adversarial", "shuffled"):  # one with --smooth: its checkpoint must say so
        train(TrainConfig(shards=str(ingested), out=str(runs / variant), variant=variant, epochs=1,
                          batch_size=16, device="cpu", smooth=1.0 if variant == "no_adversarial" else 0.0),
              progress=False)
    oracle = tmp_path / "oracle.npz"
    oracle_args = ["--bids-root", str(tiny_root), "--ingest", str(ingested), "--out", str(oracle)]
    assert synth_oracle.main(oracle_args) == 0
    out, report = tmp_path / "eval", tmp_path / "results.json"
    args = ["--shards", str(ingested), "--runs", str(runs), "--out", str(out), "--json", str(report),
            "--bootstrap", "200", "--oracle", str(oracle), "--extra", f"again={runs / 'cgan'}"]
    assert evaluate_cli.main(args) == 0
    result = json.loads(report.read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == ["cgan", "no_adversarial", "shuffled", "again", "oracle", "oracle_signal", "mean_image",
                     "ridge"]
    for r in result["rows"]:
        assert {"mse", "ssim", "psnr", "pearson", "mse_ci", "ssim_ci", "voxel_r"} <= set(r)
        assert r["mse_ci"][0] <= r["mse"] <= r["mse_ci"][1] and 0 <= r["mse"] <= 1 and -1 <= r["ssim"] <= 1
    assert result["settings"]["ssim"]["data_range"] == 1.0
    assert result["settings"]["held_out_subjects"] == ["02", "04"]
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["again"]["mse"] == rows["cgan"]["mse"]  # the same run scored twice on the same pairs
    assert result["paired_differences_cgan_minus"]["cgan-again"]["mse"] == [0.0, 0.0]
    assert rows["mean_image"]["voxel_r"] == 0.0  # the same image every time follows nothing
    # the noise-free truth, normalised and oriented like the shards, is far closer than any model
    assert rows["oracle"]["mse"] < 0.01 * rows["mean_image"]["mse"]
    assert rows["oracle"]["pearson"] > rows["mean_image"]["pearson"]
    assert rows["oracle"]["voxel_r"] > rows["ridge"]["voxel_r"]
    # the truth's change over time on the mean anatomy: it follows the signal as the oracle does
    assert abs(rows["oracle_signal"]["voxel_r"] - rows["oracle"]["voxel_r"]) < 0.05
    assert rows["oracle_signal"]["mse"] > 10 * rows["oracle"]["mse"]
    versus_mean = result["paired_differences_minus_mean_image"]
    assert set(versus_mean) == set(names) - {"mean_image"}
    assert versus_mean["oracle"]["mse"][1] < 0  # knowing the held-out anatomy is a large, certain gain
    for name in ("pairs.png", "changes.png", "training_curves.png", "slice_selection.png", "results.md"):
        assert (out / name).stat().st_size > 500
    assert "| cgan |" in capsys.readouterr().out


def test_metrics_on_known_images():
    rng = np.random.default_rng(0)
    real = rng.uniform(0, 1, (6, 16, 16))
    mask = np.ones((16, 16), dtype=bool)
    perfect = per_image(real, real, mask)
    assert np.allclose(perfect["mse"], 0) and np.allclose(perfect["ssim"], 1)
    assert np.allclose(perfect["pearson"], 1)
    noisy = per_image(np.clip(real + rng.normal(0, 0.1, real.shape), 0, 1), real, mask)
    assert (noisy["ssim"] < 0.99).all() and (noisy["mse"] > 0).all()
    assert np.isclose(voxel_r(real, real, mask), 1.0)
    assert voxel_r(np.broadcast_to(real[0], real.shape), real, mask) == 0.0
    lo, hi = bootstrap_ci(np.arange(100.0), rng)
    assert lo < 49.5 < hi


def test_oracle_signal_is_the_truths_change_on_the_mean_anatomy():
    rng = np.random.default_rng(1)
    oracle = rng.uniform(0.3, 0.7, (10, 8, 8))
    mean_image = rng.uniform(0.2, 0.6, (8, 8))
    by_run = [np.array([0, 2, 4, 6, 8]), np.array([1, 3, 5, 7, 9])]
    out = oracle_signal(oracle, mean_image, by_run)
    for g in by_run:
        assert np.allclose(out[g].mean(axis=0), mean_image)  # each run averages to the mean image
        assert np.allclose(np.diff(out[g], axis=0), np.diff(oracle[g], axis=0))  # the same changes
