"""The loaders a user would pick instead of ours, fed the same samples: LitData and MosaicML Streaming.

Run in the peers' own environment (``make bench-peers`` builds ``.venv-peers``: both peers need
torchvision, whose wheel on the index needs torch 2.14.1, beside which our CPU pin cannot live), so
that our ``ShardLoader`` and the peers are timed in one process, one after another, with one torch.

- **Converters** (``to_litdata``, ``to_mds``): every training sample of our shards, written with the
  peer's own writer (``litdata.optimize``; ``streaming.MDSWriter`` with fixed-shape ``ndarray``
  columns) as ``{"index", "meg", "fmri"}``: the sample id (its position in the split, as our loader
  names it), the MEG features and the target, the same float32/float16 arrays.
- **Readers**: each peer's own dataset class in its documented fast configuration: shuffling on,
  their defaults otherwise, batched by its DataLoader (``litdata.StreamingDataLoader``,
  ``streaming.StreamingDataLoader``), with 0 or 2 workers, the better reported, workers kept across
  epochs (``persistent_workers=True``, what their docs recommend for throughput), from a local folder
  or from ``s3://`` on moto's loopback server (their S3 clients pointed at it: LitData's
  ``storage_options``, Streaming's ``S3_ENDPOINT_URL``), cold (empty cache) and warm (second epoch on).
- **Exactly once**: one untimed epoch per configuration collects every batch's sample ids and the
  float64 sum of each sample's MEG and target values, compared with the shards' own (count, every id
  once, every checksum equal).

``python -m meg2fmri.bench.peers --shards DIR --work DIR --json OUT`` writes the rows; ``bench loader
--peers`` calls it and adds its rows and notes to its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PEERS = ("litdata", "mosaicml", "energon")
BATCHES = (32, 256)


def reference(shards: Path) -> tuple[list[Path], dict[int, tuple[float, float]], int]:
    """The training shards (index order), each sample id's (MEG sum, target sum) and the payload bytes."""
    from meg2fmri.shards.format import read_shard
    from meg2fmri.shards.index import read_index

    index = read_index(shards)
    paths, sums, i, payload = [], {}, 0, 0
    for entry in index.shards:
        if entry.split != "train":
            continue
        paths.append(shards / entry.name)
        for sample in read_shard(shards / entry.name):
            sums[i] = (float(sample.meg.astype(np.float64).sum()),
                       float(sample.fmri.astype(np.float64).sum()))
            payload = sample.meg.nbytes + sample.fmri.nbytes
            i += 1
    return paths, sums, payload


def samples_of(item: tuple[str, int]):
    """The samples of one of our shards (``(path, first sample id)``) as the peers' sample dicts."""
    from meg2fmri.shards.format import read_shard

    path, first = item
    for i, sample in enumerate(read_shard(Path(path))):
        yield {"index": first + i, "meg": sample.meg, "fmri": sample.fmri}


def shard_inputs(paths: list[Path]) -> list[tuple[str, int]]:
    from meg2fmri.shards.format import read_shard

    inputs, first = [], 0
    for path in paths:
        inputs.append((str(path), first))
        first += sum(1 for _ in read_shard(path))
    return inputs


def to_litdata(paths: list[Path], out: Path) -> Path:
    """Our training samples in LitData's format (``litdata.optimize``, its default chunking)."""
    import litdata

    shutil.rmtree(out, ignore_errors=True)
    litdata.optimize(fn=samples_of, inputs=shard_inputs(paths), output_dir=str(out), chunk_bytes="64MB",
                     num_workers=1, verbose=False, mode="overwrite")
    return out


def to_mds(paths: list[Path], out: Path, hashes: list[str] | None = None) -> Path:
    """Our training samples in MosaicML Streaming's MDS format (``MDSWriter``, default shard size)."""
    from streaming import MDSWriter

    shutil.rmtree(out, ignore_errors=True)
    first = next(samples_of(shard_inputs(paths[:1])[0]))
    meg, fmri = first["meg"], first["fmri"]
    columns = {"index": "int64",
               "meg": f"ndarray:{meg.dtype.name}:{','.join(map(str, meg.shape))}",
               "fmri": f"ndarray:{fmri.dtype.name}:{','.join(map(str, fmri.shape))}"}
    with MDSWriter(out=str(out), columns=columns, hashes=hashes) as writer:
        for item in shard_inputs(paths):
            for sample in samples_of(item):
                writer.write(sample)
    return out


DATASET_YAML = """sample_type:
  __module__: meg2fmri.bench.energon_sample
  __class__: EnergonSample
field_map:
  meg: meg.npy
  fmri: fmri.npy
"""


def to_energon(paths: list[Path], out: Path) -> Path:
    """Our training shards as an Energon dataset: the tars themselves (hard-linked; Energon reads
    WebDataset), plus the ``.nv-meta`` that ``energon prepare`` writes (its ``WebdatasetPreparator``)
    and a ``dataset.yaml`` naming the sample type."""
    from megatron.energon.epathlib import EPath
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in paths:
        try:
            os.link(path, out / path.name)
        except OSError:
            shutil.copyfile(path, out / path.name)
    WebdatasetPreparator.prepare_dataset(EPath(out), [p.name for p in paths],
                                         split_parts_ratio=[("train", 1.0)], workers=1)
    (out / ".nv-meta" / "dataset.yaml").write_text(DATASET_YAML)
    keys = {}
    for item in shard_inputs(paths):  # sample ids by key: Energon's batches carry the keys
        for i, key in enumerate(tar_keys(Path(item[0]))):
            keys[key] = item[1] + i
    (out / "sample-ids.json").write_text(json.dumps(keys))
    return out


def tar_keys(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in tar.getmembers()))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def upload(endpoint: str, folder: Path, bucket: str, prefix: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


# ---- readers: each returns a re-iterable loader of dict batches with "index", "meg", "fmri" ----

def litdata_loader(source: str, cache: Path, batch_size: int, workers: int, endpoint: str | None,
                   seed: int = 0):
    import litdata

    options = {"endpoint_url": endpoint} if endpoint else None
    if endpoint and endpoint.startswith("http://"):
        # LitData fetches chunks with obstore, whose client refuses plain http unless told; LitData
        # passes no such option, so a loopback server is unreachable. Allowing http is all this changes
        # (its fast path stays: obstore, async prefetch).
        from litdata.streaming import downloader

        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True
    dataset = litdata.StreamingDataset(source, cache_dir=str(cache) if source.startswith("s3://") else None,
                                       shuffle=True, seed=seed, storage_options=options)
    return litdata.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                       persistent_workers=workers > 0)


def mosaicml_loader(source: str, cache: Path, batch_size: int, workers: int, endpoint: str | None,
                    seed: int = 0):
    from streaming import StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    if endpoint:
        os.environ["S3_ENDPOINT_URL"] = endpoint
    remote, local = (source, str(cache)) if source.startswith("s3://") else (None, source)
    dataset = StreamingDataset(remote=remote, local=local, shuffle=True, shuffle_seed=seed,
                               batch_size=batch_size)
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers,
                               persistent_workers=workers > 0)


def energon_loader(source: str, cache: Path, batch_size: int, workers: int, endpoint: str | None,
                   seed: int = 0, savable: bool = False):
    """Energon's training dataset (its documented shuffle buffer and sequence settings) and loader,
    one pass per iteration (``repeat=False``)."""
    import torch
    import torch.distributed as dist
    from megatron.energon import WorkerConfig, get_loader, get_savable_loader, get_train_dataset

    if endpoint:
        raise NotImplementedError("Energon from S3 is not wired into this bench (msc/rclone config)")
    ids = json.loads((Path(source) / "sample-ids.json").read_text())
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    config = WorkerConfig(rank=rank, world_size=world, num_workers=workers)
    dataset = get_train_dataset(source, worker_config=config, batch_size=batch_size, shuffle_buffer_size=100,
                                max_samples_per_sequence=100, repeat=False)
    loader = get_savable_loader(dataset) if savable else get_loader(dataset)

    class Epochs:
        def state_dict(self):
            return loader.save_state_rank()

        def load_state_dict(self, state):
            loader.restore_state_rank(state)

        def __iter__(self):
            for batch in loader:
                # Energon's default batcher keeps numpy fields as lists: stacked here, as torch's
                # default_collate does for the other loaders
                yield {"index": torch.tensor([ids[k] for k in batch.__key__]),
                       "meg": torch.from_numpy(np.stack(batch.meg)),
                       "fmri": torch.from_numpy(np.stack(batch.fmri))}
    return Epochs()


def ours_loader(source: str, cache: Path, batch_size: int, workers: int, endpoint: str | None,
                seed: int = 0, cached: bool = False):
    from meg2fmri.loader import ShardLoader, StoreConfig, StreamConfig

    store = StoreConfig(storage_options={"endpoint_url": endpoint} if endpoint else {},
                        cache_dir=str(cache) if cached else None)
    loader = ShardLoader(source, "train", StreamConfig(batch_size=batch_size, seed=seed), store,
                         num_workers=workers, device="cpu")

    class Epochs:  # iterating again starts the next epoch, as the peers' loaders do
        def __iter__(self):
            yield from loader

        def close(self):
            loader.close()

        def state_dict(self):
            return loader.state_dict()

        def load_state_dict(self, state):
            loader.load_state_dict(state)
    return Epochs()


IMPORTS = {"litdata": "litdata", "mosaicml": "streaming", "energon": "megatron.energon",
           "ours": "meg2fmri.loader.stream"}
READERS = {"litdata": litdata_loader, "mosaicml": mosaicml_loader, "energon": energon_loader,
           "ours": ours_loader}


def measure(reader: str, source: str, cache: Path, batch_size: int, workers: int, endpoint: str | None,
            reference_sums: dict, payload: int, epochs: int, min_seconds: float = 0.5, **extra) -> dict:
    """First-batch latency, the cold epoch, the warm repeats' median samples/s (each repeat runs whole
    epochs for ``min_seconds``: an epoch of a few hundred samples is too short to time alone), and one
    checked epoch."""
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    import importlib

    importlib.import_module(IMPORTS[reader])  # the library's import is not the loader's latency
    memory = TreeMemory()
    start = time.perf_counter()
    loader = READERS[reader](source, cache, batch_size, workers, endpoint, **extra)
    first_batch, n = None, 0
    for batch in loader:  # the cold epoch: from an empty cache, start-up included
        if first_batch is None:
            first_batch = time.perf_counter() - start
        n += len(batch["index"])
    times = [(n, time.perf_counter() - start)]
    for _ in range(epochs - 1):  # warm: whole epochs until min_seconds have passed, per repeat
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds:
            n += sum(len(batch["index"]) for batch in loader)
        times.append((n, time.perf_counter() - start))
    checked = {"count": 0, "ids": set(), "bad_checksums": 0, "duplicates": 0}
    for batch in loader:  # one more epoch, untimed: every sample once, with its values?
        ids = batch["index"]
        meg = batch["meg"].double().sum(dim=tuple(range(1, batch["meg"].ndim))).numpy()
        fmri = batch["fmri"].double().sum(dim=tuple(range(1, batch["fmri"].ndim))).numpy()
        for i, a, b in zip(ids.tolist(), meg, fmri, strict=True):
            checked["count"] += 1
            checked["duplicates"] += i in checked["ids"]
            checked["ids"].add(i)
            checked["bad_checksums"] += reference_sums.get(i) != (float(a), float(b))
    peak_mb = memory.close()
    close = getattr(loader, "close", None)
    if close is not None:
        close()
    del loader
    n = len(reference_sums)
    exact = (checked["count"] == n and len(checked["ids"]) == n and checked["duplicates"] == 0
             and checked["bad_checksums"] == 0 and checked["ids"] == set(reference_sums))
    warm = [count / seconds for count, seconds in times[1:]]
    cold = times[0][0] / times[0][1]
    warm_rate = statistics.median(warm) if warm else cold
    return {"first_batch_s": first_batch, "cold_samples_per_s": cold, "samples_per_s": warm_rate,
            "mb_per_s": warm_rate * payload / 1e6, "warm_samples_per_s": warm, "exactly_once": exact,
            "delivered": checked["count"], "distinct": len(checked["ids"]), "expected": n,
            "bad_checksums": checked["bad_checksums"],
            "peak_rss_mb": peak_mb, "cache_bytes": folder_bytes(cache)}


class TreeMemory:
    """The peak resident memory of this process and its children (DataLoader workers, their threads'
    processes), sampled every 20 ms: pages shared between them count once per process, so this is an
    upper bound on what the machine holds."""

    def __init__(self, every_s: float = 0.02):
        import threading

        import psutil

        self.peak, self.every_s, self.stop = 0.0, every_s, threading.Event()
        self.me = psutil.Process()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import psutil

        while not self.stop.is_set():
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:  # a worker that just ended
                    pass
            self.peak = max(self.peak, total / 2**20)
            self.stop.wait(self.every_s)

    def close(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.peak


def one(args) -> None:
    """One configuration in this (fresh) process, so that its peak memory is its own."""
    paths, sums, payload = reference(Path(args.shards))
    extra = {"cached": True} if args.cached else {}
    result = measure(args.reader, args.source, Path(args.cache), args.batch_size, args.workers, args.endpoint,
                     sums, payload, args.epochs, **extra)
    print(json.dumps(result))


def run_one(reader: str, source: str, cache: Path, batch_size: int, workers: int, endpoint: str | None,
            shards: Path, epochs: int, cached: bool = False) -> dict:
    cmd = [sys.executable, "-m", "meg2fmri.bench.peers", "one", "--reader", reader, "--source", source,
           "--cache", str(cache), "--batch-size", str(batch_size), "--workers", str(workers),
           "--shards", str(shards), "--epochs", str(epochs)]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    if cached:
        cmd.append("--cached")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args) -> None:
    """Convert, upload, and measure every (reader, source, batch size) with 0 and 2 workers."""
    from meg2fmri.bench.fixtures import moto_process, upload_train_shards
    from meg2fmri.shards.index import read_index

    shards, work = Path(args.shards), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths, sums, payload = reference(shards)
    index = read_index(shards)
    train = [e for e in index.shards if e.split == "train"]
    start = time.perf_counter()
    formats = {"litdata": to_litdata(paths, work / "litdata")}
    convert_s = {"litdata": time.perf_counter() - start}
    start = time.perf_counter()
    formats["mosaicml"] = to_mds(paths, work / "mds")
    convert_s["mosaicml"] = time.perf_counter() - start
    start = time.perf_counter()
    formats["energon"] = to_energon(paths, work / "energon")
    convert_s["energon"] = time.perf_counter() - start
    disk = {"ours": sum(e.bytes for e in train), **{k: folder_bytes(v) for k, v in formats.items()}}
    rows = []
    server, endpoint = moto_process()
    try:
        s3 = {"ours": upload_train_shards(endpoint, shards, train, "peers-bench", index.target.get("mask")),
              **{k: upload(endpoint, v, "peers-bench", k) for k, v in formats.items() if k != "energon"}}
        local = {"ours": str(shards), **{k: str(v) for k, v in formats.items()}}
        plans = []
        for batch_size in args.batch_sizes:
            for where, sources in (("local", local), ("s3", s3)):
                for reader in ("ours", *PEERS):
                    if reader in sources:  # Energon: local only (its S3 access is not wired here)
                        plans.append((reader, where, sources[reader], batch_size, False))
                plans.append(("ours", where, s3["ours"], batch_size, True)) if where == "s3" else None
        for reader, where, source, batch_size, cached in plans:
            best = None
            for workers in args.workers:
                result = run_one(reader, source, work / "cache" / reader, batch_size, workers,
                                 endpoint if where == "s3" else None, shards, args.epochs, cached)
                result.update(reader=reader, source=where, batch_size=batch_size, workers=workers,
                              cache="disk" if cached or (where == "s3" and reader != "ours") else "none",
                              disk_bytes=disk[reader], convert_s=convert_s.get(reader))
                if best is None or result.get("samples_per_s", 0) > best.get("samples_per_s", 0):
                    best = result
            best["name"] = f"{reader}{'_cached' if cached else ''}_{where}_b{batch_size}"
            rows.append(best)
            print(json.dumps({k: best.get(k) for k in ("name", "workers", "samples_per_s",
                                                       "cold_samples_per_s",
                                                       "first_batch_s", "exactly_once", "error")}),
                  flush=True)
    finally:
        server.terminate()
        server.wait()
    Path(args.json).write_text(json.dumps({"rows": rows, "samples": len(sums), "payload_bytes": payload,
                                           "disk_bytes": disk, "convert_s": convert_s,
                                           "versions": versions()}, indent=1))


# ---- guarantees, each checked by running the loader (``guarantees``) ----

def epoch_ids(loader, limit: int | None = None) -> list[list[int]]:
    """The sample ids of each batch of one pass (the first ``limit`` batches)."""
    out = []
    for batch in loader:
        out.append([int(i) for i in batch["index"]])
        if limit is not None and len(out) == limit:
            break
    return out


def _rank_main(rank: int, reader: str, source: str, cache: str, init: str, out: str) -> None:
    """One of two ranks (gloo on loopback): one epoch with 2 workers; its ids to ``out``."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        loader = READERS[reader](source, Path(cache) / f"rank{rank}", 16, 2, None)
        ids = [i for batch in epoch_ids(loader) for i in batch]
        Path(out).write_text(json.dumps(ids))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def check_ranks(reader: str, source: str, work: Path, n: int) -> dict:
    """Two ranks x two workers, one epoch: is every sample delivered once across ranks?"""
    import torch.multiprocessing as mp

    work.mkdir(parents=True, exist_ok=True)
    init = f"file://{work / 'rendezvous'}"
    (work / "rendezvous").unlink(missing_ok=True)
    outs = [str(work / f"rank{r}.json") for r in range(2)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, reader, source, str(work / "cache"), init, outs[r]))
             for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
    if any(proc.exitcode != 0 for proc in procs):
        return {"ok": False, "detail": f"a rank exited with {[proc.exitcode for proc in procs]}"}
    ids = [json.loads(Path(o).read_text()) for o in outs]
    both = ids[0] + ids[1]
    missing, extra = n - len(set(both)), len(both) - len(set(both))
    return {"ok": missing == 0 and extra == 0 and len(both) == n,
            "detail": f"ranks got {len(ids[0])} + {len(ids[1])} samples: {missing} missing, {extra} repeated"}


def check_resume(reader: str, source: str, work: Path, stop: int = 3) -> dict:
    """Stop after ``stop`` batches, save the loader's state, resume in a new loader: the same stream?"""
    full = epoch_ids(READERS[reader](source, work / "full", 16, 0, None))
    extra = {"savable": True} if reader == "energon" else {}  # Energon's checkpointing loader
    first = READERS[reader](source, work / "a", 16, 0, None, **extra)
    head = epoch_ids(first, stop)
    state = first.state_dict()  # each loader's own checkpoint API
    resumed = READERS[reader](source, work / "b", 16, 0, None, **extra)
    resumed.load_state_dict(state)
    tail = epoch_ids(resumed)
    flat, whole = [i for b in head + tail for i in b], [i for b in full for i in b]
    same = head + tail == full
    return {"ok": same, "detail": "the resumed stream equals the uninterrupted one" if same else
            f"{len(flat)} samples after resuming ({len(set(flat))} distinct) vs {len(whole)}; "
            f"{'same set, other order' if sorted(flat) == sorted(whole) else 'not the same samples'}"}


def check_shuffle(reader: str, source: str, work: Path) -> dict:
    """Two fresh loaders with the same seed: the same first epoch? A second epoch: a new order?"""
    a, b = (epoch_ids(READERS[reader](source, work / k, 16, 0, None)) for k in "ab")
    loader = READERS[reader](source, work / "c", 16, 0, None)
    first = epoch_ids(loader)
    second = epoch_ids(loader)
    return {"ok": a == b and first != second,
            "detail": f"same seed, same order: {a == b}; epoch 2 reshuffled: {first != second}"}


def check_integrity(reader: str, folder: Path, work: Path, sums: dict) -> dict:
    """Flip one byte inside a sample's data in a copy of the format's largest file: caught?"""
    copy = work / "corrupt"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    if reader == "ours":  # a training shard (the folder also holds the Zarr cache, which no loader reads)
        candidates = [copy / path.relative_to(folder) for path in reference(folder)[0]]
    else:
        candidates = [p for p in copy.rglob("*") if p.is_file() and p.suffix != ".json"]
    victim = max(candidates, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    try:
        result = measure(reader, str(copy), work / "cache", 16, 0, None, sums, 1, epochs=0)
    except Exception as err:  # noqa: BLE001 - any error that names the damage counts as caught
        return {"ok": True, "detail": f"raised {type(err).__name__}: {str(err)[:120]}"}
    return {"ok": False, "detail": f"no error; {result['bad_checksums']} sample(s) delivered with wrong "
                                   f"values"}


S3_RETRIES = {  # read from each package's source (not checkable against moto without fault injection)
    "ours": "yes: retries with exponential backoff (StoreConfig.retries=4, backoff_s=0.5), tested against "
            "a loopback server that drops connections (tests/test_loader_faults.py)",
    "litdata": "yes: botocore retries (max_attempts=1000, adaptive; litdata/streaming/client.py); "
               "not checked here",
    "mosaicml": "yes: download_retry=2 per shard (StreamingDataset); not checked here",
    "energon": "not measured: its S3 access (multi-storage-client or rclone) is not wired into this bench",
}


def guarantees(args) -> None:
    """Each guarantee checked on each loader, on the same converted samples; a JSON table."""
    shards, work = Path(args.shards), Path(args.work)
    paths, sums, _ = reference(shards)
    folders = {"ours": shards, "litdata": to_litdata(paths, work / "g-litdata"),
               "mosaicml": to_mds(paths, work / "g-mds"), "energon": to_energon(paths, work / "g-energon")}
    table = {}
    for reader, folder in folders.items():
        checks, here = {}, work / "g" / reader
        runs = {"exactly_once_2_ranks_2_workers": (check_ranks,
                                                   (reader, str(folder), here / "ranks", len(sums))),
                "mid_epoch_resume": (check_resume, (reader, str(folder), here)),
                "deterministic_shuffle": (check_shuffle, (reader, str(folder), here)),
                "integrity_check": (check_integrity, (reader, folder, here, sums))}
        for name, (check, check_args) in runs.items():
            try:
                checks[name] = check(*check_args)
            except Exception as err:  # noqa: BLE001 - a check that cannot run is reported as such
                detail = f"could not run: {type(err).__name__}: {str(err)[:160]}"
                checks[name] = {"ok": False, "detail": detail}
            print(json.dumps({"reader": reader, "check": name, **checks[name]}), flush=True)
        checks["s3_retries"] = {"ok": None, "detail": S3_RETRIES[reader]}
        table[reader] = checks
    report = {"guarantees": table, "samples": len(sums), "versions": versions()}
    Path(args.json).write_text(json.dumps(report, indent=1))


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "litdata", "mosaicml-streaming", "megatron-energon", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meg2fmri.bench.peers",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="convert our shards for each peer and measure every loader")
    c.add_argument("--shards", required=True, help="our shard folder (its index.json and train shards)")
    c.add_argument("--work", required=True, help="folder for the peers' formats and caches")
    c.add_argument("--json", required=True, help="where the rows go")
    c.add_argument("--epochs", type=int, default=4,
                   help="timed repeats per configuration: the cold epoch, then warm repeats of 0.5 s each")
    c.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCHES))
    c.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts tried; best kept")
    g = sub.add_parser("guarantees", help="check each loader's guarantees by running it")
    g.add_argument("--shards", required=True, help="our shard folder")
    g.add_argument("--work", required=True, help="folder for the converted copies")
    g.add_argument("--json", required=True, help="where the table goes")
    o = sub.add_parser("one", help="one configuration, in this process")
    o.add_argument("--reader", choices=sorted(READERS), required=True)
    o.add_argument("--source", required=True)
    o.add_argument("--cache", required=True)
    o.add_argument("--batch-size", type=int, required=True)
    o.add_argument("--workers", type=int, required=True)
    o.add_argument("--shards", required=True)
    o.add_argument("--epochs", type=int, default=4)
    o.add_argument("--endpoint")
    o.add_argument("--cached", action="store_true", help="our loader with a disk cache of S3 shards")
    args = parser.parse_args(argv)
    {"compare": compare, "guarantees": guarantees, "one": one}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
