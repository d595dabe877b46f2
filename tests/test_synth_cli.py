"""synth as a user meets it: determinism, refusals, atomic output, the two faulty runs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_tsv, run_synth

from meg2fmri.ingest.synth import cli as synth_cli

SMALL = ["--preset", "tiny", "--subjects", "02", "--runs", "3", "--duration", "12",
         "--shape", "12x12x9", "--jobs", "1"]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path):
    a = digests(run_synth(tmp_path / "a", *SMALL, "--seed", "7"))
    b = digests(run_synth(tmp_path / "b", *SMALL, "--seed", "7"))
    c = digests(run_synth(tmp_path / "c", *SMALL, "--seed", "8"))
    assert len(a) > 15 and a == b
    for name in ["sub-02/meg/sub-02_task-RDR_run-3_meg.fif", "sub-02/func/sub-02_task-RDR_run-3_bold.nii.gz"]:
        assert a[name] != c[name]


def test_parallel_jobs_write_the_same_bytes(tmp_path: Path):
    args = ["--preset", "tiny", "--subjects", "01,02", "--runs", "1", "--duration", "12",
            "--shape", "12x12x9"]
    one = digests(run_synth(tmp_path / "one", *args, "--jobs", "1"))
    two = digests(run_synth(tmp_path / "two", *args, "--jobs", "2"))
    assert one == two


def test_non_empty_output_is_refused_unless_overwrite(tmp_path: Path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert synth_cli.main(["--out", str(out), "--quiet", *SMALL]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    # --overwrite never deletes a folder that is not a synth dataset
    assert synth_cli.main(["--out", str(out), "--quiet", "--overwrite", *SMALL]) == 2
    assert "is not a synth dataset" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    out2 = run_synth(tmp_path / "ds2", *SMALL)
    (out2 / "extra.txt").write_text("old")
    run_synth(out2, *SMALL, "--overwrite", "--seed", "3")
    assert not (out2 / "extra.txt").exists()
    assert (out2 / "sub-02/meg/sub-02_task-RDR_run-3_meg.fif").is_file()
    assert not list(tmp_path.glob(".ds2.*"))


@pytest.mark.parametrize(("args", "message"), [
    (["--subjects", "13"], "unknown subject id"),
    (["--runs", "61"], "runs must be stories 1..60"),
    (["--defects"], "neither is selected"),
])
def test_bad_usage_is_explained(tmp_path: Path, capsys, args: list[str], message: str):
    code = synth_cli.main(["--preset", "tiny", "--out", str(tmp_path / "x"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ctrl_c_leaves_no_partial_dataset(tmp_path: Path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "meg2fmri.ingest.synth.cli", "--out", str(out), "--quiet",
           "--preset", "tiny", "--subjects", "01,02,03", "--runs", "1-10", "--jobs", "1"]
    # a shell without job control starts background jobs with SIGINT ignored, and Python then never
    # raises KeyboardInterrupt: give synth the default disposition, as a terminal would
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".ds.partial-*/sub-01/meg/*_meg.fif")):
        assert proc.poll() is None and time.monotonic() < deadline, "synth never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert b"KeyboardInterrupt" in err
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_defect_runs_reproduce_the_missing_begin_trigger(defects_root: Path):
    """sub-08 run-16 and sub-09 run-7: Beg/End spacing disagrees with the story length by 6-7.5 s
    and the true start is End - duration (as the dataset README says); the other runs agree."""
    for subject, run, true_start in [("08", 16, 1.839), ("09", 7, -0.013), ("08", 7, None), ("09", 16, None)]:
        meg = read_tsv(defects_root / f"sub-{subject}/meg/sub-{subject}_task-RDR_run-{run}_events.tsv")
        func = read_tsv(defects_root / f"sub-{subject}/func/sub-{subject}_task-RDR_run-{run}_events.tsv")
        beg, end = (float(row["onset"]) for row in meg)
        duration = float(func[0]["duration"])
        if true_start is None:
            assert end - beg == pytest.approx(duration, abs=1e-3)
        else:
            assert 5.5 < duration - (end - beg) < 8.0
            assert end - duration == pytest.approx(true_start, abs=2e-3)
    runs = {(r["subject"], int(r["run"])): r for r in read_tsv(defects_root / "derivatives/synth/runs.tsv")}
    assert runs[("08", 16)]["defect"] == "1" and runs[("08", 7)]["defect"] == "0"


VERBS = ["synth", "ingest", "shards", "train", "evaluate", "generate", "oracle", "bench"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_answers_help_without_importing_torch_mne_or_ray(verb: str):
    """`meg2fmri VERB --help` parses before any heavy import (so it answers at once), in-process."""
    code = ("import sys; from meg2fmri.cli import main\n"
            f"try:\n    main([{verb!r}, '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = sorted({'torch', 'mne', 'ray', 'nibabel', 'zarr'} & set(sys.modules))\n"
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: meg2fmri {verb}" if verb not in ("ingest", "bench") else
                                    f"usage: {verb}")
    assert "HEAVY []" in result.stdout


@pytest.mark.parametrize("command", ["meg2fmri", "ingest", "bench"])
def test_console_commands_are_installed(command: str):
    exe = Path(sys.executable).parent / command
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {command}"), result.stderr


def test_meg2fmri_version_and_bad_verbs():
    from meg2fmri import __version__

    exe = str(Path(sys.executable).parent / "meg2fmri")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"meg2fmri {__version__}"
    bad = subprocess.run([exe, "trian"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice: 'trian'" in bad.stderr
    none = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "usage: meg2fmri" in none.stderr


def test_storage_options_are_spelled_alike_in_every_verb_that_reads_s3():
    import argparse

    from meg2fmri import commands

    parser = argparse.ArgumentParser()
    commands.add_storage_options(parser)
    args = parser.parse_args(["--endpoint-url", "http://127.0.0.1:9", "--anon",
                              "--storage-options", '{"client_kwargs": {"region_name": "eu-west-1"}}'])
    assert commands.storage_options(args) == {"client_kwargs": {"region_name": "eu-west-1"},
                                              "endpoint_url": "http://127.0.0.1:9", "anon": True}
    assert "anon" not in commands.storage_options(args, anon=False)
    assert commands.storage_options(parser.parse_args([])) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--storage-options", "[1]"])


def test_meg_sfreq_200_keeps_the_bold_and_the_noise_density_below_the_low_pass(tmp_path: Path):
    """synth --meg-sfreq 200 (what `make study` writes: 5x less FIF): the same BOLD and truth bit for bit,
    a FIF and sidecars that say 200 Hz, triggers ingest finds at the same times, and the same power per
    Hz in every band ingest's 100 Hz keeps."""
    import json

    import mne
    from scipy.signal import welch

    from meg2fmri.ingest.preprocess import preprocess_meg_file

    args = ["--preset", "tiny", "--subjects", "01", "--runs", "1", "--duration", "60", "--jobs", "1"]
    full, low = run_synth(tmp_path / "full", *args), run_synth(tmp_path / "low", *args, "--meg-sfreq", "200")
    a, b = digests(full), digests(low)
    same = [k for k in a if not k.startswith("sub-01/meg/") and k not in (
        "derivatives/synth/synth_config.json", "derivatives/synth/runs.tsv")]
    assert len(same) > 10 and all(a[k] == b[k] for k in same)
    meg = "sub-01/meg/sub-01_task-RDR_run-1"
    assert os.path.getsize(low / f"{meg}_meg.fif") < 0.25 * os.path.getsize(full / f"{meg}_meg.fif")
    assert json.loads((low / f"{meg}_meg.json").read_text())["SamplingFrequency"] == 200
    assert {row["sampling_frequency"] for row in read_tsv(low / f"{meg}_channels.tsv")} == {"200"}
    events = read_tsv(low / f"{meg}_events.tsv")
    assert [int(e["sample"]) for e in events] == [round(float(e["onset"]) * 200) for e in events]
    onsets = [preprocess_meg_file(root / f"{meg}_meg.fif", "x", 60.0).story_onset for root in (full, low)]
    assert abs(onsets[0] - onsets[1]) < 0.006
    psd = {}
    for name, root in (("full", full), ("low", low)):
        raw = mne.io.read_raw_fif(root / f"{meg}_meg.fif", verbose="error")
        assert raw.info["lowpass"] == pytest.approx(330.0 if name == "full" else 200 / 3, rel=1e-3)
        sfreq = raw.info["sfreq"]
        freqs, power = welch(raw.get_data(picks="meg"), fs=sfreq, nperseg=int(4 * sfreq))
        psd[name] = {band: power[:, (freqs >= band[0]) & (freqs < band[1])].mean(axis=1)
                     for band in ((1, 8), (8, 13), (13, 30), (30, 45))}
    for band, full_power in psd["full"].items():
        assert 0.9 < float(np.median(psd["low"][band] / full_power)) < 1.1, band


def test_blocks_write_only_the_named_subjects_x_runs(tmp_path: Path):
    from meg2fmri.shards.errors import InputError

    args = synth_cli.build_parser().parse_args(
        ["--preset", "tiny", "--out", str(tmp_path / "x"), "--block", "01-02:1-2", "--block", "03:3"])
    config = synth_cli.config_from_args(args)
    assert config.subjects == ("01", "02", "03") and config.runs == (1, 2, 3)
    written = {(p.subject, p.run) for p in config.plan()}
    assert written == {("01", 1), ("01", 2), ("02", 1), ("02", 2), ("03", 3)}
    args = synth_cli.build_parser().parse_args(
        ["--preset", "tiny", "--subjects", "01", "--block", "01-02:1", "--out", str(tmp_path / "y")])
    with pytest.raises(InputError, match="--block 01,02:1 is not within"):
        synth_cli.config_from_args(args)
    with pytest.raises(SystemExit) as refused:  # ingest resamples to 100 Hz by whole steps
        synth_cli.build_parser().parse_args(["--meg-sfreq", "250"])
    assert refused.value.code == 2
