"""ingest on synth data: shards, index, cache, pairing arithmetic against the ground truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import webdataset as wds
import zarr
from conftest import read_tsv

from meg2fmri.ingest import cache
from meg2fmri.ingest import cli as ingest_cli
from meg2fmri.ingest.pairing import resize_bilinear
from meg2fmri.shards.commit import Location
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index, verify_shard


def ingest(*args: str) -> int:
    return ingest_cli.main(["--quiet", *args])


# webdataset 1.0 leaves each shard's file object to the garbage collector (a ResourceWarning).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_shards_match_the_index_and_open_with_plain_webdataset(ingested: Path):
    index = read_index(ingested)
    # one F + one M held out, and the highest story (no sixth story among 1-3)
    assert index.split == {"subjects": {"train": ["01", "03"], "held_out": ["02", "04"]},
                           "stories": {"train": [1, 2], "held_out": [3]}}
    assert index.failed == [] and len(index.runs) == 12
    assert index.features["kind"] == "mean" and index.features["width"] == 328
    keys = []
    for entry in index.shards:
        verify_shard(ingested, entry)
        samples = list(wds.WebDataset(str(ingested / entry.name), shardshuffle=False).decode())
        assert len(samples) == entry.count
        for s in samples:
            assert s["meg.npy"].shape == (328,) and s["meg.npy"].dtype == np.float32
            assert s["fmri.npy"].shape == (32, 32) and 0 <= s["fmri.npy"].min() <= s["fmri.npy"].max() <= 1
            assert s["json"]["split"] == entry.split
            new_subject = s["json"]["subject"] in index.held_out("subjects")
            new_story = s["json"]["run"] in index.held_out("stories")
            assert entry.split == {(False, False): "train", (True, True): "test", (True, False): "seen_story",
                                   (False, True): "seen_subject"}[(new_subject, new_story)]
        keys += [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == index.count() == sum(r["count"] for r in index.runs)
    assert len(index.shards) > 2  # 30 samples per shard: several, the last one partly filled


def test_mean_features_are_zscored_vectors(ingested: Path):
    sample = next(read_shard(ingested / read_index(ingested).shards[0].name))
    assert abs(sample.meg.mean()) < 1e-5 and abs(sample.meg.std() - 1) < 1e-4


def test_cache_holds_continuous_signals(ingested: Path, tiny_root: Path):
    group = zarr.open_group(ingested / "cache.zarr/sub-03_run-2", mode="r")
    meg, fmri = group["meg"], group["fmri"]
    runs = {(r["subject"], int(r["run"])): r for r in read_tsv(tiny_root / "derivatives/synth/runs.tsv")}
    n_times = int(runs[("03", 2)]["meg_n_times"])
    assert meg.shape == (328, -(-n_times // 10)) and meg.dtype == np.float32  # 1000 -> 100 Hz
    data = meg[:]
    moving = data.std(axis=1) > 0
    assert moving.sum() >= 306 and np.allclose(data[moving].std(axis=1), 1, atol=1e-3)
    img = nib.load(tiny_root / "sub-03/func/sub-03_task-RDR_run-2_bold.nii.gz")
    raw = np.asarray(img.dataobj).astype(np.float64)
    assert fmri.shape == raw.T.shape and fmri.dtype == np.int16
    assert fmri.chunks == (cache.VOLUMES_PER_WRITE, *raw.T.shape[1:])
    expected = (raw[..., 7] - raw.min()) / (raw.max() - raw.min())
    # CF packing: normalised = stored * scale_factor + add_offset (exact, not rounded)
    decoded = fmri[7] * fmri.attrs["scale_factor"] + fmri.attrs["add_offset"]
    assert np.abs(decoded - expected.T).max() < 1e-12
    assert decoded.min() >= 0 and decoded.max() <= 1
    assert np.allclose(group["fmri_slice_means"][7], expected.mean(axis=(0, 1)), atol=1e-9)
    run = cache.read_run(Location(ingested), "03", 2)  # the batched read equals the per-volume one
    volumes = [9, 7, 9, 0]
    assert np.array_equal(run.images(volumes, 4), np.stack([run.image(v, 4) for v in volumes]))
    assert np.abs(run.images([7], 5)[0] - expected[:, :, 5].T).max() < 1e-6


def test_story_onset_is_file_relative_not_acquisition_relative(ingested: Path, tiny_root: Path):
    """events.tsv onsets are file-relative; find_events samples include first_samp."""
    for subject, run in [("01", 1), ("04", 2)]:
        attrs = zarr.open_group(ingested / f"cache.zarr/sub-{subject}_run-{run}", mode="r").attrs
        events = tiny_root / f"sub-{subject}/meg/sub-{subject}_task-RDR_run-{run}_events.tsv"
        beg = float(read_tsv(events)[0]["onset"])
        assert attrs["meg_story_onset_s"] == pytest.approx(beg, abs=1e-9)
        assert attrs["meg_first_samp"] > 6000


def test_windows_pairing_arithmetic_against_ground_truth(ingested: Path, tiny_root: Path):
    """Each sample's MEG epoch starts at the true story start + story time; its image is the volume
    acquired at 10.65 s + story time + lag, resized from the NIfTI slice."""
    truth = {(r["subject"], int(r["run"])): r for r in read_tsv(tiny_root / "derivatives/synth/runs.tsv")}
    img = np.asarray(nib.load(tiny_root / "sub-01/func/sub-01_task-RDR_run-2_bold.nii.gz").dataobj)
    normalised = (img.astype(np.float64) - img.min()) / (img.max() - img.min())
    samples = [s for e in read_index(ingested).shards for s in read_shard(ingested / e.name)
               if s.key.startswith("sub-01_run-2_")]
    assert [s.meta["story_time_s"] for s in samples] == [2.0 * i for i in range(len(samples))]
    start = float(truth[("01", 2)]["meg_story_start_s"])
    for s in samples:
        tau = s.meta["story_time_s"]
        assert s.meta["meg_sample"] == round(start * 100) + round(tau * 100)
        assert s.meta["fmri_volume"] == round((10.65 + tau + 5.0) / 0.71)
        expected = resize_bilinear(normalised[:, :, s.meta["slice"], s.meta["fmri_volume"]].T, 32)
        assert np.abs(s.fmri - expected).max() < 1e-5


def test_paper_pairing_and_bandpower_from_cache(ingested: Path, tmp_path: Path, tiny_root: Path):
    """--from-cache re-pairs without touching FIF/NIfTI (the BIDS root is moved away)."""
    out = tmp_path / "out"
    hidden = tmp_path / "moved"
    import shutil

    shutil.copytree(ingested, out, ignore=shutil.ignore_patterns("shards", "index.json", ".work"))
    tiny_root.rename(hidden)
    try:
        code = ingest("--out", str(out), "--from-cache", "--pairing", "paper", "--features", "bandpower")
    finally:
        hidden.rename(tiny_root)
    assert code == 0
    index = read_index(out)
    assert index.count() == 12 and index.features["width"] == 328 * 5  # one pair per run
    assert index.features["names"][:2] == ["BIO001:delta", "IASX+:delta"]
    for entry in index.shards:
        for s in read_shard(out / entry.name):
            assert s.meta["fmri_volume"] == 15 + 32  # window from volume 15 (10.65 s / 0.71 s), index 32
            assert s.meta["story_time_s"] == 0.0 and s.meg.shape == (1640,)


def preprocessed_tree(tiny_root: Path, root: Path) -> Path:
    """The tiny dataset in ds004078's derivatives layout (derivatives/preprocessed_data/sub-XX/{MEG,MNI},
    runs 1 of sub-01 and sub-02), with the raw tree's events and sidecars and no raw data files."""
    import shutil

    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("*.fif", "*.nii.gz"))
    for subject in ["01", "02"]:
        meg_dir = root / f"derivatives/preprocessed_data/sub-{subject}/MEG"
        mni_dir = root / f"derivatives/preprocessed_data/sub-{subject}/MNI"
        meg_dir.mkdir(parents=True)
        mni_dir.mkdir(parents=True)
        stem = f"sub-{subject}_task-RDR_run-1"
        (meg_dir / f"{stem}_meg.fif").symlink_to(tiny_root / f"sub-{subject}/meg/{stem}_meg.fif")
        (mni_dir / f"{stem}_bold.nii.gz").symlink_to(tiny_root / f"sub-{subject}/func/{stem}_bold.nii.gz")
    return root


def test_preprocessed_derivatives_are_read_with_raw_tree_events(tiny_root: Path, tmp_path: Path, ray_session,
                                                                 s3_server, monkeypatch):
    """--preprocessed reads derivatives/preprocessed_data/sub-XX/{MEG,MNI} (the real layout) and
    takes fMRI events and sidecars from the raw tree; from an s3:// copy of the tree, the same shards
    (credentials in --storage-options reach every task); a task that finds no credentials says so."""
    from conftest import upload_folder

    root = preprocessed_tree(tiny_root, tmp_path / "bids")
    out = tmp_path / "out"
    assert ingest("--bids-root", str(root), "--out", str(out), "--preprocessed", "--held-out", "02",
                  "--held-out-stories", "none") == 0
    index = read_index(out)
    assert [(r["subject"], r["run"]) for r in index.runs] == [("01", 1), ("02", 1)]
    sources = zarr.open_group(out / "cache.zarr/sub-01_run-1", mode="r").attrs["sources"]
    assert "derivatives/preprocessed_data/sub-01/MEG" in sources["meg"]["path"]
    assert "derivatives/preprocessed_data/sub-01/MNI" in sources["bold"]["path"]

    url = upload_folder(s3_server, root, "meg2fmri-preprocessed", "ds004078")
    remote_out = tmp_path / "from-s3"
    keys = json.dumps({"key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"]})
    assert ingest("--bids-root", url, "--endpoint-url", s3_server, "--no-anon", "--storage-options", keys,
                  "--out", str(remote_out), "--preprocessed", "--held-out", "02", "--held-out-stories",
                  "none") == 0
    remote = read_index(remote_out)
    assert [(e.name, e.count, e.sha256) for e in remote.shards] == [(e.name, e.count, e.sha256)
                                                                    for e in index.shards]
    sources = zarr.open_group(remote_out / "cache.zarr/sub-01_run-1", mode="r").attrs["sources"]
    assert sources["bold"]["path"].startswith(f"{url}/derivatives/preprocessed_data/sub-01/MNI/")
    assert sources["bold"].get("etag")  # S3 stamps: size and ETag, not mtime

    # a Ray node without credentials (the task arrives pickled, as Ray sends it, and finds none)
    import pickle

    from meg2fmri.ingest.config import IngestConfig
    from meg2fmri.ingest.plan import plan
    from meg2fmri.ingest.task import ingest_run

    config = IngestConfig(bids_root=url, out=str(tmp_path / "no-credentials"), preprocessed=True, anon=False,
                          storage_options={"endpoint_url": s3_server})
    task = pickle.dumps(plan(config)[0][0])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-file"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-file"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # and no instance role to ask
    result = ingest_run(pickle.loads(task), config)
    assert not result.ok and "sub-01_run-1: no AWS credentials on" in result.error
    assert "every Ray node" in result.error and "--storage-options" in result.error
