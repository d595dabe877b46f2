"""Corrupt, truncated and unreachable shards: always an error naming the shard, or a counted skip."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import start_moto, upload_folder

from meg2fmri.loader import ShardLoader, StoreConfig, StreamConfig
from meg2fmri.loader import cli as shards_cli
from meg2fmri.loader.zarr_samples import ZarrSamples, collate_batch, export_zarr
from meg2fmri.shards.errors import ShardIntegrityError, ShardReadError
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index


@pytest.fixture
def shard_copy(ingested, tmp_path) -> Path:
    """A private copy of the ingested shards and index, safe to damage."""
    out = tmp_path / "shards"
    shutil.copytree(ingested, out, ignore=shutil.ignore_patterns("cache.zarr", ".*"))
    return out


def shard(folder: Path, split: str, number: int) -> Path:
    """The path of a split's ``number``-th shard, as the index names it."""
    return folder / [e.name for e in read_index(folder).shards if e.split == split][number]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def drain(loader) -> list[dict]:
    return list(loader)


def test_flipped_byte_is_caught_by_sha256_and_named(shard_copy):
    flip_byte(shard(shard_copy, "train", 1), 5000)  # inside a sample's fMRI payload
    with pytest.raises(ShardIntegrityError, match=r"train-000001-\w+\.tar: sha256 .* corrupt"):
        drain(ShardLoader(shard_copy, "train", device="cpu"))
    assert shards_cli.main(["verify", str(shard_copy), "--quiet"]) == 1


def test_truncated_shard_is_named(shard_copy, capsys):
    path = shard(shard_copy, "train", 2)
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(ShardIntegrityError,
                       match=r"train-000002-\w+\.tar: .* bytes, the index says .*truncated"):
        drain(ShardLoader(shard_copy, "train", device="cpu", num_workers=2))
    assert shards_cli.main(["verify", str(shard_copy), "--quiet"]) == 1
    assert f"BAD  shards/{path.name} (20 samples)" in capsys.readouterr().out


def test_a_worker_that_raised_releases_every_worker_at_once(shard_copy):
    """While the error (and its traceback) is still held, no DataLoader worker process is left."""
    import multiprocessing

    path = shard(shard_copy, "train", 0)
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(ShardIntegrityError) as caught:
        drain(ShardLoader(shard_copy, "train", device="cpu", num_workers=2))
    assert caught.value is not None  # the traceback stays referenced through the assertion below
    assert multiprocessing.active_children() == []


def test_damaged_header_is_caught_without_sha256(shard_copy):
    flip_byte(shard(shard_copy, "train", 0), 257)  # the first member's ustar magic
    with pytest.raises(ShardIntegrityError, match=r"train-000000-\w+\.tar: a meg\.npy tar header is damaged"):
        drain(ShardLoader(shard_copy, "train", store=StoreConfig(verify=False), device="cpu"))


def test_skip_policy_leaves_out_the_corrupt_shard_and_counts_it(shard_copy):
    flip_byte(shard(shard_copy, "train", 0), 3000)
    loader = ShardLoader(shard_copy, "train", StreamConfig(batch_size=7, on_corrupt="skip"), device="cpu")
    with pytest.warns(UserWarning, match=r"skipping 30 samples of shards/train-000000-\w+\.tar"):
        batches = drain(loader)
    assert len(batches) == len(loader)  # the epoch keeps its length (DDP ranks stay in step)
    ids = torch.cat([b["index"] for b in batches]).tolist()
    assert sorted(ids) == list(range(30, 80)) and loader.skipped == 30


def test_verify_passes_clean_shards_and_reads_s3(s3_shards, capsys):
    url, options = s3_shards
    assert shards_cli.main(["verify", url, "--endpoint-url", options["endpoint_url"], "--quiet"]) == 0
    assert "10 of 10 shards ok (240 samples)" in capsys.readouterr().out


def test_s3_server_stopped_mid_epoch_retries_then_names_the_shard(ingested, aws_env):
    server, endpoint = start_moto()
    url = upload_folder(endpoint, ingested, "meg2fmri-stopped", "shards")
    store = StoreConfig(storage_options={"endpoint_url": endpoint}, retries=2, backoff_s=0.05)
    stream = StreamConfig(batch_size=10, shuffle=False, chunk_samples=10, lookahead=0)
    loader = ShardLoader(url, "train", stream, store, device="cpu", prefetch=1)
    batches = iter(loader)
    try:
        first = next(batches)  # shard 0 fetched
        assert first["index"].tolist() == list(range(10))
    finally:
        server.stop()
    started = time.monotonic()
    # two fetches are in flight: shard 1 may have arrived before the stop, and then shard 2 is named
    with pytest.raises(ShardReadError, match=r"s3://meg2fmri-stopped/shards/shards/train-00000[12]-\w+\.tar: "
                                             r"could not be read after 3 attempts"):
        for _ in batches:
            pass
    assert time.monotonic() - started >= 0.05 + 0.1  # it waited between attempts (backoff 0.05 s, 0.1 s)


def test_s3_disk_cache_respects_its_limit_and_serves_the_next_epoch(s3_shards, tmp_path, ingested):
    url, options = s3_shards
    sizes = [e.bytes for e in read_index(ingested).shards if e.split == "train"]
    cache = tmp_path / "cache"
    store = StoreConfig(storage_options=options, cache_dir=str(cache), cache_limit_bytes=max(sizes) * 2)
    loader = ShardLoader(url, "train", StreamConfig(batch_size=16), store, device="cpu")
    first = [b["meg"].clone() for b in loader]
    assert sum(p.stat().st_size for p in cache.glob("*.tar")) <= max(sizes) * 2
    loader.set_epoch(0)
    again = [b["meg"] for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("backend", ["path", "s3"])
def test_zarr_map_dataset_holds_the_same_samples(ingested, tmp_path, backend, s3_server):
    out = export_zarr(ingested, tmp_path / "samples.zarr", progress=False)
    index = read_index(ingested)
    expected = [s for e in index.shards if e.split == "seen_story" for s in read_shard(ingested / e.name)]
    if backend == "s3":
        url = upload_folder(s3_server, out, "meg2fmri-zarr", "samples.zarr")
        dataset = ZarrSamples(url, "seen_story", storage_options={"endpoint_url": s3_server}, meta=True)
    else:
        dataset = ZarrSamples(out, "seen_story", meta=True)
    assert len(dataset) == len(expected)
    item = dataset[7]
    assert np.array_equal(item["meg"].numpy(), expected[7].meg)
    assert item["meta"]["run"] == expected[7].meta["run"]
    loader = torch.utils.data.DataLoader(dataset, batch_size=9, shuffle=True, collate_fn=collate_batch)
    seen = 0
    for batch in loader:
        for i, fmri in zip(batch["index"], batch["fmri"], strict=True):
            assert np.array_equal(fmri[0].numpy(), expected[int(i)].fmri)
            seen += 1
    assert seen == len(expected)


DDP_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from meg2fmri.loader import ShardLoader, StreamConfig
dist.init_process_group("gloo")
loader = ShardLoader(sys.argv[1], "train", StreamConfig(batch_size=7, seed=9, meta=True), device="cpu")
keys, steps = [], 0
for batch in loader:
    keys += [m["key"] for m in batch["meta"]]
    dist.all_reduce(torch.ones(1))  # a collective per step: a rank with fewer batches would hang here
    steps += 1
with open(os.path.join(sys.argv[2], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump({"keys": keys, "steps": steps, "world": dist.get_world_size(), "len": len(loader)}, f)
dist.destroy_process_group()
"""


def test_torchrun_gloo_ranks_see_disjoint_complete_splits(ingested, tmp_path):
    import json

    script = tmp_path / "ddp_keys.py"
    script.write_text(DDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(script), str(ingested), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] == ranks[0]["len"]
    assert not set(ranks[0]["keys"]) & set(ranks[1]["keys"])
    expected = sorted(s.key for e in read_index(ingested).shards if e.split == "train"
                      for s in read_shard(ingested / e.name))
    assert sorted(ranks[0]["keys"] + ranks[1]["keys"]) == expected


def test_s3_shards_are_hashed_once_per_object_version(s3_server, ingested, tmp_path):
    """Each S3 shard's sha256 is checked on its first download in a process; later epochs skip the
    hash only while the object's ETag is the one whose bytes matched. An object overwritten between
    epochs (same size, one flipped byte) has a new ETag, is hashed again and is named."""
    import boto3

    url = upload_folder(s3_server, ingested, "meg2fmri-etag", "tiny")
    options = StoreConfig(storage_options={"endpoint_url": s3_server})
    loader = ShardLoader(url, "train", StreamConfig(batch_size=16), options, device="cpu")
    first = [b["index"] for b in loader]
    store = loader.store
    train = [e for e in loader.index.shards if e.split == "train"]
    assert set(store.hashed) == {store.key(e.name) for e in train}
    loader.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, [b["index"] for b in loader], strict=True))
    damaged = bytearray((ingested / train[0].name).read_bytes())
    damaged[5000] ^= 0x01
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.put_object(Bucket="meg2fmri-etag", Key=store.key(train[0].name), Body=bytes(damaged))
    loader.set_epoch(1)
    with pytest.raises(ShardIntegrityError, match=rf"{train[0].name}: sha256 .* corrupt upload"):
        drain(loader)


@pytest.mark.parametrize("fault", ["truncated", "missing"])
def test_s3_integrity_faults_are_named_at_once_and_skippable(s3_server, ingested, fault):
    """An S3 shard that is shorter than the index says, or gone, is a ``ShardIntegrityError`` naming
    the object (not retried as if the network had failed, which ends in ``ShardReadError``); with
    ``on_corrupt="skip"`` its samples are left out and counted, and the epoch goes on."""
    import boto3

    bucket = f"meg2fmri-{fault}"
    url = upload_folder(s3_server, ingested, bucket, "tiny")
    entry = next(e for e in read_index(ingested).shards if e.split == "train")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    key = f"tiny/{entry.name}"
    if fault == "truncated":
        client.put_object(Bucket=bucket, Key=key, Body=(ingested / entry.name).read_bytes()[:-512])
    else:
        client.delete_object(Bucket=bucket, Key=key)
    options = StoreConfig(storage_options={"endpoint_url": s3_server}, retries=3, backoff_s=0.01)
    loader = ShardLoader(url, "train", StreamConfig(batch_size=16), options, device="cpu")
    why = "bytes, the index says" if fault == "truncated" else "no such object"
    with pytest.raises(ShardIntegrityError, match=rf"s3://{bucket}/{key}: .*{why}"):
        drain(loader)
    skip = StreamConfig(batch_size=16, on_corrupt="skip")
    skipping = ShardLoader(url, "train", skip, options, device="cpu")
    with pytest.warns(UserWarning, match=f"skipping {entry.count} samples of {entry.name}"):
        delivered = sum(len(b["index"]) for b in skipping)
    assert skipping.skipped == entry.count
    assert delivered == read_index(ingested).count("train") - entry.count
