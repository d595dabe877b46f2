"""Every input checked before work, nothing corrupt written (issue 17): channels by name, partial
datasets made visible, re-runs refused, bad arguments refused with exit 2 and nothing written, and
``generate`` on other labs' recordings."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import mne
import nibabel as nib
import numpy as np
import pytest
from conftest import from_cache

from meg2fmri.ingest import cli as ingest_cli
from meg2fmri.model import generate_cli, train_cli
from meg2fmri.model.eval import evaluate_cli
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index

MEG = "sub-{s}/meg/sub-{s}_task-RDR_run-{r}_{suffix}"
DROPPED = ["MEG0113", "MEG0112"]


def samples(out: Path) -> dict:
    index = read_index(out)
    return {s.key: s for e in index.shards for s in read_shard(out / e.name)}


def tree(out: Path) -> dict[str, str]:
    """Every file under ``out`` -> its sha256 (what a re-run must leave unchanged)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def mark_bad(channels_tsv: Path, names: list[str]) -> None:
    with open(channels_tsv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        if row["name"] in names:
            row["status"] = "bad"
    with open(channels_tsv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def channel_faults(tiny_root: Path, tmp_path_factory) -> Path:
    """sub-01 and sub-03, runs 1-2: sub-01 run-2's FIF lacks two MEG channels, sub-03 run-1's FIF holds
    every channel in reverse order."""
    root = tmp_path_factory.mktemp("inputs") / "bids"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("derivatives", "sub-02", "sub-04"))
    fif = root / MEG.format(s="01", r=2, suffix="meg.fif")
    raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
    raw.drop_channels(DROPPED)
    raw.save(fif, overwrite=True, verbose="error")
    fif = root / MEG.format(s="03", r=1, suffix="meg.fif")
    raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
    raw.reorder_channels(raw.ch_names[::-1])
    raw.save(fif, overwrite=True, verbose="error")
    return root


def test_channels_are_read_by_name_and_a_run_lacking_some_fails_alone(channel_faults: Path, ingested: Path,
                                                                      tiny_root: Path, tmp_path: Path,
                                                                      ray_session, capsys):
    out = tmp_path / "out"
    reference = read_index(ingested)
    common = ["--quiet", "--bids-root", str(channel_faults), "--out", str(out), "--runs", "1,2",
              "--held-out", "03", "--held-out-stories", "none", "--slice", str(reference.runs[0]["slice"]),
              "--shard-samples", "30"]
    assert ingest_cli.main(common) == 1  # one run failed; the rest is ingested
    printed = capsys.readouterr().out
    index = read_index(out)
    assert [(f["subject"], f["run"]) for f in index.failed] == [("01", 2)]
    error = index.failed[0]["error"]
    assert "sub-01_run-2" in error and "lacks 2 of the dataset's 328 channels (MEG0112, MEG0113)" in error
    assert "mark them 'bad' in this run's channels.tsv" in error and f"FAILED: {error}" in printed
    assert index.features["width"] == 328 and index.features["channels"]["bad"] == []
    # the permuted file gives the very samples its unpermuted original gave
    ours, theirs = samples(out), samples(ingested)
    keys = [k for k in ours if k.startswith("sub-03_run-1_")]
    assert len(keys) == 20
    for key in keys:
        np.testing.assert_array_equal(ours[key].meg, theirs[key].meg)
        np.testing.assert_array_equal(ours[key].fmri, theirs[key].fmri)

    # the same --out with other options is refused, naming them; nothing changes
    before = tree(out)
    assert ingest_cli.main([*common, "--lag", "4"]) == 2
    err = capsys.readouterr().err
    assert "holds shards made with other options (--lag: 5.0 -> 4.0)" in err and "--overwrite" in err
    assert tree(out) == before

    # the missing channels marked bad: excluded from every run, one width for all; --overwrite replaces
    # the shards whole (new names, the old ones gone once the new index is in place)
    mark_bad(channel_faults / MEG.format(s="01", r=2, suffix="channels.tsv"), DROPPED)
    try:
        assert ingest_cli.main([*common, "--lag", "4", "--overwrite"]) == 0
    finally:
        shutil.copyfile(tiny_root / MEG.format(s="01", r=2, suffix="channels.tsv"),
                        channel_faults / MEG.format(s="01", r=2, suffix="channels.tsv"))
    index = read_index(out)
    assert not index.failed and index.features["width"] == 326
    assert index.features["channels"]["bad"] == sorted(DROPPED)
    assert not set(DROPPED) & set(index.features["names"])
    assert index.options["pairing"]["lag"] == 4.0
    listed = {Path(e.name).name for e in index.shards}
    assert {p.name for p in (out / "shards").iterdir()} == listed  # no shard of the old index is left
    assert not listed & {Path(name).name for name in before if name.startswith("shards/")}
    assert all(s.meg.shape == (326,) for s in samples(out).values())


def test_a_sample_of_another_shape_is_refused_by_the_shard_writer(tmp_path: Path):
    import io

    from meg2fmri.shards.errors import ShardIntegrityError
    from meg2fmri.shards.format import Sample, TargetLayout, write_shard

    meta = {"subject": "01", "run": 1, "split": "train", "story_time_s": 0.0, "meg_sample": 0,
            "fmri_volume": 0, "fmri_time_s": 0.0, "slice": 3}
    layout = TargetLayout.slice_of(4)
    good = Sample("sub-01_run-1_w0000", np.zeros(328, np.float32), np.zeros((4, 4), np.float32), meta)
    narrow = Sample("sub-01_run-2_w0000", np.zeros(326, np.float32), np.zeros((4, 4), np.float32), meta)
    assert write_shard(io.BytesIO(), [good], expect=(328, layout)) == 1
    with pytest.raises(ShardIntegrityError, match=r"sub-01_run-2_w0000: MEG float32 \(326,\), the index "
                                                  r"says float32 \(328,\)"):
        write_shard(io.BytesIO(), [good, narrow], expect=(328, layout))


def test_a_straggler_of_a_superseded_attempt_writes_nothing(tiny_root: Path, tmp_path: Path, ray_session):
    """A task of an ingest whose driver was killed, released after a resumed ingest finished: it is
    fenced off at its first write, whether it would pair a cached run or decode one afresh."""
    import dataclasses

    from meg2fmri.ingest.config import IngestConfig
    from meg2fmri.ingest.driver import run_ingest
    from meg2fmri.ingest.fence import ATTEMPT
    from meg2fmri.ingest.pairing import PairingConfig
    from meg2fmri.ingest.plan import plan
    from meg2fmri.ingest.task import decode_run, ingest_run
    from meg2fmri.shards.errors import StaleAttemptError

    out = tmp_path / "out"
    config = IngestConfig(bids_root=tiny_root, out=out, subjects=("01", "02"), runs=(1,), held_out=("02",),
                          held_out_stories=(), pairing=PairingConfig(slice=5))
    run_ingest(config, progress=False)
    first = (out / ATTEMPT).read_text()
    index = read_index(out)
    run_ingest(config, progress=False)  # the resume: nothing to redo, a new attempt
    assert (out / ATTEMPT).read_text() != first
    before = tree(out)
    stale = dataclasses.replace(config, attempt=first, pairing=dataclasses.replace(
        config.pairing, channels=tuple(index.features["channels"]["names"])))
    task = plan(config)[0][0]
    result = ingest_run(task, stale)
    assert not result.ok and "superseded" in result.error
    with pytest.raises(StaleAttemptError, match="superseded"):
        decode_run(task, stale, lambda stage: None)
    assert tree(out) == before  # identical, and no orphan


def test_degenerate_ridge_says_so_and_a_fitted_one_does_not():
    """A feature-target relation whose sign flips between the two subjects cannot generalise to a new
    subject: grouped cross-validation shrinks every target to the mean image, and the fit says so."""
    from meg2fmri.model.eval.baselines import fit_ridge

    rng = np.random.default_rng(0)
    meta = [{"subject": s, "run": r, "fmri_volume": v} for s in ("01", "02") for r in (1, 2, 3, 4)
            for v in range(50)]
    features = rng.standard_normal((len(meta), 12))
    sign = np.array([1.0 if m["subject"] == "01" else -1.0 for m in meta])[:, None, None]
    change = (features[:, :9] * 0.05).reshape(-1, 3, 3)
    noise = rng.standard_normal(change.shape) * 0.01
    mean_image = np.full((3, 3), 0.5)
    flipped = fit_ridge(features, 0.5 + sign * change + noise, meta, mean_image)
    assert "100% of the targets chose the largest penalty" in flipped.degenerate()
    assert flipped.summary()["degenerate"] == flipped.degenerate()
    assert fit_ridge(features, 0.5 + change + noise, meta, mean_image).degenerate() is None


def test_a_partial_dataset_is_named_by_train_and_evaluate(channel_faults: Path, tmp_path: Path, ray_session,
                                                          capsys):
    out, runs = tmp_path / "ingest", tmp_path / "runs"
    assert ingest_cli.main(["--quiet", "--bids-root", str(channel_faults), "--out", str(out),
                            "--held-out", "03", "--held-out-stories", "3", "--slice", "7",
                            "--stride", "0.71"]) == 1
    capsys.readouterr()
    assert train_cli.main(["--shards", str(out), "--out", str(runs / "cgan"), "--epochs", "1", "--quiet",
                           "--device", "cpu", "--max-steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "1 run(s) of the dataset are not in these shards" in err and "sub-01_run-2 (train)" in err
    assert evaluate_cli.main(["--shards", str(out), "--runs", str(runs), "--out", str(tmp_path / "eval"),
                              "--bootstrap", "50", "--null-draws", "50"]) == 0
    assert "sub-01_run-2 (train): its MEG file lacks 2" in capsys.readouterr().err
    report = (tmp_path / "eval" / "results.md").read_text()
    assert "Partial dataset: 1 run(s) are not in these shards" in report
    assert "- sub-01_run-2 (train)" in report
    # one training run is left: no grouped cross-validation, so ridge is not fitted, and says why
    assert "**ridge was not fitted** (no row): grouped cross-validation needs at least 2" in report


def bad_events(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sub-04_task-RDR_run-3_events.tsv"
    path.write_text("onset\tduration\ttrial_type\tvalue\tsample\n" + "".join(r + "\n" for r in rows))
    return path


def command_cases(tiny_root: Path, ingested: Path, volume_runs: Path, tmp: Path) -> list:
    """(command, argv, phrase in the one-line error, path that must not appear). Each row of the issue's
    table that is a bad argument or a bad output."""
    fif = str(tiny_root / MEG.format(s="04", r=3, suffix="meg.fif"))
    model = str(volume_runs / "cgan")
    new = tmp / "new"
    train = ["--shards", str(ingested), "--quiet", "--device", "cpu"]
    gen = ["--model", model, "--meg", fif, "--quiet"]
    return [
        (train_cli, [*train, "--out", str(new), "--epochs", "0"], "--epochs must be at least 1", new),
        (train_cli, [*train, "--out", str(new), "--epochs", "-1"], "--epochs must be at least 1", new),
        (train_cli, [*train, "--out", str(new), "--batch-size", "0"], "--batch-size must be at least 1", new),
        (train_cli, [*train, "--out", "/proc/x/run"], "--out /proc/x/run: cannot write there", None),
        (ingest_cli, ["--quiet", "--bids-root", str(tiny_root), "--out", "/proc/x"],
         "--out /proc/x: cannot write there", None),
        (ingest_cli, ["--quiet", "--bids-root", str(tiny_root), "--out", str(new), "--slice", "99"],
         "--slice 99: ", new),
        (evaluate_cli, ["--shards", str(ingested), "--runs", str(volume_runs), "--out", "/proc/x"],
         "--out /proc/x: cannot write there", None),
        (evaluate_cli, ["--shards", str(ingested), "--runs", str(tmp / "none"), "--out", str(new)],
         "no trained cGAN", new),
        (generate_cli, [*gen, "--out", "/proc/x/a.nii.gz"], "--out /proc/x: cannot write there", None),
        (generate_cli, [*gen, "--out", str(new / "a.nii.gz"), "--events",
                        str(bad_events(tmp / "na", ["n/a\t0.0\tBeg\t1\t0"]))], "row 1 has onset n/a", new),
        (generate_cli, [*gen, "--out", str(new / "a.nii.gz"), "--events",
                        str(bad_events(tmp / "text", ["7.5s\t0.0\tBeg\t1\t0"]))],
         "row 1 has onset '7.5s', not a number or n/a", new),
        (generate_cli, [*gen, "--out", str(new / "a.nii.gz"), "--events",
                        str(tiny_root / "sub-04/func/sub-04_task-RDR_run-3_events.tsv")],
         "is the func session's events file", new),
    ]


def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tiny_root: Path, ingested: Path,
                                                             volume_runs: Path, tmp_path: Path, capsys):
    for command, argv, phrase, path in command_cases(tiny_root, ingested, volume_runs, tmp_path):
        assert command.main(argv) == 2, (command.__name__, argv)
        err = capsys.readouterr().err
        assert phrase in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        if path is not None:
            assert not path.exists(), argv
    assert not Path("/proc/x").exists()


def test_generate_reads_na_events_and_writes_a_bids_derivatives_tree(volume_runs: Path, tiny_root: Path,
                                                                     tmp_path: Path):
    import json

    events = bad_events(tmp_path / "meg", ["2.0\tn/a\tBeg\t1\tn/a", "20.0\tn/a\tEnd\t2\tn/a",
                                           "25.0\tn/a\tbutton\tn/a\tn/a"])
    out = tmp_path / "derivs"
    assert generate_cli.main(["--model", str(volume_runs / "cgan"), "--quiet", "--events", str(events),
                              "--meg", str(tiny_root / MEG.format(s="04", r=3, suffix="meg.fif")),
                              "--out", str(out)]) == 0
    root = out / "derivatives" / "meg2fmri"
    image = root / "sub-04/func/sub-04_task-RDR_run-3_desc-meg2fmri_bold.nii.gz"
    assert nib.load(image).shape[-1] == int((18 - 0.64) // 0.71) + 1
    sidecar = json.loads(image.with_name("sub-04_task-RDR_run-3_desc-meg2fmri_bold.json").read_text())
    assert sidecar["Timing"]["story_onset_s"] == 2.0 and sidecar["Timing"]["story_duration_s"] == 18.0
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "meg2fmri" and description["GeneratedBy"][0]["Version"]
    # an events file under another name, in a plain folder, is the user's own MEG onsets: accepted
    plain = tmp_path / "onsets" / "story3.tsv"
    plain.parent.mkdir()
    shutil.copy(events, plain)
    single = tmp_path / "single_bold.nii.gz"
    assert generate_cli.main(["--model", str(volume_runs / "cgan"), "--quiet", "--events", str(plain),
                              "--meg", str(tiny_root / MEG.format(s="04", r=3, suffix="meg.fif")),
                              "--out", str(single)]) == 0
    np.testing.assert_array_equal(nib.load(single).get_fdata(), nib.load(image).get_fdata())


def test_generate_needs_only_the_channels_a_meg_only_bandpower_model_reads(ingested: Path, tiny_root: Path,
                                                                          tmp_path: Path, capsys):
    """An Elekta/TRIUX-like file: the 306 MEG channels and STI101, without BIO001, IAS* and SYS201."""


    shards = from_cache(ingested, tmp_path / "bandpower", "--features", "bandpower", "--stride", "1.5")
    run = tmp_path / "runs" / "cgan"
    assert train_cli.main(["--shards", str(shards), "--out", str(run), "--epochs", "1", "--quiet",
                           "--device", "cpu", "--meg-only", "--max-steps", "2"]) == 0
    fif = tiny_root / MEG.format(s="04", r=3, suffix="meg.fif")
    raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
    raw.pick([c for c in raw.ch_names if c.startswith("MEG") or c == "STI101"])
    assert len(raw.ch_names) == 307
    triux = tmp_path / "sub-99_task-RDR_run-3_meg.fif"
    raw.save(triux, verbose="error")
    common = ["--quiet", "--start", "5", "--stop", "30"]
    out = tmp_path / "triux_bold.nii.gz"
    assert generate_cli.main(["--model", str(run), "--meg", str(triux), "--out", str(out), *common]) == 0
    whole = tmp_path / "whole_bold.nii.gz"
    assert generate_cli.main(["--model", str(run), "--meg", str(fif), "--out", str(whole), *common]) == 0
    # the model reads the MEG channels only: the same series from either file
    np.testing.assert_allclose(nib.load(out).get_fdata(), nib.load(whole).get_fdata(), atol=1e-6)
    # a mean-feature model needs every channel of its training vectors, and says why
    mean_run = tmp_path / "runs" / "mean"
    assert train_cli.main(["--shards", str(ingested), "--out", str(mean_run), "--epochs", "1", "--quiet",
                           "--device", "cpu", "--meg-only", "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert generate_cli.main(["--model", str(mean_run), "--meg", str(triux), *common,
                              "--out", str(tmp_path / "no.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "21 are not in this recording" in err and "--features bandpower" in err


def test_a_bold_header_in_milliseconds_is_read_as_such(tiny_root: Path, tmp_path: Path):
    from meg2fmri.ingest.bids_io import find_runs
    from meg2fmri.ingest.preprocess import RunInputError, load_bold
    from meg2fmri.shards.commit import Location

    root = tmp_path / "bids"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("derivatives", "sub-02", "sub-03",
                                                                   "sub-04", "*.fif"))
    bold = root / "sub-01/func/sub-01_task-RDR_run-1_bold.nii.gz"
    img = nib.load(bold)
    header = img.header.copy()
    header.set_xyzt_units("mm", "msec")
    header.set_zooms((*header.get_zooms()[:3], 710.0))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header), bold)
    (root / MEG.format(s="01", r=1, suffix="meg.fif")).write_bytes(b"")  # find_runs pairs by name
    files = find_runs(Location(root))[0][0]
    volumes, _ = load_bold(files, 0.71)  # 710 ms is 0.71 s: accepted
    assert volumes.shape[0] == img.shape[3]
    header.set_xyzt_units("mm", "sec")  # the same number in seconds is refused, named as such
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header), bold)
    with pytest.raises(RunInputError, match=r"TR 710.0000 s in the header but RepetitionTime 0.71 s"):
        load_bold(find_runs(Location(root))[0][0], 0.71)
