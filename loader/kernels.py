"""The gather kernel: copy chosen rows of a strided shard view straight into a batch buffer.

``np.take`` first makes a strided source contiguous (a copy of the whole shard per call), and
fancy indexing copies twice (into a temporary, then into the batch buffer); this loop copies each
chosen row once. ``nogil`` lets the prefetch thread gather while the trainer computes.
"""

from __future__ import annotations

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
