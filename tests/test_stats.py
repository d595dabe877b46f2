"""Run-level statistics on constructed data where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from meg2fmri.model.eval.stats import (
    cluster_bootstrap,
    grouped_folds,
    resampling_unit,
    sample_bootstrap,
    shift_null,
)


def autocorrelated_runs(rng: np.random.Generator, runs: int, length: int, run_sd: float = 1.0) -> np.ndarray:
    """Per-sample values of ``runs`` runs whose samples share a run-level offset (true mean 0)."""
    offsets = rng.normal(0, run_sd, runs)
    return offsets[:, None] + rng.normal(0, 0.3, (runs, length))


def test_run_bootstrap_covers_the_truth_where_the_sample_bootstrap_does_not():
    """Samples within a run share an offset (as autocorrelated BOLD does): resampling samples as if
    independent gives intervals far too narrow; resampling whole runs covers the true mean 0."""
    rng = np.random.default_rng(0)
    covered = {"sample": 0, "run": 0}
    for _ in range(200):
        values = autocorrelated_runs(rng, runs=8, length=30)
        lo, hi = sample_bootstrap(values.ravel(), rng, 400)
        covered["sample"] += lo <= 0 <= hi
        lo, hi = cluster_bootstrap(values.mean(axis=1), np.arange(8).astype(str), rng, 400)
        covered["run"] += lo <= 0 <= hi
    assert covered["run"] / 200 > 0.85
    assert covered["sample"] / 200 < 0.5


def test_with_three_or_more_subjects_whole_subjects_are_resampled():
    """Runs of one subject share its offset: with 4 subjects x 3 runs the two-stage bootstrap covers
    the true mean where resampling the 12 runs as independent does not."""
    rng = np.random.default_rng(1)
    subjects = np.repeat(["a", "b", "c", "d"], 3)
    assert resampling_unit(subjects).startswith("subjects") and resampling_unit(subjects[:6]).startswith(
        "runs"
    )
    covered_two_stage = covered_runs = 0
    for _ in range(200):
        values = np.repeat(rng.normal(0, 1.0, 4), 3) + rng.normal(0, 0.1, 12)
        lo, hi = cluster_bootstrap(values, subjects, rng, 300)
        covered_two_stage += lo <= 0 <= hi
        lo, hi = cluster_bootstrap(values, np.arange(12).astype(str), rng, 300)
        covered_runs += lo <= 0 <= hi
    assert covered_two_stage > covered_runs + 20


def test_paired_differences_of_identical_methods_are_exactly_zero_and_nans_are_left_out():
    rng = np.random.default_rng(2)
    values = rng.normal(size=6)
    assert cluster_bootstrap(values - values, np.arange(6).astype(str), rng, 100) == [0.0, 0.0]
    with_nan = np.array([1.0, np.nan, 3.0])
    lo, hi = cluster_bootstrap(with_nan, np.array(["a", "b", "c"]), rng, 200)
    assert 1.0 <= lo <= hi <= 3.0
    assert np.isnan(cluster_bootstrap(np.array([np.nan]), np.array(["a"]), rng, 10)).all()


def smooth_series(rng: np.random.Generator, length: int, pixels: int) -> np.ndarray:
    """AR(1) series with coefficient 0.8 (BOLD-like autocorrelation), ``(length, pixels)``."""
    out = np.empty((length, pixels))
    out[0] = rng.normal(size=pixels)
    for t in range(1, length):
        out[t] = 0.8 * out[t - 1] + 0.6 * rng.normal(size=pixels)
    return out


def test_time_shift_null_detects_a_real_prediction_and_is_better_calibrated_than_a_circular_one():
    rng = np.random.default_rng(3)
    truth = [smooth_series(rng, 30, 20) for _ in range(6)]
    good = [t + rng.normal(0, 1.0, t.shape) for t in truth]
    result = shift_null(good, truth, rng, n=500, min_shift=8)
    assert result["p"] < 0.01 and result["observed"] > result["null_95"] and result["runs"] == 6
    # unrelated but autocorrelated predictions (H0): p < 0.05 should happen about 5% of the time. The
    # circular null's wrap-around seam makes it too narrow on runs this short; overlap shifts do not.
    rejections = {False: 0, True: 0}
    for _ in range(150):
        targets = [smooth_series(rng, 28, 20) for _ in range(8)]
        unrelated = [smooth_series(rng, 28, 20) for _ in range(8)]
        for circular in rejections:
            rejections[circular] += (
                shift_null(unrelated, targets, rng, n=200, min_shift=8, circular=circular)["p"] < 0.05
            )
    assert rejections[False] <= 18  # 12%: measured 8% over 600 replicates
    assert rejections[True] > rejections[False]
    # a prediction constant over time follows nothing, even with float32 rounding residue in it
    constant = [np.broadcast_to(np.float32(0.3) + np.float32(1e-7) * (t[:1] > 0), t.shape) for t in truth]
    assert shift_null(constant, truth, rng, n=100, min_shift=8)["p"] == 1.0
    # runs too short for the minimum shift are left out
    short = shift_null([t[:10] for t in good], [t[:10] for t in truth], rng, n=50, min_shift=8)
    assert short["runs"] == 0 and np.isnan(short["p"])


def test_grouped_folds_validate_on_subjects_and_stories_their_training_part_never_saw():
    subjects = np.repeat(np.array([f"{i:02d}" for i in range(8)]), 30)
    stories = np.tile(np.repeat([1, 2, 3], 10), 8)
    folds, how = grouped_folds(subjects, stories, k=4)
    assert len(folds) == 4 and "new subjects x new stories" in how
    for train, valid in folds:
        assert not set(subjects[train]) & set(subjects[valid])
        assert not set(stories[train]) & set(stories[valid])
        assert len(valid) > 0 and len(train) > len(valid)
    assert set(np.concatenate([v for _, v in folds]).tolist()) != set()  # every fold validates something
    one_story, how = grouped_folds(subjects, np.ones_like(stories), k=4)
    assert "by subjects only" in how
    for train, valid in one_story:
        assert not set(subjects[train]) & set(subjects[valid])
    with pytest.raises(ValueError, match="at least 2"):
        grouped_folds(np.zeros(5), np.ones(5))


def test_shift_tables_equal_r_over_each_overlap():
    """The FFT form of the non-circular shift null gives, per pixel and shift, the Pearson r of the
    overlapping samples, and 0 for a constant column (as ``standardise`` does)."""
    from meg2fmri.model.eval.stats import shift_tables, standardise

    rng = np.random.default_rng(0)
    pred = rng.standard_normal((40, 7)).cumsum(axis=0).astype(np.float32)
    real = (pred + rng.standard_normal((40, 7))).astype(np.float32)
    pred[:, 3] = 0.7
    expected = np.array([(standardise(pred[: 40 - s]) * standardise(real[s:])).sum(axis=0)
                         for s in range(40)])
    np.testing.assert_allclose(shift_tables(pred, real), expected, atol=1e-10)
    assert (shift_tables(pred, real)[:, 3] == 0).all()


def test_grouped_folds_fall_back_to_subjects_when_runs_are_missing():
    """sub-01 x story 1 missing (a failed run): no new-subject x new-story fold has both a training and
    a validation part, so the folds group by subject alone and say why (they had been empty: every
    penalty's score was the mean of nothing)."""
    subjects = np.array(["01"] * 5 + ["03"] * 10)
    stories = np.array([2] * 5 + [1] * 5 + [2] * 5)
    folds, how = grouped_folds(subjects, stories)
    assert "grouped by subjects only" in how and "runs are missing" in how
    assert len(folds) == 2
    for train, valid in folds:
        assert len(train) and len(valid) and not set(subjects[train]) & set(subjects[valid])
