"""``bench study`` (``make study``) end to end at a tiny scale: the learning curve's nested training sets
share one test set and one ROI, every row is scored, what no later step reads is deleted, and a study
killed mid-step and started again redoes only what had not finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TINY = ["--subjects", "01-04", "--held-out", "04", "--train-stories", "3", "--test-stories", "1",
        "--duration", "30", "--shape", "24x24x18", "--sizes", "2,3", "--epochs", "1", "--volume-epochs", "1",
        "--bootstrap", "50", "--null-draws", "50"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "bench"), "study", *args], capture_output=True,
                          text=True)


def kill_after(out: Path, step: str, *args: str, timeout: float = 900) -> set[str]:
    """Start the study, kill its whole process group (as a lost session would) as soon as ``step`` has
    finished and the next one has begun; the steps finished by then."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bench"), "study", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    steps_file, deadline = out / "steps.json", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if steps_file.is_file():
                try:
                    done = set(json.loads(steps_file.read_text())["steps"])
                except json.JSONDecodeError:  # written by os.replace, so only while it is created
                    done = set()
                if step in done:
                    time.sleep(1.0)  # into the next step
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return set(json.loads(steps_file.read_text())["steps"])
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    raise AssertionError(f"the study ended (exit {proc.returncode}) before {step} finished")


def test_study_writes_a_learning_curve_prunes_and_resumes_after_a_kill(tmp_path: Path):
    out = tmp_path / "study"
    # killed once the largest slice set is evaluated (its shards already deleted) and the next is pairing
    before = kill_after(out, "evaluate-slice-3", "--out", str(out), *TINY)
    assert {"synth", "ingest-slice-3", "evaluate-slice-3"} <= before and "evaluate-volume-2" not in before
    first_eval = (out / "slice" / "stories-03" / "eval" / "results.json").read_bytes()
    done = bench("--out", str(out), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    ran = {line.split(":")[1].strip() for line in done.stdout.splitlines()
           if line.startswith("study: ") and "done before" not in line and "deleted" not in line}
    skipped = {line.split(":")[1].strip() for line in done.stdout.splitlines() if "done before" in line}
    assert skipped == before and not ran & before and "evaluate-volume-2" in ran, done.stdout
    assert (out / "slice" / "stories-03" / "eval" / "results.json").read_bytes() == first_eval
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
    assert not (out / "bids" / "sub-04" / "meg" / "sub-04_task-RDR_run-1_meg.json").exists()  # not a block
    # pruned as the study went: the raw MEG once decoded, each size's shards once evaluated; what the
    # report and a reader need stays (index, cache, models, evaluations, the sidecars and the stimuli)
    assert not list((out / "bids").glob("sub-*/meg/*_meg.fif")) and not list(out.glob("*/*/ingest/shards"))
    assert {p["what"] for p in study["pruned"]} >= {
        "bids/sub-*/meg/*_meg.fif", "slice/stories-02/ingest/shards", "volume/stories-03/ingest/shards"}
    assert all(p["bytes"] > 0 for p in study["pruned"])
    assert (out / "slice" / "stories-03" / "ingest" / "cache.zarr").is_dir()
    assert (out / "slice" / "stories-03" / "runs" / "cgan" / "checkpoint.pt").is_file()
    assert (out / "learning_curve.png").stat().st_size > 10_000
    assert "## slice targets" in (out / "study.md").read_text()
    assert study["peak_bytes"] > 0 and all(s["seconds"] > 0 for s in study["steps"].values())
    assert study["peak_step"].removeprefix("after ") in study["steps"]  # the step under way at the peak
    assert f"during {study['peak_step']}" in (out / "study.md").read_text()


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
