"""``synth --calibrate``: the measures published studies use, checked on data with a known answer, and
the command on a generated dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import false_discovery_control, norm

from meg2fmri.ingest.synth import calibrate
from meg2fmri.ingest.synth import cli as synth_cli


def subjects_with_share(share: np.ndarray, n: int = 8, t: int = 400, seed: int = 0) -> np.ndarray:
    """``(n, t, voxels)``: a signal shared by every subject plus each subject's own noise, the shared
    part being ``share`` of each voxel's variance."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((t, len(share)))
    own = rng.standard_normal((n, t, len(share)))
    return np.sqrt(share) * shared + np.sqrt(1 - share) * own


def test_isc_gives_back_the_stimulus_locked_share():
    share = np.array([0.05, 0.2, 0.35, 0.6])
    isc = calibrate.loo_isc(subjects_with_share(np.repeat(share, 50))).mean(axis=0)
    isc = isc.reshape(4, 50).mean(axis=1)
    np.testing.assert_allclose(calibrate.stimulus_share(isc, others=7), share, atol=0.03)


def test_the_shift_null_passes_shared_voxels_and_not_noise():
    share = np.r_[np.zeros(300), np.full(100, 0.2)]
    series = subjects_with_share(share, n=6, t=300, seed=1)
    isc = calibrate.loo_isc(series).mean(axis=0)
    null = calibrate.shifted_isc_null(series, np.random.default_rng(0), 100)
    p = norm.sf((isc - null.mean(axis=0)) / null.std(axis=0))
    passed = false_discovery_control(p) < 0.05
    assert passed[300:].mean() > 0.95  # every shared voxel found ...
    assert passed[:300].sum() / passed.sum() < 0.15  # ... with few false discoveries (q = 0.05, and a
    # null spread estimated from 100 shifts)


def test_best_lagged_r_finds_the_brains_delay():
    rng = np.random.default_rng(2)
    envelope = np.convolve(rng.standard_normal(3000), np.ones(10) / 10, mode="same")
    channels = np.stack([np.r_[np.zeros(12), envelope[:-12]] + 0.5 * rng.standard_normal(3000),
                         rng.standard_normal(3000)])
    r = calibrate.best_lagged_r(channels, envelope, 30)
    assert np.argmax(r[:, 0]) == 12 and r[12, 0] > 0.5 and np.abs(r[:, 1]).max() < 0.1


def test_synth_calibrate_prints_every_row_with_its_range(tiny_root: Path, tmp_path: Path, capsys):
    code = synth_cli.main(["--calibrate", str(tiny_root)])
    printed = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert set(calibrate.TARGETS) | {"meg_envelope_r_chance"} <= set(rows)
    assert code == (0 if "**no**" not in printed else 1)
    for name, target in calibrate.TARGETS.items():
        assert f"{target.low:g}-{target.high:g}" in rows[name]
    assert synth_cli.main(["--calibrate", str(tmp_path)]) == 2
    assert "a dataset written by synth" in capsys.readouterr().err


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_stimulus_share_is_zero_or_one_at_the_extremes(value):
    assert calibrate.stimulus_share(np.array([value]), others=5)[0] == pytest.approx(value)
