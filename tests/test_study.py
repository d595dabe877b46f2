"""``bench study`` (``make study``) end to end at a tiny scale: the learning curve's nested training sets
share one test set and one ROI, every row is scored, and a study started again redoes only what is
missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

TINY = ["--subjects", "01-04", "--held-out", "04", "--train-stories", "3", "--test-stories", "1",
        "--duration", "30", "--shape", "24x24x18", "--sizes", "2,3", "--epochs", "1", "--volume-epochs", "1",
        "--bootstrap", "50", "--null-draws", "50"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "bench"), "study", *args], capture_output=True,
                          text=True)


def test_study_writes_a_learning_curve_and_resumes_where_it_stopped(tmp_path: Path):
    out = tmp_path / "study"
    done = bench("--out", str(out), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    curve = study["curve"]
    assert set(curve) == {"slice", "volume"} and set(curve["slice"]) == set(curve["volume"]) == {"2", "3"}
    for size, s in curve["slice"].items():
        assert {"cgan", "shuffled", "ridge", "stimulus", "mean_image", "oracle"} <= set(s["rows"]), size
        assert s["paired"]["ridge-mean_image"]["roi_r"] is not None
    assert "cgan" in curve["volume"]["3"]["rows"] and "cgan" not in curve["volume"]["2"]["rows"]
    assert {"ridge", "stimulus", "mean_image", "oracle"} <= set(curve["volume"]["2"]["rows"])
    # nested training sets, one test set, one ROI (the largest training set's, given to the smaller)
    for target in ("slice", "volume"):
        small, large = curve[target]["2"], curve[target]["3"]
        assert small["runs"] == large["runs"] == 1 and small["samples"] == large["samples"]
        assert small["roi"]["rule"].startswith("given:") and "training" in large["roi"]["rule"]
        # the slice pairs the same pixels at every size; a volume's mask is its own training runs', so a
        # few of the ROI's voxels may lie outside a smaller set's mask: dropped there, and counted
        assert small["roi"]["values"] + small["roi"]["outside_this_mask"] == large["roi"]["values"]
    assert curve["slice"]["2"]["roi"]["outside_this_mask"] == 0
    roi = [np.load(out / "slice" / f"stories-0{n}" / "eval" / "roi.npz")["roi"] for n in (2, 3)]
    assert np.array_equal(*roi)
    # whole-brain: each size has its own training mask; the ROI is the largest's voxels on the grid
    import nibabel as nib

    grids = [np.asarray(nib.load(out / "volume" / f"stories-0{n}" / "eval" / "roi.nii.gz").dataobj) > 0
             for n in (2, 3)]
    assert not (grids[0] & ~grids[1]).any() and grids[1].sum() == curve["volume"]["3"]["roi"]["values"]
    assert grids[0].sum() == curve["volume"]["2"]["roi"]["values"] > 0
    index = [json.loads((out / "slice" / f"stories-0{n}" / "ingest" / "index.json").read_text())
             for n in (2, 3)]
    assert index[0]["counts"]["train"] < index[1]["counts"]["train"]
    assert study["hours"]["2"] < study["hours"]["3"]
    # the whole-brain predictions are deleted (the maps stay); the dataset's FIFs are at 200 Hz
    assert not (out / "volume" / "stories-03" / "eval" / "predictions").exists()
    sidecar = out / "bids" / "sub-04" / "meg" / "sub-04_task-RDR_run-4_meg.json"
    assert json.loads(sidecar.read_text())["SamplingFrequency"] == 200
    assert not (out / "bids" / "sub-04" / "meg" / "sub-04_task-RDR_run-1_meg.fif").exists()  # not a block
    assert (out / "learning_curve.png").stat().st_size > 10_000
    assert "## slice targets" in (out / "study.md").read_text()
    assert study["peak_bytes"] > 0 and all(s["seconds"] > 0 for s in study["steps"].values())

    # a study stopped before its last slice evaluation: only that step runs again, to the same figures
    first = curve["slice"]["2"]["rows"]
    steps = json.loads((out / "steps.json").read_text())
    del steps["steps"]["evaluate-slice-2"]
    (out / "steps.json").write_text(json.dumps(steps))
    again = bench("--out", str(out), *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    ran = {line.split(":")[1].strip() for line in again.stdout.splitlines()
           if line.startswith("study: ") and "done before" not in line}
    assert ran == {"evaluate-slice-2"}, again.stdout
    assert again.stdout.count("done before") == len(steps["steps"])
    assert json.loads((out / "study.json").read_text())["curve"]["slice"]["2"]["rows"] == first


def test_evaluate_refuses_an_roi_of_another_target(tmp_path: Path, ingested: Path):
    """--roi of another shape (e.g. a volume ROI on slice shards), or no such file: exit 2."""
    from meg2fmri.model.eval import evaluate_cli

    bad = tmp_path / "roi.npz"
    np.savez(bad, roi=np.ones((7, 7), dtype=bool))
    common = ["--shards", str(ingested), "--out", str(tmp_path / "eval"), "--bootstrap", "10",
              "--null-draws", "10"]
    assert evaluate_cli.main([*common, "--roi", str(bad)]) == 2
    assert evaluate_cli.main([*common, "--roi", str(tmp_path / "missing.npz")]) == 2
    assert not (tmp_path / "eval" / "results.json").exists()
