"""Which samples each rank and worker yields in an epoch: a pure function of (counts, seed, epoch, world).

Samples are named by their *sample id*: the position of the sample in the split when its shards are
concatenated in index order (shard 0's samples are ids ``0..count0-1``, and so on). An epoch is:

1. the shards of the split in an order drawn from ``(seed, epoch)`` (index order when not shuffling);
2. that sequence cut into ``world`` contiguous rank slices whose sizes differ by at most one
   (``N // world`` or one more): every sample goes to exactly one rank, even when the shard count
   does not divide evenly, because the split is by samples, not by shards;
3. within a rank slice, consecutive windows of ``shuffle_buffer`` samples, each permuted from
   ``(seed, epoch, rank, window)``: the bounded in-memory shuffle buffer;
4. the rank's sequence cut into ``batches_per_rank`` batches, the same number on every rank (so DDP
   never waits on a rank that ran out): full batches, then the remainder. **No batch is ever empty**:
   a rank one sample short takes one sample from its second-last batch into its last; where the
   batch size is 1 the count is the smallest rank's share and the larger ranks' last batch holds 2
   (every sample still once); a split with fewer samples than ranks is refused;
5. batch ``j`` (counting from the resume position ``start``) is made by DataLoader worker
   ``(j - start) % num_workers``, which is the order torch's DataLoader interleaves worker output in,
   so the stream a trainer sees does not depend on the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: ``order`` holds sample ids, batch ``j`` is ``order[bounds[j]:bounds[j+1]]``."""

    order: np.ndarray  # int64 sample ids, this rank's sequence
    bounds: np.ndarray  # int64, len = batches + 1

    @property
    def batches(self) -> int:
        return len(self.bounds) - 1

    def batch(self, j: int) -> np.ndarray:
        return self.order[self.bounds[j]:self.bounds[j + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.bounds)


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The shards of one epoch in their shuffled order (a pure function of seed and epoch)."""
    if not shuffle:
        return np.arange(n_shards)
    return _rng(seed, epoch, 0).permutation(n_shards)


def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of ``n`` samples for ``rank``; sizes differ by at most one."""
    return rank * n // world, (rank + 1) * n // world


def batches_per_rank(n: int, world: int, batch_size: int) -> int:
    """The same on every rank: enough batches for the largest rank slice, but never more than the
    smallest slice has samples, so that no rank ever yields an empty batch (with ``batch_size`` 1 and
    a rank one sample short, the larger ranks' last batch then holds 2). A split with fewer samples
    than ranks cannot feed every rank and is refused."""
    largest, smallest = -(-n // world), n // world
    if smallest == 0:
        raise ValueError(f"{n} sample(s) cannot give each of {world} ranks one; use fewer ranks or "
                         "more data")
    return min(max(1, -(-largest // batch_size)), smallest)


def batch_bounds(n_rank: int, n_batches: int, batch_size: int) -> np.ndarray:
    """Cut ``n_rank >= n_batches`` samples into ``n_batches`` non-empty batches of ``batch_size``
    (the last one the remainder; one sample more where ``batches_per_rank`` capped the count)."""
    sizes = np.full(n_batches, batch_size, dtype=np.int64)
    sizes[-1] = n_rank - batch_size * (n_batches - 1)
    if sizes[-1] == 0 and n_batches > 1 and batch_size > 1:
        sizes[-2] -= 1  # a rank one sample short: keep its last batch non-empty
        sizes[-1] = 1
    return np.concatenate([[0], np.cumsum(sizes)])


def epoch_plan(counts: list[int] | np.ndarray, *, seed: int, epoch: int, rank: int, world: int,
               batch_size: int, shuffle: bool, shuffle_buffer: int) -> EpochPlan:
    """This rank's sample ids and batch bounds for ``epoch`` (see the module docstring)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    if batch_size < 1 or shuffle_buffer < 1:
        raise ValueError(f"batch_size and shuffle_buffer must be >= 1, got {batch_size}, {shuffle_buffer}")
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else np.zeros(0, np.int64)
    shards = shard_order(len(counts), seed, epoch, shuffle)
    sequence = (np.concatenate([np.arange(starts[s], starts[s] + counts[s]) for s in shards])
                if len(counts) else np.zeros(0, np.int64))
    lo, hi = rank_range(len(sequence), rank, world)
    order = sequence[lo:hi].copy()
    if shuffle:
        for w, start in enumerate(range(0, len(order), shuffle_buffer)):
            window = order[start:start + shuffle_buffer]
            window[:] = _rng(seed, epoch, 1 + rank, w).permutation(window)
    n_batches = batches_per_rank(len(sequence), world, batch_size)
    bounds = batch_bounds(len(order), n_batches, batch_size)
    # Within a batch, ids ascend: a batch is a random set, and its rows from one shard are then a
    # run the loader gathers with one call. Which samples share a batch is all that shuffling decides.
    batch_of = np.repeat(np.arange(n_batches), np.diff(bounds))
    order = order[np.lexsort((order, batch_of))]
    return EpochPlan(order, bounds)


def worker_batches(n_batches: int, start: int, worker: int, num_workers: int) -> range:
    """Batches made by DataLoader worker ``worker`` of ``num_workers`` (0 workers = the main process)."""
    k = max(1, num_workers)
    return range(start + worker, n_batches, k)
