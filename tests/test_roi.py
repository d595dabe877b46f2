"""The headline ROI: chosen from the training split only, by inter-subject correlation, and scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from meg2fmri.model import train_cli
from meg2fmri.model.eval import evaluate_cli
from meg2fmri.model.eval.evaluate import EvalConfig, load_split
from meg2fmri.model.eval.metrics import voxel_r
from meg2fmri.model.eval.roi import training_roi


def test_the_roi_is_where_subjects_share_a_response():
    """Pixels 0-9 carry a story response every subject shares; the rest is each subject's own noise."""
    rng = np.random.default_rng(0)
    images, meta = [], []
    for story in (1, 2):
        response = rng.standard_normal((60, 10))
        for subject in ("01", "02", "03"):
            image = rng.standard_normal((60, 100))
            image[:, :10] += 2 * response
            images.append(image)
            meta += [{"subject": subject, "run": story, "fmri_volume": v} for v in range(60)]
    roi, how = training_roi(np.concatenate(images), meta, np.ones(100, dtype=bool), fraction=0.1)
    assert np.flatnonzero(roi).tolist() == list(range(10))
    assert how["values"] == 10 and how["stories"] == [1, 2] and how["training_isc_in_roi"] > 0.6


def test_evaluate_scores_the_training_roi_first(ingested: Path, tmp_path: Path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "eval"
    assert train_cli.main(["--shards", str(ingested), "--out", str(runs / "cgan"), "--epochs", "1", "--quiet",
                           "--device", "cpu", "--max-steps", "3"]) == 0
    assert evaluate_cli.main(["--shards", str(ingested), "--runs", str(runs), "--out", str(out),
                              "--bootstrap", "50", "--null-draws", "50"]) == 0
    capsys.readouterr()
    result = json.loads((out / "results.json").read_text())
    # the ROI is what the training split alone gives (held-out subjects and stories never enter)
    train, _ = load_split(EvalConfig(shards=str(ingested), runs=str(runs), out=str(out)), "train")
    mean_image = train.fmri.mean(axis=0)
    expected, how = training_roi(train.fmri, train.meta, mean_image > 0.2 * mean_image.max())
    saved = np.load(out / "roi.npz")["roi"]
    np.testing.assert_array_equal(saved, expected)
    assert result["settings"]["roi"] == how and how["subjects"] == ["01", "03"]
    # its row is voxel r over the ROI, run by run, of the saved predictions
    test = result["sets"]["test"]
    predictions = np.load(out / "predictions" / "test" / "cgan.npz")
    keys = predictions["keys"].tolist()
    runs_of = sorted({k.rsplit("_w", 1)[0] for k in keys})
    rows_of = [[i for i, k in enumerate(keys) if k.startswith(r + "_w")] for r in runs_of]
    per_run = [voxel_r(predictions["predictions"][rows], predictions["targets"][rows], saved)
               for rows in rows_of]
    row = {r["name"]: r for r in test["rows"]}["cgan"]
    assert abs(row["roi_r"] - np.mean(per_run)) < 1e-6
    assert 0 < row["roi_r_p"] <= 1 and "roi_r" in test["paired_differences"]["cgan-mean_image"]
    assert "Headline: voxel r in the ROI" in (out / "results.md").read_text()
