"""``bench kernels``: numba kernels vs their numpy references, and vs this machine's memcpy.

Inputs are real-size: MEG 328 x 30000 float32 (5 min at 100 Hz); raw MEG 328 x 60000 float64
(1 min at 1 kHz, as MNE decodes it) decimated to 100 Hz; an fMRI window of
64 x 72 x 106 x 106 int16 (the scanner's type). Bytes counted are those a kernel must read
plus those it writes, once each; memcpy's are the bytes ``np.copyto`` reads plus writes when it
copies the MEG array (the same buffers as the z-score). The numba kernels use every core;
numpy and ``np.copyto`` use one.
"""

from __future__ import annotations

import numpy as np

from meg2fmri.ingest.kernels import (
    decimate,
    decimate_numpy,
    slice_correlation,
    slice_correlation_numpy,
    zscore_channels,
    zscore_channels_numpy,
)
from meg2fmri.ingest.preprocess import anti_alias_fir

from .report import median_time, row


def run(repeats: int = 7) -> tuple[list[dict], list[str]]:
    """``bench kernels``: each numba kernel against its numpy reference and memcpy."""
    rng = np.random.default_rng(0)
    meg = rng.standard_normal((328, 30000), dtype=np.float32) * 3 + 1
    out = np.empty_like(meg)
    window = rng.integers(200, 1500, (64, 72, 106, 106)).astype(np.int16)
    profile = rng.standard_normal(64)
    lo, hi = 0.0, 2000.0
    raw = rng.standard_normal((328, 60000))
    fir = anti_alias_fir(10)
    # memcpy of the same buffers the z-score reads and writes, so caches favour neither
    src, dst = meg, np.empty_like(meg)

    z_bytes = meg.nbytes + out.nbytes
    s_bytes = window.nbytes
    m_bytes = src.nbytes + dst.nbytes
    d_bytes = raw.nbytes + raw.nbytes // 10
    results = {
        "memcpy": (median_time(lambda: np.copyto(dst, src), repeats), m_bytes, src.nbytes, "B"),
        "zscore_numba": (median_time(lambda: zscore_channels(meg, out=out), repeats), z_bytes, 1, "arrays"),
        "zscore_numpy": (median_time(lambda: zscore_channels_numpy(meg), repeats), z_bytes, 1, "arrays"),
        "slicecorr_numba": (median_time(lambda: slice_correlation(window, profile), repeats), s_bytes, 1,
                            "windows"),
        "slicecorr_numpy": (median_time(lambda: slice_correlation_numpy(window, profile, lo, hi), repeats),
                            s_bytes, 1, "windows"),
        "decimate_numba": (median_time(lambda: decimate(raw, fir, 10), repeats), d_bytes, 1, "arrays"),
        "decimate_numpy": (median_time(lambda: decimate_numpy(raw, fir, 10), repeats), d_bytes, 1, "arrays"),
    }
    memcpy_bps = m_bytes / results["memcpy"][0][0]
    rows = []
    for name, ((median, times), n_bytes, items, unit) in results.items():
        bps = n_bytes / median
        extra = {"gb_per_s": bps / 1e9, "fraction_of_memcpy": bps / memcpy_bps, "times_s": times}
        if name.endswith("_numba"):
            extra["speedup_vs_numpy"] = results[name.replace("numba", "numpy")][0][0] / median
        rows.append(row(name, median, items / median, f"{unit}/s", **extra))
    notes = [f"z-score: {rows[1]['speedup_vs_numpy']:.1f}x numpy (target >= 3), "
             f"{rows[1]['fraction_of_memcpy']:.0%} of memcpy (target >= 40%)",
             f"slice selection: {rows[3]['speedup_vs_numpy']:.1f}x numpy (target >= 3)",
             f"MEG decimation 1 kHz -> 100 Hz: {rows[5]['speedup_vs_numpy']:.1f}x scipy's resample_poly"]
    return rows, notes
