"""The loader against real shards (from ``ingest`` of ``synth`` data), on every storage backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meg2fmri.loader import ShardLoader, StoreConfig, StreamConfig
from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index

# torch warns when a DataLoader has more workers than this 2-core machine has cores; we test 3 on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference(folder, split="train"):
    """The split's samples read with plain ``tarfile``, in sample-id order (index order)."""
    index = read_index(folder)
    return [s for e in index.shards if e.split == split for s in read_shard(folder / e.name)]


@pytest.fixture(params=["path", "file", "s3"])
def source(request, ingested):
    """(source, StoreConfig) for each backend: the same shards, three ways to name them."""
    if request.param == "path":
        return str(ingested), StoreConfig()
    if request.param == "file":
        return ingested.resolve().as_uri(), StoreConfig()
    url, options = request.getfixturevalue("s3_shards")
    return url, StoreConfig(storage_options=options)


def keys_of(batches) -> list[str]:
    return [m["key"] for b in batches for m in b["meta"]]


def collect(loader) -> list[dict]:
    return [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in loader]


@pytest.mark.parametrize("split", ["train", "test", "seen_story", "seen_subject"])
def test_every_backend_yields_the_split_with_the_stored_values(source, split, ingested):
    url, store = source
    expected = reference(ingested, split)
    config = StreamConfig(batch_size=7, meta=True, shuffle_buffer=25)
    loader = ShardLoader(url, split, config, store, device="cpu")
    batches = collect(loader)
    assert len(batches) == len(loader)
    ids = torch.cat([b["index"] for b in batches]).numpy()
    assert sorted(ids.tolist()) == list(range(len(expected)))
    for b in batches:
        assert b["meg"].shape[1:] == (328,) and b["fmri"].shape[1:] == (1, 32, 32)
        assert b["meg"].dtype == b["fmri"].dtype == torch.float32
        for i, meg, fmri, meta in zip(b["index"], b["meg"], b["fmri"], b["meta"], strict=True):
            sample = expected[int(i)]
            assert meta["key"] == sample.key and meta["subject"] == sample.meta["subject"]
            assert np.array_equal(meg.numpy(), sample.meg) and np.array_equal(fmri[0].numpy(), sample.fmri)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_exactly_once_across_ranks_and_dataloader_workers(ingested, world, workers):
    expected = sorted(s.key for s in reference(ingested))  # 80 samples in shards of 30, 30, 20
    seen, lengths = [], set()
    for rank in range(world):
        loader = ShardLoader(ingested, "train", StreamConfig(batch_size=7, meta=True, seed=3), device="cpu",
                             num_workers=workers, rank=rank, world_size=world)
        loader.set_epoch(2)
        batches = collect(loader)
        assert len(batches) == len(loader)
        lengths.add(len(batches))
        seen += keys_of(batches)
    assert len(lengths) == 1, f"ranks disagree on the epoch length: {lengths}"
    assert sorted(seen) == expected


def test_worker_count_does_not_change_the_stream(ingested):
    streams = []
    for workers in (0, 2, 3):
        loader = ShardLoader(ingested, "train", StreamConfig(batch_size=6, seed=11), device="cpu",
                             num_workers=workers)
        streams.append([b["index"].tolist() for b in loader])
    assert streams[0] == streams[1] == streams[2]


def test_shuffle_depends_on_seed_and_epoch_only(ingested):
    def order(seed, epoch):
        loader = ShardLoader(ingested, "train", StreamConfig(batch_size=8, seed=seed), device="cpu")
        loader.set_epoch(epoch)
        return [i for b in loader for i in b["index"].tolist()]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 1)) == list(range(80))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after", [1, 5, 11])
def test_resume_mid_epoch_continues_the_same_stream(ingested, workers, stop_after):
    config = StreamConfig(batch_size=7, seed=5, shuffle_buffer=20)
    full = ShardLoader(ingested, "train", config, device="cpu", num_workers=workers)
    full.set_epoch(1)
    uninterrupted = [b["index"].tolist() for b in full]

    first = ShardLoader(ingested, "train", config, device="cpu", num_workers=workers)
    first.set_epoch(1)
    head = []
    for batch in first:
        head.append(batch["index"].tolist())
        if len(head) == stop_after:
            break
    state = first.state_dict()
    assert state["epoch"] == 1 and state["position"] == stop_after

    resumed = ShardLoader(ingested, "train", config, device="cpu", num_workers=workers)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what a trainer's epoch loop does: keeps the position inside epoch 1
    tail = [b["index"].tolist() for b in resumed]
    assert head + tail == uninterrupted
    assert resumed.epoch == 2 and resumed.position == 0


def test_resume_refuses_other_settings(ingested):
    state = ShardLoader(ingested, "train", StreamConfig(batch_size=7), device="cpu").state_dict()
    other = ShardLoader(ingested, "train", StreamConfig(batch_size=8), device="cpu")
    with pytest.raises(InputError, match="batch_size=7"):
        other.load_state_dict(state)


@pytest.mark.parametrize("device", DEVICES)
def test_prefetcher_delivers_the_same_batches_on_the_device(ingested, device):
    config = StreamConfig(batch_size=16, seed=2)
    host = collect(ShardLoader(ingested, "train", config, device="cpu", prefetch=1))
    loader = ShardLoader(ingested, "train", config, device=device, prefetch=3)
    on_device = list(loader)
    assert all(b["meg"].device.type == device for b in on_device)
    for a, b in zip(host, on_device, strict=True):
        assert torch.equal(a["meg"], b["meg"].cpu()) and torch.equal(a["fmri"], b["fmri"].cpu())


def test_loader_reports_missing_index_and_empty_split(tmp_path):
    from meg2fmri.shards.errors import IntegrityError

    with pytest.raises(IntegrityError, match="no shard index"):
        ShardLoader(tmp_path, "train")
    with pytest.raises(InputError, match="split must be one of"):
        ShardLoader(tmp_path, "validation")
    with pytest.raises(InputError, match="unsupported URL scheme"):
        ShardLoader("gs://bucket/shards", "train")


def test_persistent_workers_live_across_epochs_and_follow_the_epoch(ingested):
    """The same worker processes serve every epoch, each epoch's stream is the one the main process
    set (not the epoch the workers started in), and a stop mid-epoch resumes in the same workers."""
    config = StreamConfig(batch_size=7, seed=4, shuffle_buffer=20)
    single = ShardLoader(ingested, "train", config, device="cpu")
    expected = []
    for epoch in range(3):
        single.set_epoch(epoch)
        expected.append([b["index"].tolist() for b in single])
    assert expected[0] != expected[1]

    loader = ShardLoader(ingested, "train", config, device="cpu", num_workers=2)
    got, pids = [], []
    for epoch in range(3):
        loader.set_epoch(epoch)
        if epoch == 1:  # stop after 3 batches, then go on inside the same epoch
            head = []
            for batch in loader:
                head.append(batch["index"].tolist())
                if len(head) == 3:
                    break
            got.append(head + [b["index"].tolist() for b in loader])
        else:
            got.append([b["index"].tolist() for b in loader])
        pids.append(sorted(w.pid for w in loader._iterator._workers))
    assert got == expected
    assert pids[0] == pids[1] == pids[2]
    assert bool(loader.dataset._hashed.all())  # every shard hashed by some worker, shared with all
    loader.close()
    import multiprocessing

    assert multiprocessing.active_children() == []


def test_non_persistent_workers_start_afresh_each_epoch(ingested):
    loader = ShardLoader(ingested, "train", StreamConfig(batch_size=16), device="cpu", num_workers=2,
                         persistent_workers=False)
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert sum(len(b["index"]) for b in loader) == loader.samples
        assert loader._iterator is None  # its workers ended with the epoch
