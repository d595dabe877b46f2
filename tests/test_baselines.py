"""The baselines on constructed data: story clock, audio-envelope features, grouped-CV ridge."""

from __future__ import annotations

import numpy as np
from scipy.io import wavfile

from meg2fmri.model.eval import baselines


def meta_of(subject: str, run: int, volumes, times=None) -> list[dict]:
    times = volumes if times is None else times
    return [{"subject": subject, "run": run, "fmri_volume": v, "fmri_time_s": float(t)}
            for v, t in zip(volumes, times, strict=True)]


def test_story_clock_is_the_training_subjects_mean_change_at_the_same_story_and_volume():
    rng = np.random.default_rng(0)
    mean_image = np.full((4, 4), 0.5)
    a = rng.uniform(0.3, 0.6, (5, 4, 4))
    b = rng.uniform(0.3, 0.6, (5, 4, 4))
    train = np.concatenate([a, b])
    train_meta = meta_of("01", 1, range(20, 25)) + meta_of("03", 1, range(20, 25))
    held = meta_of("02", 1, [21, 23])
    clock = baselines.story_clock(train, train_meta, held, mean_image)
    expected = mean_image + ((a - a.mean(0)) + (b - b.mean(0)))[[1, 3]] / 2
    assert np.allclose(clock, np.clip(expected, 0, 1))
    # a story no training subject heard has no clock
    assert baselines.story_clock(train, train_meta, meta_of("02", 3, [21]), mean_image) is None


def test_stimulus_features_are_the_envelope_lagged_0_to_15_s():
    envelope = np.zeros(600)  # 60 s at 10 Hz
    envelope[100:110] = 1.0  # loud between 10 and 11 s of story time
    meta = meta_of("01", 4, [0, 1, 2], times=[11.0, 16.0, 30.0])
    features = baselines.stimulus_features({4: envelope}, meta)
    assert features.shape == (3, 16)
    assert features[0].tolist() == [1.0] + [0.0] * 15  # lag 0: the second before t = 11 s
    assert features[1, 5] == 1.0 and features[1].sum() == 1.0  # 5 s later: lag 5
    assert features[2].sum() == 0.0  # 19-20 s after the sound: beyond 15 s


def test_audio_envelope_is_the_rms_in_tenth_second_bins(tmp_path):
    rate = 8000
    t = np.arange(rate * 2) / rate
    wave = np.where(t < 1, 0.5, 0.1) * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "story_1.wav"
    wavfile.write(path, rate, (wave * 32767).astype(np.int16))
    env = baselines.audio_envelope(path)
    assert env.shape == (20,)
    assert np.allclose(env[:10], 0.5 * 32767 / np.sqrt(2), rtol=0.01)
    assert np.allclose(env[10:], 0.1 * 32767 / np.sqrt(2), rtol=0.02)


def test_grouped_cv_ridge_learns_changes_with_a_penalty_per_pixel():
    """Pixel 0's change is a linear function of the features, pixel 1's is noise: the penalties differ,
    and on new subjects the fitted model predicts pixel 0 and not pixel 1."""
    rng = np.random.default_rng(1)

    def dataset(subjects, stories, n=20):
        meta, x, y = [], [], []
        w = np.linspace(-1, 1, 6)
        for s in subjects:
            for r in stories:
                f = rng.normal(size=(n, 6))
                img = np.full((n, 1, 2), 0.5) + rng.uniform(-0.1, 0.1)  # per-run anatomy offset
                img[:, 0, 0] += 0.02 * f @ w + 0.002 * rng.normal(size=n)
                img[:, 0, 1] += 0.02 * rng.normal(size=n)
                meta += meta_of(s, r, range(n))
                x.append(f)
                y.append(img)
        return np.concatenate(x), np.concatenate(y), meta

    x, y, meta = dataset(["01", "02", "03", "04"], [1, 2, 3])
    fitted = baselines.fit_ridge(x, y, meta, y.mean(axis=0))
    alphas = np.asarray(fitted.model.best_alphas_)
    assert alphas[0] < alphas[1]
    assert "new subjects x new stories" in fitted.summary()["folds"]
    xt, yt, mt = dataset(["09"], [6])
    pred = fitted.predict(xt)
    change = baselines.run_deviations(yt, mt)
    assert np.corrcoef(pred[:, 0, 0], change[:, 0, 0])[0, 1] > 0.9
    assert abs(np.corrcoef(pred[:, 0, 1], change[:, 0, 1])[0, 1]) < 0.5


def test_primal_ridge_cv_is_himalayas_ridge_cv():
    """The primal ridge (used above PRIMAL_MIN_SAMPLES: himalaya's RidgeCV would hold an alphas x val x train
    array, 73 GB at make study's size) picks the same penalty per target and predicts the same values."""
    from himalaya.ridge import RidgeCV

    from meg2fmri.model.eval.baselines import ALPHAS, PrimalRidgeCV
    from meg2fmri.model.eval.stats import grouped_folds

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1200, 40))
    y = x @ (rng.standard_normal((40, 30)) * (rng.random(30) < 0.5)) * 0.1 + rng.standard_normal((1200, 30))
    subjects, stories = np.repeat(np.arange(6), 200).astype(str), np.tile(np.repeat(np.arange(4), 50), 6)
    folds, _ = grouped_folds(subjects, stories)
    ours = PrimalRidgeCV(ALPHAS, folds, n_targets_batch=7).fit(x, y)
    theirs = RidgeCV(alphas=ALPHAS, fit_intercept=True, cv=folds).fit(x, y)
    assert len(np.unique(ours.best_alphas_)) > 3  # the CV chose different penalties for different targets
    np.testing.assert_allclose(ours.best_alphas_, np.asarray(theirs.best_alphas_), rtol=1e-9)
    np.testing.assert_allclose(ours.predict(x), np.asarray(theirs.predict(x)), atol=1e-10)
