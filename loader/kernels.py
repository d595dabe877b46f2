"""The gather kernel: copy chosen rows of a strided shard view straight into a batch buffer.

``np.take`` first makes a strided source contiguous (a copy of the whole shard per call), and
fancy indexing copies twice (into a temporary, then into the batch buffer); this loop copies each
chosen row once. ``nogil`` lets the prefetch thread gather while the trainer computes.
"""

from __future__ import annotations

import threading

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def gather_rows(source: np.ndarray, rows: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
    """``out[positions[i]] = source[rows[i]]`` for 2-D float32 ``source (count, n)`` (any row stride)
    and ``out (m, n)``: one call moves every row a chunk takes from one shard, wherever it goes."""
    n = source.shape[1]
    for i in range(rows.shape[0]):
        r, p = rows[i], positions[i]
        for k in range(n):
            out[p, k] = source[r, k]


def gather_rows_numpy(source: np.ndarray, rows: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
    """Reference for ``gather_rows``."""
    out[positions] = source[rows]


ROW_COPY_BYTES = 16384  # rows at least this long are copied whole, one memcpy each
SPLIT_BYTES = 4 << 20  # a call moving more than this is split over the caller's threads


_READY: dict[tuple, threading.Event] = {}
_LOCK = threading.Lock()


def ready(source: np.ndarray, rows: np.ndarray, positions: np.ndarray, out: np.ndarray) -> bool:
    """Whether ``gather_rows`` is loaded for these argument types. The first call for a type starts
    loading it in a thread (from numba's cache: about 0.5 s per process, which a loader's first batch
    would otherwise wait for) and says no, so that the caller copies with numpy until it is."""
    key = (numba.typeof(source), numba.typeof(rows), numba.typeof(positions), numba.typeof(out))
    with _LOCK:
        event = _READY.get(key)
        if event is None:
            event = _READY[key] = threading.Event()
            args = (source, rows[:0], positions[:0], out)  # the same types (layouts too), no rows

            def load() -> None:
                gather_rows(*args)
                event.set()
            threading.Thread(target=load, name="gather-kernel-load", daemon=True).start()
    return event.is_set()


def _copy_rows(source: np.ndarray, rows: list[int], positions: list[int], out: np.ndarray) -> None:
    for r, p in zip(rows, positions, strict=True):
        out[p] = source[r]


def gather(source: np.ndarray, rows: np.ndarray, positions: np.ndarray, out: np.ndarray,
           pool=None, threads: int = 1) -> None:
    """``out[positions[i]] = source[rows[i]]``: short rows (MEG vectors, slices) through the numba
    loop, long ones (whole-brain voxels, 100s of KB) one numpy row copy each, which is a memcpy
    (measured on strided 600-KB rows: 9-11 GB/s, the element loop 6.4 GB/s). numpy releases the GIL
    for these copies, so a large call is split over ``threads`` of ``pool`` (an executor), whose
    copies run in parallel (2 threads here: 13.7 GB/s against 9.3)."""
    if source.shape[1] * source.itemsize < ROW_COPY_BYTES:
        if ready(source, rows, positions, out):
            gather_rows(source, rows, positions, out)
        else:  # numba loads (or compiles) the kernel in the background; numpy meanwhile
            gather_rows_numpy(source, rows, positions, out)
        return
    rows, positions = rows.tolist(), positions.tolist()
    if pool is None or threads < 2 or len(rows) * source.shape[1] * source.itemsize < SPLIT_BYTES:
        _copy_rows(source, rows, positions, out)
        return
    step = -(-len(rows) // threads)
    parts = [pool.submit(_copy_rows, source, rows[i:i + step], positions[i:i + step], out)
             for i in range(0, len(rows), step)]
    for part in parts:
        part.result()
