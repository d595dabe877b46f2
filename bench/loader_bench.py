"""``bench loader``: samples/s delivered as batches, side by side, from the same page-cached shards.

Rows (throughput in samples/s; ``mb_per_s`` is MEG + fMRI float32 payload delivered per second):

- ``paper_style``: per sample, open the FIF with MNE and the NIfTI with nibabel and cut the pair
  (a 2-s MEG window averaged per channel, one volume's slice resized), as a per-sample loader would;
- ``webdataset_plain``: ``webdataset.WebDataset(shards).decode()`` + torch DataLoader, the better of
  0 and 2 workers (persistent workers, so their start-up is not counted);
- ``loader_local``: our ``ShardLoader``, shuffled, from the local folder;
- ``loader_s3`` / ``s3_raw``: our loader from moto's S3 server on loopback (in its own process), and
  the fastest plain GET loop of the same objects: boto3 ``read()`` or s3fs ``cat_file`` with 1, 2, 4
  or 8 concurrent GETs, whichever is fastest here (the loader beat a fixed loop: 104-119%); the
  loader also checks each shard's sha256, the plain loops do not;
- ``zarr_map``: the map-style ``ZarrSamples`` through a shuffling DataLoader;
- ``memcpy``: ``np.copyto`` of 256 MB, this machine's copy bandwidth.

The demo preset is ingested with 100 samples per shard (9 train shards): with the default 1,000 the
900 training samples fit one shard, and no reader could overlap one shard's download with another's
decoding. Every timing is the median of ``repeats`` after a warm-up; each repeat runs whole epochs until
``min_seconds`` have passed, so short epochs are timed over many.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from meg2fmri.ingest.bids_io import find_runs
from meg2fmri.ingest.pairing import resize_bilinear
from meg2fmri.loader import ShardLoader, StoreConfig, StreamConfig
from meg2fmri.loader.decode import SampleLayout, shard_arrays
from meg2fmri.loader.storage import open_store
from meg2fmri.loader.zarr_samples import ZarrSamples, collate_batch, export_zarr
from meg2fmri.shards.commit import Location
from meg2fmri.shards.index import ShardIndex, read_index

from .fixtures import ensure_shards, moto_process, upload_train_shards
from .report import row


def rate(epoch, repeats: int, min_seconds: float) -> tuple[float, list[float]]:
    """Median samples/s of ``epoch()`` (which returns the samples it delivered) over timed repeats."""
    epoch()  # warm-up
    rates = []
    for _ in range(repeats):
        start, samples = time.perf_counter(), 0
        while True:
            samples += epoch()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(samples / elapsed)
    return statistics.median(rates), rates


def memcpy_mb_per_s(repeats: int) -> float:
    """This machine's memcpy bandwidth (MB/s), the ceiling of a loader's payload rate."""
    src = np.ones(256 << 20, dtype=np.uint8)
    dst = np.zeros_like(src)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return src.nbytes / 1e6 / statistics.median(times[1:])


def paper_style(bids_root: Path, shards: Path, index: ShardIndex, samples: int) -> list[float]:
    """Seconds per sample when each sample opens the FIF and the NIfTI itself."""
    import mne
    import nibabel as nib

    files = {(f.subject, f.run): f for f in find_runs(Location(bids_root))[0]}
    entry = next(e for e in index.shards if e.split == "train")
    arrays = shard_arrays(open_store(shards).shard(entry), entry, SampleLayout.from_index(index))
    mask = None  # a per-sample loader would read the mask once, not per sample
    if index.target["kind"] != "slice":
        mask = nib.load(shards / index.target["mask"]).get_fdata() > 0
    times = []
    for meta in arrays.metadata(np.linspace(0, entry.count - 1, samples).astype(int)):
        start = time.perf_counter()
        f = files[(meta["subject"], meta["run"])]
        raw = mne.io.read_raw_fif(f.url("meg"), preload=False, verbose="error")
        first = int(meta["meg_sample"] * raw.info["sfreq"] / 100)
        meg = raw.get_data(start=first, stop=first + int(2 * raw.info["sfreq"])).mean(axis=1)
        volume = np.asarray(nib.load(f.url("bold")).dataobj[..., meta["fmri_volume"]], dtype=np.float32)
        if index.target["kind"] == "slice":
            image = resize_bilinear(volume[:, :, meta["slice"]], index.image_size)
        else:  # whole-brain targets: every in-mask voxel
            image = volume[mask]
        times.append(time.perf_counter() - start)
        del raw, meg, image
    return times


def webdataset_epoch(urls: list[str], batch_size: int, workers: int):
    """One epoch of plain webdataset + DataLoader over the shards: samples and seconds."""
    import webdataset as wds

    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         persistent_workers=workers > 0)

    def epoch() -> int:
        n = 0
        for batch in loader:
            n += len(batch["meg.npy"])
        return n
    return epoch


def loader_epoch(loader: ShardLoader):
    """One epoch of our ``ShardLoader``: samples and seconds."""
    def epoch() -> int:
        loader.set_epoch(loader.epoch)
        n = 0
        for batch in loader:
            n += len(batch["index"])
        return n
    return epoch


CONCURRENCY = (1, 2, 4, 8)


def s3_raw_epochs(endpoint: str, bucket: str, keys: list[str], samples: int) -> dict:
    """Plain GET loops over the same objects with 1, 2, 4 and 8 concurrent requests, for each client
    (boto3 ``get_object().read()`` and s3fs ``cat_file``): the baseline is the fastest of them all."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    import s3fs

    client = boto3.client("s3", endpoint_url=endpoint)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    getters = {"boto3": lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
               "s3fs": lambda key: fs.cat_file(f"{bucket}/{key}")}
    epochs = {}
    for name, get in getters.items():
        for threads in CONCURRENCY:
            pool = ThreadPoolExecutor(threads)

            def epoch(get=get, pool=pool) -> int:
                list(pool.map(get, keys))
                return samples

            epochs[f"{name}_x{threads}"] = epoch
    return epochs


def cuda_rows(shards: Path, payload: int, repeats: int, min_seconds: float) -> tuple[dict, float]:
    """On a GPU: the loader's delivery to the device (pinned buffers, side-stream copies, every batch
    synchronised at the end of an epoch) and ``copy_`` of pinned host memory of a batch's bytes to
    the device, the host-to-device ceiling. Returns (loader samples/s, pinned copy MB/s)."""
    device = torch.device("cuda")
    loader = ShardLoader(shards, "train", StreamConfig(batch_size=256), device=device)

    def epoch() -> int:
        loader.set_epoch(loader.epoch)
        n = 0
        for batch in loader:
            n += len(batch["index"])
        torch.cuda.synchronize()
        return n
    value, _ = rate(epoch, repeats, min_seconds)
    host = torch.empty(256 * payload, dtype=torch.uint8).pin_memory()
    target = torch.empty_like(host, device=device)
    times = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return value, host.numel() / 1e6 / statistics.median(times[1:])


def zarr_epoch(path: Path, batch_size: int):
    """One epoch of the map-style Zarr dataset with a shuffling DataLoader."""
    loader = torch.utils.data.DataLoader(ZarrSamples(path, "train"), batch_size=batch_size, shuffle=True,
                                         collate_fn=collate_batch)

    def epoch() -> int:
        return sum(len(batch["index"]) for batch in loader)
    return epoch


class Table:
    """The rows of one run, and each row's samples/s by name (for the ratios in the notes)."""

    def __init__(self, payload: int):
        self.payload, self.rows, self.rates = payload, [], {}

    def add(self, name: str, samples_per_s: float, runs: list[float], **extra) -> None:
        self.rates[name] = samples_per_s
        self.rows.append(row(name, 1 / samples_per_s, samples_per_s, "samples/s",
                             mb_per_s=samples_per_s * self.payload / 1e6, **extra))


def local_rows(table: Table, root: Path, shards: Path, index: ShardIndex, train: list, repeats: int,
               min_seconds: float, paper_samples: int) -> None:
    """The per-file loop, plain webdataset (the better of 0 and 2 workers) and ours, local files."""
    times = paper_style(root, shards, index, paper_samples)
    table.add("paper_style", 1 / statistics.median(times), times, batch_size=1)
    urls = [str(shards / e.name) for e in train]
    best = max(((w, *rate(webdataset_epoch(urls, 32, w), repeats, min_seconds)) for w in (0, 2)),
               key=lambda t: t[1])
    table.add("webdataset_plain", best[1], best[2], batch_size=32, workers=best[0])
    for batch_size in (32, 256):
        loader = ShardLoader(shards, "train", StreamConfig(batch_size=batch_size), device="cpu")
        value, runs = rate(loader_epoch(loader), repeats, min_seconds)
        table.add("loader_local" if batch_size == 32 else "loader_local_b256", value, runs,
                  batch_size=batch_size)


def s3_rows(table: Table, shards: Path, index: ShardIndex, train: list, repeats: int,
            min_seconds: float) -> None:
    """Ours from moto's S3 server on loopback, and the fastest plain GET loop of the same objects."""
    server, endpoint = moto_process()
    try:
        upload_train_shards(endpoint, shards, train, "meg2fmri-bench", index.target.get("mask"))
        store = StoreConfig(storage_options={"endpoint_url": endpoint})
        ours = {}
        for batch_size in (32, 256):
            loader = ShardLoader("s3://meg2fmri-bench/demo", "train", StreamConfig(batch_size=batch_size),
                                 store, device="cpu")
            ours[batch_size] = rate(loader_epoch(loader), repeats, min_seconds)
        keys = [f"demo/{e.name}" for e in train]
        raw = {name: rate(fn, repeats, min_seconds) for name, fn in
               s3_raw_epochs(endpoint, "meg2fmri-bench", keys, sum(e.count for e in train)).items()}
    finally:
        server.terminate()
        server.wait()
    table.add("loader_s3", *ours[32], batch_size=32)
    table.add("loader_s3_b256", *ours[256], batch_size=256)
    client_name = max(raw, key=lambda k: raw[k][0])
    table.add("s3_raw", *raw[client_name], client=client_name,
              **{f"{name}_samples_per_s": round(v[0]) for name, v in raw.items()})


def loader_notes(table: Table, shards: Path, index: ShardIndex, n_train: int, memcpy: float) -> list[str]:
    """Our loader against each alternative, with the targets (bandwidth ones for whole-brain samples,
    issue 11)."""
    rates, payload = table.rates, table.payload
    c, local_mb = rates["loader_local"], rates["loader_local"] * payload / 1e6
    volume = index.target["kind"] != "slice"
    return [
        f"shards: {shards} ({n_train} train samples, {payload} payload bytes each; target "
        f"{index.target['kind']} {index.target['shape']} {index.target['dtype']})",
        f"loader_local / webdataset_plain = {c / rates['webdataset_plain']:.0f}x"
        + ("" if volume else " (target >= 50x)"),
        f"loader_local / paper_style = {c / rates['paper_style']:.0f}x"
        + ("" if volume else " (target >= 10,000x)"),
        f"loader_s3 / s3_raw = {rates['loader_s3'] / rates['s3_raw']:.0%} "
        f"(target >= {90 if volume else 80}%); "
        f"at batch 256: {rates['loader_s3_b256'] / rates['s3_raw']:.0%}",
        f"loader_local payload = {local_mb:.0f} MB/s = {local_mb / memcpy:.0%} of memcpy (target >= "
        f"{70 if volume else 25}%); at batch 256: {rates['loader_local_b256'] * payload / 1e6 / memcpy:.0%}",
    ]


def device_rows(table: Table, shards: Path, repeats: int, min_seconds: float) -> str:
    """The prefetcher's delivery to a CUDA device against pinned ``copy_`` of the same bytes, when
    there is one; the note."""
    if not torch.cuda.is_available():
        return "no CUDA device here: the GPU prefetcher's host-to-device rows were not measured"
    samples_per_s, copy_mb_per_s = cuda_rows(shards, table.payload, repeats, min_seconds)
    table.add("loader_cuda_b256", samples_per_s, [], batch_size=256)
    table.rows.append(row("h2d_pinned_copy", 256 * table.payload / 1e6 / copy_mb_per_s, copy_mb_per_s, "MB/s",
                          mb_per_s=copy_mb_per_s))
    delivered = samples_per_s * table.payload / 1e6
    return (f"loader to {torch.cuda.get_device_name()} at batch 256 = {delivered:.0f} MB/s "
            f"= {delivered / copy_mb_per_s:.0%} of pinned copy_ ({copy_mb_per_s:.0f} MB/s)")


def run(work: Path, bids_root: Path | None, repeats: int = 5, min_seconds: float = 0.3,
        paper_samples: int = 4, png: Path | None = None, target: str = "slice",
        peers: Path | None = None, peer_epochs: int = 4) -> tuple[list[dict], list[str]]:
    """``bench loader``: our loader against plain webdataset, per-file MNE + nibabel, Zarr, S3 GETs."""
    work.mkdir(parents=True, exist_ok=True)
    root, shards = ensure_shards(work, bids_root, target)
    index = read_index(shards)
    table = Table(SampleLayout.from_index(index).payload_bytes)
    train = [e for e in index.shards if e.split == "train"]
    for e in train:  # page-cache the shards for every reader alike
        (shards / e.name).read_bytes()
    local_rows(table, root, shards, index, train, repeats, min_seconds, paper_samples)
    s3_rows(table, shards, index, train, repeats, min_seconds)
    zarr_path = export_zarr(shards, work / "loader-samples.zarr", progress=False, overwrite=True)
    table.add("zarr_map", *rate(zarr_epoch(zarr_path, 32), repeats, min_seconds), batch_size=32)
    memcpy = memcpy_mb_per_s(repeats)
    table.rows.append(row("memcpy", 256 * 2**20 / 1e6 / memcpy, memcpy, "MB/s", mb_per_s=memcpy))
    device_note = device_rows(table, shards, repeats, min_seconds)
    rows = table.rows
    notes = [*loader_notes(table, shards, index, sum(e.count for e in train), memcpy), device_note]
    if peers is not None:
        peer_rows, peer_notes = peer_comparison(peers, shards, work / "peers", peer_epochs)
        rows += peer_rows
        notes += peer_notes
    if png is not None:
        bar_chart(rows, png)
        notes.append(f"chart: {png}")
    return rows, notes


def peer_comparison(python: Path, shards: Path, work: Path, epochs: int) -> tuple[list[dict], list[str]]:
    """``bench/peers.py`` run with the peers' Python: rows ``peer_<reader>_<source>_b<batch>`` (our
    loader among them, measured there too) and notes with our ratio to each peer."""
    import json
    import subprocess

    out = work / "peers.json"
    cmd = [str(python), "-m", "meg2fmri.bench.peers", "compare", "--shards", str(shards), "--work", str(work),
           "--json", str(out), "--epochs", str(epochs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench loader --peers: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    report = json.loads(out.read_text())
    rows, notes, by = [], [], {}
    for r in report["rows"]:
        by[r["name"]] = r
        if "error" in r:
            notes.append(f"{r['name']}: failed ({r['error']})")
            continue
        fields = {k: v for k, v in r.items() if k not in ("name", "samples_per_s", "warm_samples_per_s")}
        rate_ = r["samples_per_s"]
        rows.append(row(f"peer_{r['name']}", 1 / rate_, rate_, "samples/s", **fields))
    v = report["versions"]
    notes.append(f"peers (torch {v['torch']}, litdata {v['litdata']}, mosaicml-streaming "
                 f"{v['mosaicml-streaming']}, megatron-energon {v['megatron-energon']}; "
                 f"{report['samples']} samples; disk: "
                 + ", ".join(f"{k} {b / 1e6:.1f} MB" for k, b in report["disk_bytes"].items()) + ")")
    for name, r in by.items():
        if not name.startswith("ours_") or "error" in r:
            continue
        rest = name.removeprefix("ours_").removeprefix("cached_")
        parts = []
        for peer in ("litdata", "mosaicml", "energon"):
            other = by.get(f"{peer}_{rest}")
            if other is None or "error" in other:
                continue
            ratio = r["samples_per_s"] / other["samples_per_s"]
            parts.append(f"{peer} {other['samples_per_s']:,.0f}/s (ours {ratio:.2f}x"
                         f", cold {r['cold_samples_per_s'] / other['cold_samples_per_s']:.2f}x, first batch "
                         f"{r['first_batch_s']:.2f} vs {other['first_batch_s']:.2f} s, peak RSS "
                         f"{r['peak_rss_mb']:.0f} vs {other['peak_rss_mb']:.0f} MB"
                         f"{'' if other['exactly_once'] else ', NOT exactly once'})")
        notes.append(f"{name}: {r['samples_per_s']:,.0f} samples/s ({r['workers']} workers"
                     f"{'' if r['exactly_once'] else ', NOT exactly once'}); " + "; ".join(parts))
    return rows, notes


def bar_chart(rows: list[dict], path: Path) -> None:
    """The loader bench's bar chart of samples/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["unit"] == "samples/s"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.2))
    ax.barh([r["name"] for r in shown], [r["throughput"] for r in shown], color="#4a7ab5")
    for i, r in enumerate(shown):
        ax.text(r["throughput"], i, f" {r['throughput']:,.0f}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("samples/s delivered (log scale; median of repeats, same shards)")
    ax.set_title("bench loader")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
