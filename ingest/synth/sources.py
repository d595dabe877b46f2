"""Latent stimulus-driven sources of a story, the BOLD drive they cause, and the HRF.

A story's sources are the same for every subject and for both recordings (the same audio is heard
in the fMRI and in the MEG session), so they depend only on (seed, story).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft, stats

from .config import MEG_SFREQ, Coupling

DRIVE_SFREQ = 10.0  # Hz, time grid on which the BOLD drive is convolved with the HRF
HRF_LENGTH = 32.0  # s


def story_rng(seed: int, story: int) -> np.random.Generator:
    """The random generator of one story (the same for every subject who hears it)."""
    return np.random.default_rng([seed, 1, story])


def lowpass_gain(freqs: np.ndarray, timescale: float) -> np.ndarray:
    """A Gaussian spectrum of width 1/``timescale`` (s): the low-pass of ``smooth_noise``."""
    return np.exp(-0.5 * (freqs * timescale * 2 * np.pi) ** 2)


def band_gain(freqs: np.ndarray, band: tuple[float, float], edge: float) -> np.ndarray:
    """A band-pass to ``band`` (Hz) with raised-cosine edges ``edge`` Hz wide: that of ``band_noise``."""
    low, high = band
    gain = np.clip((freqs - (low - edge)) / edge, 0, 1) * np.clip(((high + edge) - freqs) / edge, 0, 1)
    return np.sin(0.5 * np.pi * gain) ** 2


def smooth_noise(rng: np.random.Generator, n_series: int, n_times: int, timescale: float,
                 sfreq: float) -> np.ndarray:
    """Gaussian noise low-passed with a Gaussian spectrum of width 1/timescale, unit std.

    Shape ``(n_series, n_times)``, float64.
    """
    white = rng.standard_normal((n_series, n_times))
    gain = lowpass_gain(fft.rfftfreq(n_times, 1.0 / sfreq), timescale)
    out = fft.irfft(fft.rfft(white, axis=1) * gain, n=n_times, axis=1)
    out -= out.mean(axis=1, keepdims=True)
    return out / out.std(axis=1, keepdims=True)


def band_noise(rng: np.random.Generator, n_series: int, n_times: int, band: tuple[float, float],
               sfreq: float) -> np.ndarray:
    """Gaussian noise band-passed to ``band`` (Hz) with raised-cosine edges, unit std."""
    white = rng.standard_normal((n_series, n_times))
    gain = band_gain(fft.rfftfreq(n_times, 1.0 / sfreq), band, edge=1.0)
    out = fft.irfft(fft.rfft(white, axis=1) * gain, n=n_times, axis=1)
    return out / out.std(axis=1, keepdims=True)


@dataclass(frozen=True)
class StorySources:
    """Latent sources of one story at ``MEG_SFREQ``; each array is ``(n_sources, n_times)``.

    ``envelope`` is positive with mean 1 (amplitude of the carrier), ``carrier`` is unit-variance
    band-limited noise, ``slow`` is the signed slow field with unit variance. ``evoked`` (the
    phase-locked response to the sound's envelope, auditory sources only) and ``alpha`` (an alpha
    rhythm whose amplitude falls as the source's envelope rises) reach the MEG only; both are zero in
    the worlds before calibration. ``acoustic`` ``(n_times,)`` is the loudness of the story's sound
    (mean 1), from which ``stimuli/audio/story_N.wav`` is written; ``None`` where the audio follows
    the mean of the sources' envelopes (the earlier worlds).
    """

    envelope: np.ndarray
    carrier: np.ndarray
    slow: np.ndarray
    evoked: np.ndarray | None = None
    alpha: np.ndarray | None = None
    acoustic: np.ndarray | None = None

    @property
    def neural(self) -> np.ndarray:
        """The signed source signal seen by MEG sensors: ``envelope * carrier + slow (+ evoked +
        alpha)``."""
        out = self.envelope * self.carrier + self.slow
        for extra in (self.evoked, self.alpha):
            if extra is not None:
                out += extra
        return out

    def loudness(self) -> np.ndarray:
        """What the audio file's loudness follows, ``(n_times,)``."""
        return self.envelope.mean(axis=0) if self.acoustic is None else self.acoustic


def story_sources(seed: int, story: int, duration: float, coupling: Coupling) -> StorySources:
    """Latent sources for ``duration`` seconds of story ``story`` (deterministic from the seed):
    the ``n_sources`` shared ones, then the hidden and the MEG-only ones (``Coupling.n_latent`` in
    all; those from their own random stream, so the shared sources do not change with their number).

    With ``auditory_sources`` > 0 (the calibrated world) the story also has a sound: its loudness is
    speech-like (the slow log-normal modulation of every source plus syllable-rate, 1-8 Hz,
    fluctuations of log-std ``syllable_depth``), and the first ``auditory_sources`` shared sources
    follow it directly (the first exactly, the others partly), as early auditory cortex follows the
    acoustic envelope; the MEG sees their envelope-following response (``evoked_weight``) and every
    MEG-visible source carries an alpha rhythm that falls with its activity (``alpha_weight``,
    ``alpha_suppression``). Those parts come from their own random stream too, so the worlds before
    them are reproduced exactly by their options."""
    shared = latent_sources(story_rng(seed, story), duration, coupling.n_sources, coupling)
    extra = coupling.n_latent - coupling.n_sources
    if extra:
        more = latent_sources(np.random.default_rng([seed, 5, story]), duration, extra, coupling)
        shared = StorySources(*(np.concatenate([a, b]) for a, b in
                                ((shared.envelope, more.envelope), (shared.carrier, more.carrier),
                                 (shared.slow, more.slow))))
    if coupling.auditory_sources == 0 and coupling.alpha_weight == 0:
        return shared
    return calibrated_parts(np.random.default_rng([seed, 8, story]), shared, coupling)


EVOKED_BAND = (0.5, 8.0)  # Hz: the envelope-following (phase-locked) response, Ding & Simon 2012
EVOKED_LATENCY = 0.1  # s: the M100-like latency of that response (Ding & Simon 2012: ~100 ms)
SYLLABLE_BAND = (1.0, 8.0)  # Hz: the speech envelope's modulation spectrum peaks at 4-5 Hz (Ding et al. 2017)
ALPHA_BAND = (8.0, 12.0)  # Hz
AUDITORY_FOLLOW = 0.8  # how much of log envelope the second and later auditory sources share with the sound


def calibrated_parts(rng: np.random.Generator, base: StorySources, coupling: Coupling) -> StorySources:
    """The sound, the auditory sources that follow it, the evoked response and the alpha rhythm."""
    k, n_times = base.envelope.shape
    envelope = base.envelope.astype(np.float64)
    acoustic = None
    evoked = np.zeros((k, n_times), dtype=np.float32)
    if coupling.auditory_sources:
        slow_log = np.log(envelope[0])  # the sound's slow loudness: phrases and sentences
        syllables = band_noise(rng, 1, n_times, SYLLABLE_BAND, MEG_SFREQ)[0]
        acoustic = np.exp(slow_log + coupling.syllable_depth * syllables)
        acoustic /= acoustic.mean()
        log_sound = np.log(acoustic)
        for j in range(coupling.auditory_sources):
            w = 1.0 if j == 0 else AUDITORY_FOLLOW
            own = np.log(envelope[j]) if j else 0.0
            mixed = np.exp(w * log_sound + np.sqrt(1 - w**2) * own)
            envelope[j] = mixed / mixed.mean()
        # the envelope-following response: the sound's 0.5-8 Hz envelope, ~100 ms later, unit std
        follow = band_noise_filter(acoustic, EVOKED_BAND, MEG_SFREQ)
        lag = int(round(EVOKED_LATENCY * MEG_SFREQ))
        follow = np.concatenate([np.zeros(lag), follow[: n_times - lag]])
        follow /= max(follow.std(), 1e-12)
        for j in range(coupling.auditory_sources):
            evoked[j] = coupling.evoked_weight * follow * (1.0 if j == 0 else AUDITORY_FOLLOW)
    alpha = np.zeros((k, n_times), dtype=np.float32)
    if coupling.alpha_weight:
        rhythm = band_noise(rng, k, n_times, ALPHA_BAND, MEG_SFREQ)
        # amplitude falls as activity rises: envelope ** -suppression, smoothed to the phrase scale
        amplitude = smooth_positive(envelope, 0.5, MEG_SFREQ) ** -coupling.alpha_suppression
        amplitude /= np.sqrt((amplitude ** 2).mean(axis=1, keepdims=True))
        alpha = (coupling.alpha_weight * amplitude * rhythm).astype(np.float32)
    return StorySources(envelope.astype(np.float32), base.carrier, base.slow, evoked, alpha,
                        None if acoustic is None else acoustic.astype(np.float32))


def band_noise_filter(series: np.ndarray, band: tuple[float, float], sfreq: float) -> np.ndarray:
    """``series`` band-passed to ``band`` (Hz) with the raised-cosine edges of ``band_noise`` (no
    wider than the band's low edge, so that nothing below 0 Hz is asked for)."""
    gain = band_gain(fft.rfftfreq(len(series), 1.0 / sfreq), band, edge=min(1.0, band[0]))
    return fft.irfft(fft.rfft(series - series.mean()) * gain, n=len(series))


def smooth_positive(series: np.ndarray, timescale: float, sfreq: float) -> np.ndarray:
    """Each row of a positive ``series`` low-passed (Gaussian spectrum of width 1/timescale), kept > 0."""
    gain = lowpass_gain(fft.rfftfreq(series.shape[1], 1.0 / sfreq), timescale)
    out = fft.irfft(fft.rfft(series, axis=1) * gain, n=series.shape[1], axis=1)
    return np.maximum(out, 1e-3 * series.mean(axis=1, keepdims=True))


def latent_sources(rng: np.random.Generator, duration: float, k: int, coupling: Coupling) -> StorySources:
    """A story's latent MEG sources: speech-like envelopes on two time scales and slow components."""
    n_times = int(round(duration * MEG_SFREQ))
    # speech loudness varies over syllables-to-phrases and over sentences: two time scales
    log_env = (smooth_noise(rng, k, n_times, coupling.envelope_timescale, MEG_SFREQ)
               + smooth_noise(rng, k, n_times, 4 * coupling.envelope_timescale, MEG_SFREQ)) / np.sqrt(2)
    envelope = np.exp(coupling.envelope_log_std * log_env)
    envelope /= envelope.mean(axis=1, keepdims=True)
    carrier = band_noise(rng, k, n_times, coupling.carrier_band, MEG_SFREQ)
    slow = smooth_noise(rng, k, n_times, coupling.slow_timescale, MEG_SFREQ)
    return StorySources(envelope.astype(np.float32), carrier.astype(np.float32),
                        slow.astype(np.float32))


CANONICAL_PEAK = 5.0  # s: the mode of SPM's gamma(6) response


def canonical_hrf(sfreq: float = DRIVE_SFREQ, length: float = HRF_LENGTH,
                  peak: float = CANONICAL_PEAK) -> np.ndarray:
    """SPM's canonical double-gamma HRF (response gamma(6), peak 5 s; undershoot gamma(16), ratio
    1/6), unit sum; ``peak`` shifts both gammas' shapes by ``peak - 5`` (a subject's latency)."""
    t = np.arange(0, length, 1.0 / sfreq)
    shift = peak - CANONICAL_PEAK
    hrf = stats.gamma.pdf(t, 6 + shift) - stats.gamma.pdf(t, 16 + shift) / 6.0
    return hrf / hrf.sum()


def bold_drive(sources: StorySources, coupling: Coupling) -> np.ndarray:
    """Neural drive of BOLD on the ``DRIVE_SFREQ`` grid of story time, ``(n_bold, n_bins)``.

    ``power_weight * envelope**2 / mean(envelope**2) + (1 - power_weight) * slow``: a sustained
    drive of 1 while the story plays (its band power) plus slow fluctuations, 0 before and after.
    """
    step = int(MEG_SFREQ / DRIVE_SFREQ)
    n_bins = sources.envelope.shape[1] // step
    cut = n_bins * step
    bold = slice(0, coupling.n_bold)  # the MEG-only sources drive no BOLD
    power = sources.envelope[bold, :cut].astype(np.float64) ** 2
    power /= power.mean(axis=1, keepdims=True)
    drive = coupling.power_weight * power + (1 - coupling.power_weight) * sources.slow[bold, :cut]
    return drive.reshape(drive.shape[0], n_bins, step).mean(axis=2)


def bold_response(drive: np.ndarray, story_onset: float, times: np.ndarray,
                  hrf_peak: float = CANONICAL_PEAK) -> np.ndarray:
    """HRF-convolved drive sampled at scan ``times`` (s from scan start), ``(n_sources, n_times)``.

    ``drive`` is on the ``DRIVE_SFREQ`` grid of story time; the story starts at ``story_onset``
    seconds after the scan start. Before the story the drive is 0. ``hrf_peak``: the subject's HRF.
    """
    hrf = canonical_hrf(peak=hrf_peak)
    n_grid = int(np.ceil((times.max() + 1.0) * DRIVE_SFREQ)) + 1
    grid = np.zeros((drive.shape[0], n_grid))
    first = int(round(story_onset * DRIVE_SFREQ))
    n = min(drive.shape[1], n_grid - first)
    grid[:, first:first + n] = drive[:, :n]
    conv = np.stack([np.convolve(row, hrf)[:n_grid] for row in grid])
    grid_times = np.arange(n_grid) / DRIVE_SFREQ
    return np.stack([np.interp(times, grid_times, row) for row in conv])
