"""numba kernels equal their numpy references, including the edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from meg2fmri.ingest.kernels import (
    NonFiniteError,
    correlate_slices,
    decimate,
    decimate_numpy,
    slice_correlation,
    slice_correlation_numpy,
    slice_means,
    slice_means_numpy,
    slice_stats,
    zscore_channels,
    zscore_channels_numpy,
)
from meg2fmri.ingest.pairing import resize_bilinear
from meg2fmri.ingest.preprocess import anti_alias_fir, resample_meg

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(2, 300)),
                  elements=st.floats(-1e4, 1e4, width=32)))
def test_zscore_matches_numpy(x):
    assert np.allclose(zscore_channels(x), zscore_channels_numpy(x), atol=2e-4)


def test_zscore_constant_channel_is_zero_and_others_are_standard():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (4, 1000)).astype(np.float32)
    x[2] = 7.0
    z = zscore_channels(x)
    assert np.isfinite(z).all()
    assert np.array_equal(z[2], np.zeros(1000, dtype=np.float32))
    assert np.allclose(z[[0, 1, 3]].mean(axis=1), 0, atol=1e-5)
    assert np.allclose(z[[0, 1, 3]].std(axis=1), 1, atol=1e-4)
    assert np.array_equal(zscore_channels_numpy(x)[2], np.zeros(1000, dtype=np.float32))


def test_zscore_in_place_and_float64_input():
    x = np.random.default_rng(1).normal(size=(3, 50))
    expected = zscore_channels_numpy(x)
    y = x.astype(np.float32)
    zscore_channels(y, out=y)
    assert np.allclose(y, expected, atol=1e-5)
    assert np.allclose(zscore_channels(x), expected, atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_meg_is_rejected(bad):
    x = np.ones((3, 20), dtype=np.float32)
    x[1, 5] = bad
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        zscore_channels(x)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        zscore_channels_numpy(x)


@FAST
@given(hnp.arrays(np.int16, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 9),
                                      st.integers(1, 9))))
def test_slice_means_match_numpy(volumes):
    assert np.allclose(slice_means(volumes), slice_means_numpy(volumes), rtol=0, atol=1e-9)


@FAST
@given(hnp.arrays(np.int16, st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6),
                                      st.integers(1, 6))))
def test_slice_stats_give_the_means_and_the_runs_extremes(volumes):
    means, lo, hi = slice_stats(volumes)
    assert np.allclose(means, slice_means_numpy(volumes), rtol=0, atol=1e-9)
    assert (lo, hi) == (int(volumes.min()), int(volumes.max()))


@FAST
@given(st.integers(1, 12), st.integers(1, 400), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_decimate_equals_scipys_resample_poly(channels, samples, factor, seed):
    # every length against every factor: shorter than the filter, not a multiple of the factor
    x = np.random.default_rng(seed).normal(0, 50, (channels, samples))
    fir = anti_alias_fir(factor)
    expected = decimate_numpy(x, fir, factor)
    got = decimate(x, fir, factor)
    assert got.shape == expected.shape
    assert np.allclose(got, expected, rtol=1e-12, atol=1e-9)


def test_resampled_meg_keeps_trigger_steps_and_filters_the_rest():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(3, 2000))
    data[2] = 0.0
    data[2, 700:900] = 1.0  # a trigger channel: a step that must stay a step
    out = resample_meg(data, 10, [2])
    assert np.array_equal(out[2], data[2, ::10])
    assert np.allclose(out[:2], decimate_numpy(data[:2], anti_alias_fir(10), 10), atol=1e-12)


def test_slice_means_of_a_transposed_nibabel_array():
    data = np.asfortranarray(np.random.default_rng(2).integers(0, 3000, (7, 6, 5, 4), dtype=np.int16))
    view = data.T  # (t, z, y, x), C-contiguous without a copy
    assert view.flags.c_contiguous
    assert np.allclose(slice_means(view), data.astype(float).mean(axis=(0, 1)).T)
    with pytest.raises(TypeError, match="int16"):
        slice_means(view.astype(np.float32))


@FAST
@given(st.integers(0, 2**31), st.integers(4, 40), st.integers(1, 8))
def test_slice_correlation_matches_the_papers_numpy_steps(seed, n_vols, n_slices):
    rng = np.random.default_rng(seed)
    window = rng.integers(-200, 2000, (n_vols, n_slices, 6, 5)).astype(np.int16)
    window[:, 0] = 300  # a constant slice correlates 0, not NaN
    profile = rng.normal(size=n_vols)
    lo, hi = float(window.min()) - 10, float(window.max()) + 50  # the run's range, wider than the window
    fused = slice_correlation(window, profile)
    reference = slice_correlation_numpy(window, profile, lo, hi)
    assert np.allclose(fused, reference, atol=1e-5)
    assert fused[0] == 0.0 and np.isfinite(fused).all()


def test_slice_correlation_finds_the_planted_slice():
    rng = np.random.default_rng(3)
    profile = rng.normal(size=64)
    window = rng.integers(900, 1100, (64, 10, 8, 8)).astype(np.int16)
    window[:, 6] += (40 * profile).astype(np.int16)[:, None, None]
    r = slice_correlation(window, profile)
    assert int(np.argmax(r)) == 6 and r[6] > 0.9
    with pytest.raises(NonFiniteError):
        correlate_slices(np.full((5, 2), np.nan), np.ones(5))


@pytest.mark.parametrize(("shape", "size"), [((106, 106), 32), ((20, 30), 32), ((9, 9), 4), ((64, 64), 64)])
def test_bilinear_resize_matches_torch(shape, size):
    image = np.random.default_rng(4).random(shape).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(size, size),
                                               mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.allclose(resize_bilinear(image, size), expected, atol=1e-6)



def test_gather_copies_long_rows_whole_and_split_over_threads():
    """Whole-brain rows (100s of KB) take the row-copy path, split over threads when the call is
    large; the result equals the numpy reference, strided source and scattered positions alike."""
    from concurrent.futures import ThreadPoolExecutor

    from meg2fmri.loader.kernels import ROW_COPY_BYTES, SPLIT_BYTES, gather, gather_rows_numpy

    rng = np.random.default_rng(0)
    width = ROW_COPY_BYTES  # uint16: 2 x ROW_COPY_BYTES bytes a row
    backing = rng.integers(0, 2**16, size=(40, width + 7), dtype=np.uint16)
    source = backing[:, 3:3 + width]  # strided rows, as a shard view
    rows = rng.integers(0, 40, size=300)
    positions = rng.permutation(300)
    assert 300 * width * 2 > SPLIT_BYTES
    expected = np.zeros((300, width), np.uint16)
    gather_rows_numpy(source, rows, positions, expected)
    with ThreadPoolExecutor(3) as pool:
        for kwargs in ({}, {"pool": pool, "threads": 3}):
            out = np.zeros_like(expected)
            gather(source, rows, positions, out, **kwargs)
            np.testing.assert_array_equal(out, expected)


def test_gather_copies_the_same_rows_before_and_after_the_kernel_loads():
    """The first call copies with numpy while numba loads the kernel in a thread; later calls use the
    kernel, for the same strided (layout 'A') views the loader passes."""
    import time

    from meg2fmri.loader import kernels

    rng = np.random.default_rng(1)
    block = rng.standard_normal((50, 37)).astype(np.float32)
    source = block[:, 3:31]  # a strided view, as a shard's MEG rows are
    rows, positions = rng.permutation(50)[:12], rng.permutation(12)
    expected = np.zeros((12, 28), np.float32)
    expected[positions] = source[rows]
    first = np.zeros_like(expected)
    kernels.gather(source, rows, positions, first)
    assert np.array_equal(first, expected)
    deadline = time.monotonic() + 60
    while not kernels.ready(source, rows, positions, first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kernels.ready(source, rows, positions, first)
    later = np.zeros_like(expected)
    kernels.gather(source, rows, positions, later)
    assert np.array_equal(later, expected)
    assert any(sig[0].layout == "A" for sig in kernels.gather_rows.signatures)
