"""Hot loops of the paper's preprocessing as numba kernels, each beside its plain numpy reference.

- ``decimate``: polyphase FIR decimation of a ``(channels, times)`` MEG array, scipy's
  ``resample_poly(x, 1, factor, window=h)`` computed only at the kept samples.
- ``zscore_channels``: per-channel z-score of a ``(channels, times)`` MEG array.
- ``slice_means``: per-volume, per-axial-slice mean of a ``(volumes, slices, y, x)`` int16 run.
- ``slice_correlation``: the paper's slice search in one pass over an int16 window:
  slice means -> z-score over time -> Pearson correlation with the MEG temporal profile.
  Min-max normalising the run first (as the paper does) is an affine map of every voxel, which
  z-scoring removes, so the fused kernel skips it and gives the same correlations.

Constant channels (or slices) z-score to zeros, never NaN. NaN input raises ``NonFiniteError``.
The tests hold every kernel equal to its reference.
"""

from __future__ import annotations

import numba
import numpy as np

from meg2fmri.shards.errors import InputError


class NonFiniteError(InputError):
    """The data holds NaN or infinite values."""


# ---------------------------------------------------------------- decimation


@numba.njit(fastmath={"reassoc", "contract"}, cache=True)
def _axpy(acc: np.ndarray, g: float, x: np.ndarray) -> None:
    for j in range(acc.size):
        acc[j] += g * x[j]


@numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
def _decimate(x: np.ndarray, fir: np.ndarray, factor: int, offset: int, out: np.ndarray) -> None:
    # out[c, j] = sum_k fir[k] * x[c, j * factor + offset - k], zero outside the row. Split by phase
    # r of the input index (polyphase): phase r's samples x[c, r::factor] meet the taps k = k0 + b *
    # factor, each a contiguous multiply-add over j, which LLVM vectorises.
    n_channels, n_times = x.shape
    n_taps, n_out = fir.size, out.shape[1]
    for c in numba.prange(n_channels):
        row = x[c]
        acc = np.zeros(n_out, dtype=np.float64)
        for r in range(factor):
            phase = row[r::factor].copy()
            k0 = (offset - r) % factor
            for k in range(k0, n_taps, factor):
                g = fir[k]
                shift = (offset - k - r) // factor  # out j reads phase[j + shift]
                lo = max(0, -shift)
                hi = min(n_out, phase.size - shift)
                if hi > lo:  # (a negative bound would wrap in a slice)
                    _axpy(acc[lo:hi], g, phase[lo + shift:])
        out[c] = acc


def decimate(x: np.ndarray, fir: np.ndarray, factor: int) -> np.ndarray:
    """``scipy.signal.resample_poly(x, 1, factor, axis=1, window=fir)`` (float64) for an odd-length
    linear-phase ``fir``: each kept sample is the filter centred on it, zeros beyond the ends.
    resample_poly filters through ``upfirdn``; this computes the same sums phase by phase, vectorised,
    threads over channels (``bench kernels``: 3.1x faster on two cores; about 2x on one)."""
    half = (fir.size - 1) // 2
    pre_pad = factor - half % factor  # resample_poly's alignment of the output on the input
    offset = (half + pre_pad) // factor * factor - pre_pad
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty((x.shape[0], -(-x.shape[1] // factor)), dtype=np.float64)
    _decimate(x, np.ascontiguousarray(fir, dtype=np.float64), factor, offset, out)
    return out


def decimate_numpy(x: np.ndarray, fir: np.ndarray, factor: int) -> np.ndarray:
    """Reference for ``decimate``: scipy's polyphase resampler."""
    from scipy import signal

    return signal.resample_poly(x, 1, factor, axis=1, window=fir)


# ---------------------------------------------------------------- z-score per channel


# 'reassoc' lets LLVM vectorise the sums (several partial sums); NaN/inf semantics are kept.
@numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
def _zscore_channels(x: np.ndarray, out: np.ndarray) -> bool:
    n_channels, n_times = x.shape
    bad = np.zeros(n_channels, dtype=np.bool_)
    for c in numba.prange(n_channels):
        row = x[c]
        shift = np.float64(row[0])  # sums of (x - shift) keep the one-pass variance accurate
        s1 = 0.0
        s2 = 0.0
        for t in range(n_times):
            d = row[t] - shift
            s1 += d
            s2 += d * d
        if not (np.isfinite(s1) and np.isfinite(s2)):
            bad[c] = True
            continue
        m1 = s1 / n_times
        var = max(s2 / n_times - m1 * m1, 0.0)
        mean = shift + m1
        scale = 1.0 / np.sqrt(var) if var > 0.0 else 0.0
        target = out[c]
        for t in range(n_times):
            target[t] = (row[t] - mean) * scale
    return bad.any()


def zscore_channels(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Z-score each row of ``x`` ``(channels, times)`` over time (population std); float32 out.

    A constant channel becomes zeros. ``out`` may be ``x`` itself (in place).
    """
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    if _zscore_channels(x, out):
        raise NonFiniteError("MEG data holds NaN or infinite values")
    return out


def zscore_channels_numpy(x: np.ndarray) -> np.ndarray:
    """Reference for ``zscore_channels``: the plain numpy expression."""
    if not np.isfinite(x).all():
        raise NonFiniteError("MEG data holds NaN or infinite values")
    x = x.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    return ((x - mean) * scale).astype(np.float32)


# ---------------------------------------------------------------- slice means


@numba.njit(parallel=True, cache=True)
def _slice_stats(volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_vols, n_slices, ny, nx = volumes.shape
    sums = np.empty((n_vols, n_slices), dtype=np.float64)
    lows = np.empty((n_vols, n_slices), dtype=np.int16)
    highs = np.empty((n_vols, n_slices), dtype=np.int16)
    for i in numba.prange(n_vols * n_slices):
        t = i // n_slices
        z = i - t * n_slices
        plane = volumes[t, z]
        acc = 0  # int64: exact for int16 planes
        lo = plane[0, 0]
        hi = lo
        for y in range(ny):
            for x in range(nx):
                v = plane[y, x]
                acc += v
                lo = min(lo, v)
                hi = max(hi, v)
        sums[t, z] = acc
        lows[t, z] = lo
        highs[t, z] = hi
    return sums, lows, highs


def slice_stats(volumes: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Mean of each axial slice of each volume ``(volumes, slices)`` float64, and the run's minimum
    and maximum, in one pass.

    ``volumes`` is int16 ``(volumes, slices, y, x)``: the C-order view ``data.T`` of a nibabel
    ``(x, y, z, t)`` array, so no copy is made.
    """
    if volumes.dtype != np.int16:
        raise TypeError(f"slice_stats needs int16 volumes, got {volumes.dtype}")
    if volumes.size == 0:
        raise ValueError(f"no voxels in volumes of shape {volumes.shape}")
    volumes = np.ascontiguousarray(volumes)
    sums, lows, highs = _slice_stats(volumes)
    return sums / (volumes.shape[2] * volumes.shape[3]), int(lows.min()), int(highs.max())


def slice_means(volumes: np.ndarray) -> np.ndarray:
    """Mean of each axial slice of each volume, ``(volumes, slices)`` float64 (``slice_stats``)."""
    return slice_stats(volumes)[0]


def slice_means_numpy(volumes: np.ndarray) -> np.ndarray:
    """Reference for ``slice_means``, and the path for float (MNI) BOLD: accumulated in float64 by
    numpy's buffered reduction, without a float64 copy of the run (that copy made the float path's
    peak about 2.6x the decoded size)."""
    return volumes.mean(axis=(2, 3), dtype=np.float64)


# ---------------------------------------------------------------- slice correlation


def correlate_slices(means: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Pearson correlation of each slice's time series ``means[:, z]`` with ``profile``.

    ``means`` is ``(times, slices)``; a constant slice or profile correlates 0.
    """
    if not (np.isfinite(means).all() and np.isfinite(profile).all()):
        raise NonFiniteError("slice means or MEG profile hold NaN or infinite values")
    m = zscore_channels_numpy(means.T.astype(np.float64))
    p = zscore_channels_numpy(profile[None, :].astype(np.float64))[0]
    return (m.astype(np.float64) @ p.astype(np.float64)) / len(p)


def slice_correlation(window: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Correlation of each slice's mean time series with ``profile``, ``(slices,)`` float64.

    ``window`` is int16 ``(volumes, slices, y, x)``; ``profile`` is ``(volumes,)``. One pass
    over the int16 data (``slice_means``); normalising, z-scoring and correlating then touch
    only the small ``(volumes, slices)`` table.
    """
    if len(profile) != window.shape[0]:
        raise ValueError(f"profile has {len(profile)} samples for {window.shape[0]} volumes")
    return correlate_slices(slice_means(window), profile)


def slice_correlation_numpy(window: np.ndarray, profile: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reference: the paper's steps in plain numpy — cast, min-max normalise with the run's
    ``lo``/``hi``, slice means, z-score, correlate."""
    normalised = (window.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    means = normalised.mean(axis=(2, 3), dtype=np.float64)
    return correlate_slices(means, profile)
