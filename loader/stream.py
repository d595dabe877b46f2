"""``ShardLoader``: the one entry point a trainer uses.

    loader = ShardLoader("s3://bucket/shards", "train", StreamConfig(batch_size=32, seed=0))
    for epoch in range(loader.epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader:            # batch["meg"] (B, width), batch["fmri"] (B, 1, S, S) on the device
            ...
            checkpoint["loader"] = loader.state_dict()

It resolves the rank and world size (torch.distributed if initialised, else the ``RANK`` and
``WORLD_SIZE`` environment variables, else a single process), runs the ``ShardDataset`` in the main
process or in DataLoader workers, and hands batches to the ``DevicePrefetcher``. It counts the
batches the consumer has taken, so ``state_dict()`` is exact however far the prefetcher ran ahead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from meg2fmri.shards.errors import EmptySplitError, InputError
from meg2fmri.shards.index import SPLITS

from .dataset import ShardDataset, StreamConfig
from .prefetch import DevicePrefetcher, background
from .storage import StoreConfig, open_store


def resolve_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): each explicit value, else torch.distributed, else RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        found = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    rank = found[0] if rank is None else rank
    world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not within world size {world_size}")
    return rank, world_size


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    return torch.device(device)


class ShardLoader:
    """Batches of one split, exactly once per epoch across ranks and workers, resumable mid-epoch."""

    def __init__(self, source: str | Path, split: str = "train", stream: StreamConfig | None = None,
                 store: StoreConfig | None = None, *, num_workers: int = 0,
                 device: str | torch.device = "auto", prefetch: int = 2, rank: int | None = None,
                 world_size: int | None = None, persistent_workers: bool = True):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, not {split!r}")
        self.stream = stream or StreamConfig()
        self.store = open_store(source, store)
        self.rank, self.world_size = resolve_world(rank, world_size)
        self.device = resolve_device(device)
        self.num_workers, self.prefetch = num_workers, prefetch
        # Workers live across epochs (as torch's persistent_workers): no process start-up per epoch,
        # and each worker hashes a local shard once in its life (storage.py), not once per epoch.
        self.persistent_workers = persistent_workers
        self._workers: torch.utils.data.DataLoader | None = None
        self._iterator = None  # the workers' iterator (torch's, which owns the processes)
        self.dataset = ShardDataset(self.store, split, self.stream, rank=self.rank, world=self.world_size,
                                    pin_memory=self.device.type == "cuda")
        if not self.dataset.entries:
            raise EmptySplitError(f"{self.store.url}: the index has no {split!r} shards")
        self.index = self.dataset.index
        self.epoch, self.position, self.skipped = 0, 0, 0

    @property
    def samples(self) -> int:
        """Samples of the split (all ranks)."""
        return int(self.dataset.counts.sum())

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless a resumed state is already inside it."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def index_id(self) -> str:
        digest = hashlib.sha256()
        for entry in self.dataset.entries:
            digest.update(entry.sha256.encode())
        return digest.hexdigest()

    def state_dict(self) -> dict:
        c = self.stream
        return {"epoch": self.epoch, "position": self.position, "split": self.dataset.split,
                "seed": c.seed, "shuffle": c.shuffle, "shuffle_buffer": c.shuffle_buffer,
                "batch_size": c.batch_size, "world_size": self.world_size, "index_id": self.index_id()}

    def load_state_dict(self, state: dict) -> None:
        expected = self.state_dict()
        for key in ("split", "seed", "shuffle", "shuffle_buffer", "batch_size", "world_size", "index_id"):
            if state.get(key) != expected[key]:
                raise InputError(f"cannot resume: the saved loader state has {key}={state.get(key)!r}, this "
                                 f"loader has {expected[key]!r}; resume with the same shards and settings")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[dict]:
        ds = self.dataset
        ds.epoch, ds.start = self.epoch, self.position
        sizes = ds.plan().sizes()
        if self.num_workers > 0:
            batches = self._iterator = iter(self._worker_loader())  # a persistent one resumes at the cursor
        else:  # gather in a background thread, whole chunks at a time (one hand-over per chunk)
            batches = (batch for chunk in background(ds.chunks(), self.prefetch) for batch in chunk)
        prefetcher = DevicePrefetcher(batches, self.device, depth=self.prefetch)
        healthy = False
        try:
            for batch in prefetcher:
                self.skipped += int(sizes[self.position]) - len(batch["index"])
                self.position += 1
                yield batch
            healthy = True
        except GeneratorExit:  # the caller stopped early: persistent workers drop what they made ahead
            healthy = True
            raise
        finally:
            if not healthy or not self.persistent_workers:  # a worker raised: end every worker process
                self.close()  # now, not when the traceback that references this iterator is collected
        if self.position >= len(sizes):
            self.epoch, self.position = self.epoch + 1, 0

    def _worker_loader(self) -> torch.utils.data.DataLoader:
        if self._workers is None:
            self._workers = torch.utils.data.DataLoader(
                self.dataset, batch_size=None, num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda", prefetch_factor=max(2, self.prefetch),
                persistent_workers=self.persistent_workers)
        return self._workers

    def close(self) -> None:
        """End the DataLoader worker processes (they are started again by the next iteration)."""
        iterator, self._iterator, self._workers = self._iterator, None, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
