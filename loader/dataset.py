"""``ShardDataset``: a torch IterableDataset that yields whole batches, gathered from strided shard views.

Each DataLoader worker (or the main process) computes the epoch plan (``plan.py``), takes its own
batches, fetches the shards they need (ahead, in a background thread, so downloads overlap
decoding) and gathers a chunk of batches at a time with the ``gather_rows`` kernel into freshly
allocated (pinned, when asked) buffers; the batches it yields are views of those buffers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from meg2fmri.shards.errors import IntegrityError, ShardReadError

from .buffers import BufferPool
from .decode import SampleLayout, ShardArrays, shard_arrays
from .kernels import gather
from .plan import EpochPlan, epoch_plan, worker_batches
from .storage import LocalStore, S3Store

CHUNK_BYTES = 64 << 20  # payload gathered per round, at most (at least one batch)


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """What an epoch looks like; the same on every rank (only ``rank`` differs)."""

    batch_size: int = 32
    shuffle: bool = True
    seed: int = 0
    shuffle_buffer: int = 4096  # samples permuted together (bounded memory: the shards they span)
    meta: bool = False  # also decode each sample's JSON metadata (per-sample Python: slower)
    on_corrupt: str = "raise"  # or "skip": leave out a corrupt shard's samples, warn, count them
    chunk_samples: int = 2048  # samples gathered per round (latency vs per-call overhead)
    lookahead: int = 2  # shards fetched ahead of use
    fetch_threads: int = 2  # concurrent shard reads (S3 GETs) per process
    gather_threads: int = 2  # threads copying whole-brain rows into a batch (GIL released)

    def __post_init__(self):
        if self.on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', not {self.on_corrupt!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")


class ShardDataset(torch.utils.data.IterableDataset):
    """Batches of one split, for one rank; set ``epoch`` and ``start`` (batches to skip) before iterating."""

    def __init__(self, store: LocalStore | S3Store, split: str, config: StreamConfig, *, rank: int = 0,
                 world: int = 1, pin_memory: bool = False, index=None):
        self.store, self.split, self.config = store, split, config
        self.index = index or store.read_index()
        self.entries = [e for e in self.index.shards if e.split == split]
        counts = np.array([e.count for e in self.entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.counts = counts
        self.layout = SampleLayout.from_index(self.index)
        self.rank, self.world, self.pin_memory = rank, world, pin_memory
        # (epoch, start) in shared memory: DataLoader workers that live across epochs
        # (persistent_workers) read the epoch the main process set, not the one they were forked with
        self._cursor = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._plan: tuple[int, EpochPlan] | None = None
        # Local (memory-mapped) shards stay open across epochs: checked once, then free to reuse.
        # Remote shards are fetched again each epoch and released after their last use.
        self.opened: dict[int, ShardArrays] = {}
        self.keep_open = isinstance(store, LocalStore)
        # Which local shards some process of this loader has already hashed (shared with the
        # workers): a shard is hashed once for the loader's life, not once per worker per epoch.
        self._hashed = torch.zeros(len(self.entries), dtype=torch.bool).share_memory_()
        self._pools: dict[tuple[int, bool], BufferPool] = {}

    @property
    def epoch(self) -> int:
        return int(self._cursor[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._cursor[0] = value

    @property
    def start(self) -> int:
        """Batches of this epoch to skip (a resumed position)."""
        return int(self._cursor[1])

    @start.setter
    def start(self, value: int) -> None:
        self._cursor[1] = value

    def __len__(self) -> int:  # batches per rank per epoch (the same on every rank)
        return self.plan().batches

    def plan(self, epoch: int | None = None) -> EpochPlan:
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan[0] != epoch:  # the main process and the reader share it
            c = self.config
            self._plan = epoch, epoch_plan(self.counts, seed=c.seed, epoch=epoch, rank=self.rank,
                                           world=self.world, batch_size=c.batch_size, shuffle=c.shuffle,
                                           shuffle_buffer=c.shuffle_buffer)
        return self._plan[1]

    def __iter__(self) -> Iterator[dict]:
        for chunk in self.chunks():
            yield from chunk

    def _pool(self, pin: bool) -> BufferPool:
        """This process's buffer pool (a pool inherited through fork() is not shared: rebuilt)."""
        key = (os.getpid(), pin)
        if key not in self._pools:
            self._pools[key] = BufferPool(pin)
        return self._pools[key]

    def chunks(self) -> Iterator[list[dict]]:
        """This worker's batches, a gathered chunk (``chunk_samples``) at a time."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 0)
        plan = self.plan()
        mine = list(worker_batches(plan.batches, self.start, worker, workers))
        chunks, current, filled = [], [], 0
        # at most CHUNK_BYTES a round: whole-brain samples are 100s of KB (batches stay whole)
        limit = max(1, min(self.config.chunk_samples, CHUNK_BYTES // self.layout.payload_bytes))
        for j in mine:
            current.append(j)
            filled += plan.bounds[j + 1] - plan.bounds[j]
            if filled >= limit:
                chunks.append(current)
                current, filled = [], 0
        if current:
            chunks.append(current)
        pin = self.pin_memory and info is None and torch.cuda.is_available()
        ids = [np.concatenate([plan.batch(j) for j in chunk]) for chunk in chunks]
        slots = [np.searchsorted(self.starts, i, side="right") - 1 for i in ids]  # shard of each sample
        sizes = plan.sizes()
        with ShardFetcher(self, [np.unique(slot) for slot in slots]) as fetcher:
            for i, chunk in enumerate(chunks):
                yield self._gather(ids[i], slots[i], sizes[chunk], fetcher.arrays(i), pin)

    def _gather(self, ids: np.ndarray, slot: np.ndarray, sizes: np.ndarray,
                arrays: dict[int, ShardArrays | None], pin: bool) -> list[dict]:
        """Batches of ``sizes`` samples ``ids`` (in shards ``slot``) from the open shard ``arrays``."""
        keep = None
        if None in arrays.values():
            keep = np.array([arrays[s] is not None for s in slot], dtype=bool)
        if keep is not None:  # skipped shards: drop their samples, batches shrink, the count stays
            edges = np.concatenate([[0], np.cumsum(sizes)])
            sizes = np.array([keep[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
            ids, slot = ids[keep], slot[keep]
        local = ids - self.starts[slot]
        n, lay = len(ids), self.layout
        pool = self._pool(pin)  # reused buffers: a fresh one costs a page fault per 4 KB (buffers.py)
        copiers = gather_pool(self.config.gather_threads) if self.config.gather_threads > 1 else None
        meg_np = pool.array((n, lay.width), np.float32)
        target = lay.target  # slices as (B, 1, S, S) images; voxels and parcels as (B, values)
        shape = (1, *target.shape) if target.kind == "slice" else target.shape
        # float16 moves as its bits (uint16), which the kernel copies like any number
        bits = np.dtype(f"u{target.np_dtype.itemsize}") if target.dtype == "float16" else target.np_dtype
        fmri_rows = pool.array((n, target.values), bits)
        meg = torch.from_numpy(meg_np)
        fmri = torch.from_numpy(fmri_rows.view(target.np_dtype).reshape(n, *shape))
        # one kernel call per (shard, array) for the whole chunk: the rows it gives, and where they go
        by_shard = np.argsort(slot, kind="stable")
        cuts = np.flatnonzero(np.diff(slot[by_shard])) + 1
        for positions in np.split(by_shard, cuts):
            if len(positions) == 0:
                continue
            shard = arrays[slot[positions[0]]]
            gather(shard.meg, local[positions], positions, meg_np)
            gather(shard.pixels.view(bits), local[positions], positions, fmri_rows, copiers,
                   self.config.gather_threads)
        index = torch.from_numpy(ids)
        edges = np.concatenate([[0], np.cumsum(sizes)])
        batches = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            batch = {"meg": meg[a:b], "fmri": fmri[a:b], "index": index[a:b]}
            if self.config.meta:
                pairs = zip(slot[a:b], local[a:b], strict=True)
                batch["meta"] = [arrays[s].metadata([r])[0] for s, r in pairs]
            batches.append(batch)
        return batches


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def gather_pool(threads: int) -> ThreadPoolExecutor:
    """This process's row-copying threads (see ``kernels.gather``)."""
    key = (os.getpid(), -threads)  # beside the fetch pools, never one of them
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard-gather")
    return _POOLS[key]


def fetch_pool(threads: int) -> ThreadPoolExecutor:
    """This process's shard-fetching threads, kept across epochs (a pool inherited through fork()
    has no threads behind it, hence one per process id)."""
    key = (os.getpid(), threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard-fetch")
    return _POOLS[key]


class ShardFetcher:
    """Fetches the shards each chunk needs, ``lookahead`` shards ahead, and releases them after last use."""

    def __init__(self, dataset: ShardDataset, needs: list[np.ndarray]):
        self.dataset, self.needs = dataset, needs
        self.order = list(dict.fromkeys(int(s) for need in needs for s in need))
        self.position = {s: i for i, s in enumerate(self.order)}
        self.last_use = {int(s): i for i, need in enumerate(needs) for s in need}
        self.futures: dict[int, Future] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.next = 0
        self.skipped: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for future in self.futures.values():
            future.cancel()
        wait(list(self.futures.values()))  # nothing of this epoch runs on into the next

    def _submit_through(self, position: int) -> None:
        while self.next < len(self.order) and self.next <= position:
            slot = self.order[self.next]
            self.next += 1
            if slot in self.dataset.opened:
                continue
            if self.pool is None:
                self.pool = fetch_pool(self.dataset.config.fetch_threads)
            self.futures[slot] = self.pool.submit(self._load, slot)

    def _load(self, slot: int) -> ShardArrays:
        ds = self.dataset
        entry = ds.entries[slot]
        if ds.keep_open and bool(ds._hashed[slot]):  # another worker of this loader hashed these bytes
            ds.store.trust(entry)
        arrays = shard_arrays(ds.store.shard(entry), entry, ds.layout)
        if ds.keep_open:
            ds.opened[slot] = arrays
            ds._hashed[slot] = ds.store.verified(entry)
        return arrays

    def arrays(self, i: int) -> dict[int, ShardArrays | None]:
        out = {}
        for s in self.needs[i]:
            s = int(s)
            self._submit_through(self.position[s] + self.dataset.config.lookahead)
            if s in self.dataset.opened:
                out[s] = self.dataset.opened[s]
                continue
            try:
                out[s] = self.futures[s].result()
            except (IntegrityError, ShardReadError) as err:
                if self.dataset.config.on_corrupt != "skip" or isinstance(err, ShardReadError):
                    raise
                entry = self.dataset.entries[s]
                if entry.name not in self.skipped:
                    self.skipped.append(entry.name)
                    warnings.warn(f"skipping {entry.count} samples of {entry.name}: {err}", stacklevel=2)
                out[s] = None
        for s in [s for s, last in self.last_use.items() if last <= i and s in self.futures]:
            self.futures.pop(s)  # the yielded batches are copies: the shard's memory can go
        return out
