"""The epoch plan is a pure function: checked exhaustively over shard counts, worlds and workers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meg2fmri.loader.kernels import gather_rows, gather_rows_numpy
from meg2fmri.loader.plan import batches_per_rank, epoch_plan, worker_batches

plans = st.fixed_dictionaries({
    "counts": st.lists(st.integers(1, 40), min_size=1, max_size=7),
    "world": st.integers(1, 4),
    "batch_size": st.integers(1, 9),
    "shuffle_buffer": st.integers(1, 60),
    "shuffle": st.booleans(),
    "seed": st.integers(0, 2**32 - 1),
    "epoch": st.integers(0, 1000),
})


def rank_plans(p: dict):
    return [epoch_plan(p["counts"], seed=p["seed"], epoch=p["epoch"], rank=r, world=p["world"],
                       batch_size=p["batch_size"], shuffle=p["shuffle"], shuffle_buffer=p["shuffle_buffer"])
            for r in range(p["world"])]


@settings(max_examples=300, deadline=None)
@given(plans)
def test_every_sample_once_and_equal_batches_on_every_rank(p):
    assume(sum(p["counts"]) >= p["world"])  # fewer samples than ranks is refused (tested below)
    ranks = rank_plans(p)
    n = sum(p["counts"])
    ids = np.concatenate([plan.order for plan in ranks])
    assert np.array_equal(np.sort(ids), np.arange(n))
    assert len({plan.batches for plan in ranks}) == 1
    assert ranks[0].batches == batches_per_rank(n, p["world"], p["batch_size"])
    for plan in ranks:
        sizes = plan.sizes()
        assert sizes.sum() == len(plan.order) and (sizes > 0).all(), "no batch is ever empty"
        assert (sizes[:-1] <= p["batch_size"]).all() and sizes[-1] <= p["batch_size"] + 1
        if sizes[-1] > p["batch_size"]:  # only where the count was capped by the smallest rank
            assert plan.batches == n // p["world"] < -(-n // p["world"])
        assert len(plan.order) - min(len(q.order) for q in ranks) <= 1


def test_a_rank_one_sample_short_never_gets_an_empty_batch():
    """Batch size 1, 5 samples on 2 ranks: 2 batches each (rank 0 has 2 samples), rank 1's last has 2;
    batch size 4, 9 samples: rank 0 (4 samples) moves one into its last batch."""
    ranks = [epoch_plan([5], seed=0, epoch=0, rank=r, world=2, batch_size=1, shuffle=False,
                        shuffle_buffer=1) for r in range(2)]
    assert [p.sizes().tolist() for p in ranks] == [[1, 1], [1, 2]]
    four = [epoch_plan([9], seed=0, epoch=0, rank=r, world=2, batch_size=4, shuffle=False,
                       shuffle_buffer=1) for r in range(2)]
    assert [p.sizes().tolist() for p in four] == [[3, 1], [4, 1]]
    with pytest.raises(ValueError, match="cannot give each of 3 ranks one"):
        epoch_plan([2], seed=0, epoch=0, rank=0, world=3, batch_size=1, shuffle=False, shuffle_buffer=1)


@settings(max_examples=200, deadline=None)
@given(n_batches=st.integers(1, 50), workers=st.integers(0, 5), data=st.data())
def test_workers_split_batches_exactly_once_in_dataloader_order(n_batches, workers, data):
    start = data.draw(st.integers(0, n_batches))
    per_worker = [list(worker_batches(n_batches, start, w, workers)) for w in range(max(1, workers))]
    assert sorted(j for batches in per_worker for j in batches) == list(range(start, n_batches))
    # torch's DataLoader takes one item from each worker in turn: that interleaving is start, start+1, ...
    interleaved = [b[i] for i in range(max(map(len, per_worker))) for b in per_worker if i < len(b)]
    assert interleaved == list(range(start, n_batches))


def test_plan_is_deterministic_and_changes_with_epoch():
    kwargs = dict(seed=7, rank=0, world=1, batch_size=4, shuffle=True, shuffle_buffer=16)
    counts = [30, 30, 20]
    a, b = epoch_plan(counts, epoch=3, **kwargs), epoch_plan(counts, epoch=3, **kwargs)
    c = epoch_plan(counts, epoch=4, **kwargs)
    assert np.array_equal(a.order, b.order) and not np.array_equal(a.order, c.order)
    unshuffled = epoch_plan(counts, epoch=3, **{**kwargs, "shuffle": False})
    assert np.array_equal(unshuffled.order, np.arange(80))


def test_shuffle_buffer_bounds_how_far_a_sample_moves():
    counts = [1000]
    plan = epoch_plan(counts, seed=1, epoch=0, rank=0, world=1, batch_size=10, shuffle=True,
                      shuffle_buffer=100)
    window_of_position = np.arange(1000) // 100
    window_of_sample = plan.order // 100  # one shard: sample ids are positions in shard order
    assert np.array_equal(window_of_position, window_of_sample)
    assert not np.array_equal(plan.order, np.arange(1000))


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 30), width=st.integers(1, 50), stride_pad=st.integers(0, 7), data=st.data())
def test_gather_kernel_equals_numpy(count, width, stride_pad, data):
    rows = np.array(data.draw(st.lists(st.integers(0, count - 1), max_size=40)), dtype=np.int64)
    positions = np.random.default_rng(len(rows)).permutation(len(rows))
    base = np.random.default_rng(count).standard_normal((count, width + stride_pad)).astype(np.float32)
    source = base[:, :width]  # a strided view, like the shard views
    out, expected = np.zeros((len(rows), width), np.float32), np.ones((len(rows), width), np.float32)
    gather_rows(source, rows, positions, out)
    gather_rows_numpy(source, rows, positions, expected)
    assert np.array_equal(out, expected)
