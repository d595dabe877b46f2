"""``evaluate`` on trained tiny runs: every set, the baselines, run-level statistics, predictions and
figures on disk; the paper's protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import from_cache

from meg2fmri.model.eval import evaluate_cli, oracle_cli
from meg2fmri.model.eval import oracle as synth_oracle
from meg2fmri.model.eval.evaluate import oracle_signal
from meg2fmri.model.eval.metrics import per_image, ssim_maps, voxel_r
from meg2fmri.model.eval.paper import paper_scores
from meg2fmri.model.train import TrainConfig, train


def test_evaluate_writes_sets_rows_intervals_predictions_and_figures(ingested, tiny_root, tmp_path, capsys):
    # the slice with the most true map mass of the training subjects, as the demo picks it (the
    # automatic choice follows the MEG profile of 4 short runs, which can land on a slice with no map)
    slice_ = synth_oracle.peak_slice(tiny_root, ("02", "04"))
    ingested = from_cache(ingested, tmp_path / "peak", "--slice", str(slice_), "--shard-samples", "30")
    runs = tmp_path / "runs"
    for variant in ("cgan", "no_adversarial", "shuffled"):  # one with --smooth: its checkpoint must say so
        train(TrainConfig(shards=str(ingested), out=str(runs / variant), variant=variant, epochs=1,
                          batch_size=16, device="cpu", smooth=1.0 if variant == "no_adversarial" else 0.0),
              progress=False)
    oracle = tmp_path / "oracle.npz"
    oracle_args = ["--bids-root", str(tiny_root), "--ingest", str(ingested), "--out", str(oracle)]
    assert oracle_cli.main(oracle_args) == 0
    out, report = tmp_path / "eval", tmp_path / "results.json"
    args = ["--shards", str(ingested), "--runs", str(runs), "--out", str(out), "--json", str(report),
            "--bootstrap", "200", "--null-draws", "200", "--oracle", str(oracle),
            "--bids-root", str(tiny_root), "--extra", f"again={runs / 'cgan'}"]
    assert evaluate_cli.main(args) == 0
    result = json.loads(report.read_text())
    assert list(result["sets"]) == ["test", "seen_story", "seen_subject"]
    models = ["cgan", "no_adversarial", "shuffled", "again", "mean_image", "ridge", "stimulus"]
    test, seen = result["sets"]["test"], result["sets"]["seen_story"]
    assert [r["name"] for r in test["rows"]] == [*models, "oracle", "oracle_signal"]
    # the story clock needs the training subjects' response to the same story: seen stories only
    assert [r["name"] for r in seen["rows"]] == [*models, "story_clock", "oracle", "oracle_signal"]
    assert test["subjects"] == ["02", "04"] and test["stories"] == [3] and test["runs"] == 2
    assert test["resampling"].startswith("runs") and "time shift" in result["settings"]["null"]
    choices = result["settings"]["choices"]
    assert "grouped CV" in choices["ridge"]["penalty"] and "grouped CV" in choices["stimulus"]["penalty"]
    rows = {r["name"]: r for r in test["rows"]}
    for r in test["rows"]:
        assert r["mse_ci"][0] <= r["mse"] <= r["mse_ci"][1] and 0 <= r["mse"] <= 1 and -1 <= r["ssim"] <= 1
        assert 0 < r["voxel_r_p"] <= 1
    assert rows["again"]["mse"] == rows["cgan"]["mse"]  # the same run scored twice on the same pairs
    assert test["paired_differences"]["again-cgan"]["voxel_r"] == [0.0, 0.0]
    assert {"cgan-mean_image", "cgan-shuffled", "cgan-stimulus", "cgan-ridge", "ridge-cgan",
            "ridge-stimulus"} <= set(test["paired_differences"])
    assert "cgan-story_clock" in seen["paired_differences"]
    assert "shuffled-cgan" not in test["paired_differences"]
    assert rows["mean_image"]["voxel_r"] == 0.0 and rows["mean_image"]["voxel_r_p"] == 1.0
    # the noise-free truth, normalised and oriented like the shards, is far closer than any model
    # (what is left is the scanner noise: tSNR 30, thermal and physiological, the physiological part
    # cardiorespiratory and global in the calibrated world)
    assert rows["oracle"]["mse"] < 0.5 * rows["mean_image"]["mse"]
    # and follows the data better than any model where the runs hold signal to see: on the seen
    # story and the seen subjects (on `test`, 2 runs of one 40-s story, the mask-mean r follows the
    # global slow physiological noise, which there happens to run against the story's response)
    for name in ("seen_story", "seen_subject"):
        by_name = {r["name"]: r["voxel_r"] for r in result["sets"][name]["rows"]}
        assert by_name["oracle"] > max(v for k, v in by_name.items() if not k.startswith("oracle")) + 0.05
    # the fraction of the ceiling: 1 for the oracle itself; undefined (nan) where the ceiling is <= 0
    seen_rows = {r["name"]: r for r in seen["rows"]}
    assert seen_rows["oracle"]["voxel_r_of_ceiling"] == 1.0
    assert (rows["oracle"]["voxel_r_of_ceiling"] == 1.0) == (rows["oracle"]["voxel_r"] > 0)
    assert abs(rows["oracle_signal"]["voxel_r"] - rows["oracle"]["voxel_r"]) < 0.05
    assert rows["oracle_signal"]["mse"] > 10 * rows["oracle"]["mse"]
    assert test["paired_differences_minus_mean_image"]["oracle"]["mse"][1] < 0
    # every number can be recomputed from the predictions on disk: here cgan's test voxel r
    with np.load(out / "predictions/test/cgan.npz") as saved:
        keys, targets, pred = saved["keys"].tolist(), saved["targets"], saved["predictions"]
    assert len(keys) == test["samples"] and pred.shape == targets.shape
    with np.load(out / "predictions/test/mean_image.npz") as saved:
        assert saved["keys"].tolist() == keys
    mean_image = np.load(out / "predictions/test/mean_image.npz")["predictions"][0]
    mask = mean_image > 0.2 * mean_image.max()
    runs_of = [np.array([i for i, k in enumerate(keys) if k.startswith(f"sub-{s}_run-3_")])
               for s in ("02", "04")]
    recomputed = np.mean([voxel_r(pred[g], targets[g], mask) for g in runs_of])
    assert recomputed == pytest.approx(rows["cgan"]["voxel_r"], abs=1e-6)
    for name in ("pairs.png", "changes.png", "training_curves.png", "slice_selection.png", "results.md"):
        assert (out / name).stat().st_size > 500
    printed = capsys.readouterr().out
    assert "## test: held-out subjects x held-out stories" in printed and "| story_clock |" in printed


def test_paper_protocol_scores_skimage_ssim_beside_the_paper(paper_ingested, tmp_path, capsys):
    runs = tmp_path / "runs"
    train(TrainConfig(shards=str(paper_ingested), out=str(runs / "cgan"), epochs=1, batch_size=16,
                      device="cpu", target="image", recon_weight=1.0), progress=False)
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--protocol", "paper", "--shards", str(paper_ingested), "--runs", str(runs),
                              "--out", str(out), "--bootstrap", "100"]) == 0
    result = json.loads((out / "paper_protocol.json").read_text())
    assert result["paper"] == {"mse": 0.046, "ssim": 0.622} and result["ssim"]["win_size"] == 7
    assert result["pairing"]["pairing"] == "paper"
    test = {r["name"]: r for r in result["sets"]["test"]["rows"]}
    assert set(test) == {"cgan", "mean_image"} and result["sets"]["test"]["runs"] == 2
    assert all(0 < r["ssim"] <= 1 and 0 < r["mse"] < 1 for r in test.values())
    printed = capsys.readouterr().out
    assert "| (paper, its held-out subjects) | cGAN | 0.046 | 0.622 |" in printed


def test_paper_ssim_is_scikit_image_with_a_7x7_window_and_the_real_images_range():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    real = rng.uniform(0.2, 0.6, (3, 16, 16))
    pred = np.clip(real + rng.normal(0, 0.05, real.shape), 0, 1)
    scores = paper_scores(pred, real)
    for i in range(3):
        expected = structural_similarity(real[i], pred[i], win_size=7,
                                         data_range=real[i].max() - real[i].min())
        assert scores["ssim"][i] == pytest.approx(expected)
    assert scores["mse"] == pytest.approx(((pred - real) ** 2).mean(axis=(1, 2)))
    # a per-image range is not one fixed range: the score changes with it (why they are not comparable)
    fixed = structural_similarity(real[0], pred[0], win_size=7, data_range=1.0)
    assert abs(fixed - scores["ssim"][0]) > 1e-3


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


def test_ssim_maps_in_chunks_equal_one_call_and_keep_each_image_its_own():
    rng = np.random.default_rng(1)
    real = rng.uniform(0, 1, (7, 24, 24))
    pred = np.clip(real + rng.normal(0, 0.2, real.shape), 0, 1)
    whole = ssim_maps(pred, real, chunk=len(pred))
    for chunk in (1, 3):
        assert np.array_equal(ssim_maps(pred, real, chunk=chunk), whole)
    assert np.array_equal(ssim_maps(pred[4:5], real[4:5]), whole[4:5])
    assert not np.allclose(whole[0], whole[1])


def test_oracle_signal_is_the_truths_change_on_the_mean_anatomy():
    rng = np.random.default_rng(1)
    oracle = rng.uniform(0.3, 0.7, (10, 8, 8))
    mean_image = rng.uniform(0.2, 0.6, (8, 8))
    by_run = [np.array([0, 2, 4, 6, 8]), np.array([1, 3, 5, 7, 9])]
    out = oracle_signal(oracle, mean_image, by_run)
    for g in by_run:
        assert np.allclose(out[g].mean(axis=0), mean_image)  # each run averages to the mean image
        assert np.allclose(np.diff(out[g], axis=0), np.diff(oracle[g], axis=0))  # the same changes


def test_axial_figures_are_labelled_from_the_affine_in_one_orientation():
    """Every axial image is drawn i left to right, j upwards; the labels follow the affine's signs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meg2fmri.model.eval.figures import orientation, show_axial

    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    assert orientation(ras) == (("L", "R"), ("P", "A"))
    assert orientation(np.diag([-2.0, 2.0, 2.0, 1.0])) == (("R", "L"), ("P", "A"))  # LAS (radiological)
    assert orientation(np.diag([2.0, -2.0, 2.0, 1.0])) == (("L", "R"), ("A", "P"))
    image = np.zeros((4, 3))
    image[3, 0] = 1.0  # the last i (right on RAS), the first j (posterior)
    fig, ax = plt.subplots()
    shown = show_axial(ax, image, ras)
    drawn = shown.get_array()
    assert drawn.shape == (3, 4) and drawn[0, 3] == 1.0 and shown.origin == "lower"  # bottom right
    assert sorted(t.get_text() for t in ax.texts) == ["A", "L", "P", "R"]
    plt.close(fig)
