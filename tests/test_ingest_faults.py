"""ingest when things go wrong: faulty runs, bad input, bad usage, and kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mne
import nibabel as nib
import numpy as np
import pytest
import zarr

from meg2fmri.ingest import cache
from meg2fmri.ingest import cli as ingest_cli
from meg2fmri.ingest.config import IngestConfig
from meg2fmri.ingest.driver import run_ingest
from meg2fmri.ingest.pairing import PairingConfig
from meg2fmri.shards.commit import Location
from meg2fmri.shards.index import read_index

STEM = "sub-{s}/{d}/sub-{s}_task-RDR_run-{r}_{x}"


def ingest(*args: str) -> int:
    return ingest_cli.main(["--quiet", *args])


def test_known_trigger_faults_are_repaired_with_a_warning(defects_root: Path, tmp_path: Path, ray_session,
                                                          capsys):
    out = tmp_path / "out"
    assert ingest("--bids-root", str(defects_root), "--out", str(out), "--held-out", "09") == 0
    printed = capsys.readouterr().out
    for subject, run, true_start in [("08", 16, 1.839), ("09", 7, -0.013)]:
        attrs = zarr.open_group(out / f"cache.zarr/sub-{subject}_run-{run}", mode="r").attrs
        assert attrs["meg_story_onset_s"] == pytest.approx(true_start, abs=2e-3)
        assert f"sub-{subject}_run-{run}: Beg/End spacing" in printed
        assert "story onset = End - duration" in printed
    for subject, run in [("08", 7), ("09", 16)]:  # the healthy runs keep their Beg trigger
        attrs = zarr.open_group(out / f"cache.zarr/sub-{subject}_run-{run}", mode="r").attrs
        assert attrs["warnings"] == []
    # sub-09 run-7 starts 13 ms before the file: the paper's single epoch is clamped, with a warning
    assert ingest("--out", str(out), "--from-cache", "--pairing", "paper", "--held-out", "09") == 2
    assert "holds shards made with other options (--pairing: 'windows' -> 'paper')" in capsys.readouterr().err
    assert ingest("--out", str(out), "--from-cache", "--pairing", "paper", "--held-out", "09",
                  "--overwrite") == 0
    assert "sub-09_run-7: the MEG file starts 0.010 s after the story" in capsys.readouterr().out


def break_dataset(root: Path) -> dict[tuple[str, int], tuple[str, str]]:
    """Seven different faults, one per run; returns (file name, phrase) expected in each error."""
    fif = root / STEM.format(s="01", d="meg", r=1, x="meg.fif")
    with open(fif, "r+b") as f:
        f.truncate(fif.stat().st_size // 3)
    (root / STEM.format(s="01", d="func", r=2, x="events.tsv")).unlink()
    sidecar = root / STEM.format(s="02", d="func", r=1, x="bold.json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "RepetitionTime": 2.0}))
    fif = root / STEM.format(s="02", d="meg", r=2, x="meg.fif")
    raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
    raw._data[raw.ch_names.index("STI101")] = 0
    raw.save(fif, overwrite=True, verbose="error")
    bold = root / STEM.format(s="03", d="func", r=1, x="bold.nii.gz")
    img = nib.load(bold)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[3, 4, 5, 6] = np.nan
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, img.affine, header), bold)
    bold = root / STEM.format(s="03", d="func", r=2, x="bold.nii.gz")
    with open(bold, "r+b") as f:
        f.truncate(bold.stat().st_size // 2)
    bold = root / STEM.format(s="04", d="func", r=2, x="bold.nii.gz")
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), bold)  # one 3D volume
    return {("01", 1): ("sub-01_task-RDR_run-1_meg.fif", "cannot read the FIF"),
            ("01", 2): ("sub-01_task-RDR_run-2_events.tsv", "is missing"),
            ("02", 1): ("sub-02_task-RDR_run-1_bold.nii.gz", "TR"),
            ("02", 2): ("sub-02_task-RDR_run-2_meg.fif", "no story events"),
            ("03", 1): ("sub-03_task-RDR_run-1_bold.nii.gz", "NaN"),
            ("03", 2): ("sub-03_task-RDR_run-2_bold.nii.gz", "cannot read the NIfTI"),
            ("04", 2): ("sub-04_task-RDR_run-2_bold.nii.gz", "expected a 4D BOLD run")}


def test_a_faulty_run_fails_alone_and_is_redone_once_fixed(tiny_root: Path, tmp_path: Path, ray_session,
                                                           capsys):
    root = tmp_path / "bids"
    shutil.copytree(tiny_root, root)
    expected = break_dataset(root)
    out = tmp_path / "out"
    # every training run (sub-01 and sub-03, stories 1-2) is broken: no slice can be chosen from them,
    # so nothing is paired, and every run says why (the failures name their file, the rest --slice)
    assert ingest("--bids-root", str(root), "--out", str(out)) == 1
    printed = capsys.readouterr().out
    assert printed.count("not paired: no training run could be ingested") == 5
    assert not (out / "index.json").exists()
    assert ingest("--bids-root", str(root), "--out", str(out), "--slice", "4") == 1
    printed = capsys.readouterr().out
    index = read_index(out)
    failed = {(f["subject"], f["run"]): f["error"] for f in index.failed}
    assert set(failed) == set(expected)
    for key, (name, phrase) in expected.items():
        assert name in failed[key] and phrase in failed[key], failed[key]
        assert f"FAILED: {failed[key]}" in printed
    assert [(r["subject"], r["run"]) for r in index.runs] == [("01", 3), ("02", 3), ("03", 3), ("04", 1),
                                                              ("04", 3)]
    assert (index.count("train"), index.count("seen_story"), index.count("test")) == (0, 20, 40)
    # fix one run: only that run is decoded again, the others are not redone
    shutil.copy(tiny_root / STEM.format(s="01", d="func", r=2, x="events.tsv"),
                root / STEM.format(s="01", d="func", r=2, x="events.tsv"))
    report = run_ingest(IngestConfig(bids_root=root, out=out, pairing=PairingConfig(slice=4)), progress=False)
    by_run = {(r.subject, r.run): r for r in report.results}
    assert by_run[("01", 2)].ok and by_run[("01", 2)].decoded
    assert by_run[("04", 1)].resumed and not by_run[("04", 1)].decoded
    assert len(report.failed) == 6
    assert report.index.count("train") == 20  # sub-01 story 2 is a training run


@pytest.mark.parametrize(("args", "message"), [
    (["--subjects", "01,77"], "unknown subject id(s) ['77']"),
    (["--runs", "9"], "unknown run(s) [9]"),
])
def test_bad_selection_fails_before_any_work(tiny_root: Path, tmp_path: Path, capsys, args, message):
    out = tmp_path / "out"
    assert ingest("--bids-root", str(tiny_root), "--out", str(out), *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_empty_bids_root_and_foreign_output_are_refused(tiny_root: Path, tmp_path: Path, ingested: Path,
                                                        capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ingest("--bids-root", str(empty), "--out", str(tmp_path / "o1")) == 2
    assert "no task-RDR MEG (.fif) or BOLD (.nii.gz) files" in capsys.readouterr().err
    other = tmp_path / "other"  # the same files under another dataset description
    shutil.copytree(tiny_root, other, ignore=shutil.ignore_patterns("*.fif", "*.nii.gz", "*.wav"))
    description = json.loads((other / "dataset_description.json").read_text())
    (other / "dataset_description.json").write_text(json.dumps({**description, "Name": "another"}))
    (other / "sub-01/meg/sub-01_task-RDR_run-1_meg.fif").write_bytes(b"")
    (other / "sub-01/func/sub-01_task-RDR_run-1_bold.nii.gz").write_bytes(b"")
    before = read_index(ingested).shards
    assert ingest("--bids-root", str(other), "--out", str(ingested)) == 2
    assert "holds the shards of another dataset" in capsys.readouterr().err
    assert read_index(ingested).shards == before
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "thesis.tex").write_text("precious")
    assert ingest("--bids-root", str(tiny_root), "--out", str(mixed)) == 2
    assert "holds files that ingest did not write" in capsys.readouterr().err


def shard_digests(out: Path) -> dict[str, str]:
    return {e.name: e.sha256 for e in read_index(out).shards}


def committed(out: Path) -> list:
    """Runs whose cache group is committed (its last attribute update written)."""
    return cache.list_runs(Location(out)) if (out / "cache.zarr").is_dir() else []


def test_kill_9_then_rerun_gives_the_same_shards(tiny_root: Path, tmp_path: Path, ingested: Path,
                                                 ray_session):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "meg2fmri.ingest.cli", "--bids-root", str(tiny_root), "--out", str(out),
           "--shard-samples", "30", "--workers", "1", "--quiet"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while len(committed(out)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "ingest never got going"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    cached = len(committed(out))
    assert not (out / "index.json").exists()
    report = run_ingest(IngestConfig(bids_root=tiny_root, out=out, shard_samples=30), progress=False)
    assert not report.failed
    decoded_again = sum(1 for r in report.results if r.decoded)
    assert decoded_again <= 12 - cached  # runs cached before the kill are not decoded again
    assert shard_digests(out) == shard_digests(ingested)
    # the index's per-run profiles, of runs resumed and of runs paired again alike
    assert [r["slice_correlation"] for r in read_index(out).runs] == \
        [r["slice_correlation"] for r in read_index(ingested).runs]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_uses_an_existing_cluster(tiny_root: Path, tmp_path: Path):
    """A Ray head started separately (as on a cluster), reached with --ray-address."""
    port = free_port()
    # loopback only; Ray's token authentication would need the token handed to the driver
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                             "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "meg2fmri.ingest.cli", "--bids-root", str(tiny_root), "--out", str(out),
               "--subjects", "01,02", "--runs", "1", "--held-out", "02", "--held-out-stories", "none",
               "--ray-address", f"127.0.0.1:{port}", "--quiet"]
        for _ in range(60):  # the head needs a few seconds to accept drivers
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            if result.returncode == 0 or "ConnectionError" not in result.stderr:
                break
            time.sleep(1)
        assert result.returncode == 0, result.stderr[-2000:]
        assert read_index(out).count() == 2 * 20
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_identical_recordings_are_named_and_the_policy_applies(tiny_root: Path, tmp_path: Path, ray_session,
                                                               capsys):
    """sub-03's run-1 MEG replaced by a byte copy of sub-01's (as ds004078's sub-05/sub-06 runs 58-60)."""
    root = tmp_path / "bids"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("derivatives"))
    for subject in ("02", "04"):  # fewer runs to decode: two subjects, one held out
        shutil.rmtree(root / f"sub-{subject}")
    meg = "sub-{0}/meg/sub-{0}_task-RDR_run-1_meg.fif"
    shutil.copyfile(root / meg.format("01"), root / meg.format("03"))
    out = tmp_path / "out"
    common = ["--quiet", "--bids-root", str(root), "--out", str(out), "--runs", "1,2", "--held-out", "03",
              "--held-out-stories", "none", "--slice", "5"]
    assert ingest_cli.main([*common, "--on-duplicate", "raise"]) == 2
    assert "identical decoded MEG in sub-01_run-1, sub-03_run-1" in capsys.readouterr().err
    assert not (out / "index.json").exists()

    assert ingest_cli.main(common) == 0  # warn (the default): every run kept, the pair named
    assert "note: identical decoded MEG in sub-01_run-1, sub-03_run-1" in capsys.readouterr().out
    index = read_index(out)
    assert [(d["data"], d["runs"]) for d in index.duplicates] == [("meg", ["sub-01_run-1", "sub-03_run-1"])]
    assert {(r["subject"], r["run"]) for r in index.runs} == {("01", 1), ("01", 2), ("03", 1), ("03", 2)}

    assert ingest_cli.main([*common, "--on-duplicate", "skip"]) == 2  # other options: refused ...
    assert "--on-duplicate: 'warn' -> 'skip'" in capsys.readouterr().err
    assert ingest_cli.main([*common, "--on-duplicate", "skip", "--overwrite"]) == 0  # ... unless asked
    index = read_index(out)
    assert {(r["subject"], r["run"]) for r in index.runs} == {("01", 1), ("01", 2), ("03", 2)}
    assert [f["error"] for f in index.failed] == ["sub-03_run-1: skipped, a duplicate (--on-duplicate skip)"]
    assert index.count() == sum(r["count"] for r in index.runs)  # its samples are in no shard
