"""Pairing MEG epochs with fMRI slices, from a cached run.

Two recordings of the same story are aligned through story time only: MEG story begin from the
trigger (repaired where faulty), fMRI story begin from events.tsv. Every conversion is explicit:
seconds -> MEG samples with the 100 Hz rate, seconds -> volumes with TR.

- ``paper``: the paper's one pair per run (section 3.2, as its text says): the 64-sample epoch
  from story begin, averaged over time (328-d), z-scored; the 64-volume window from the fMRI
  story onset; the slice whose mean time series best correlates with the MEG temporal profile
  (the epoch averaged over channels); that slice at window index 32.
- ``windows``: an epoch every ``stride`` seconds of the story, each paired with the volume
  acquired ``lag`` seconds later in story time.

One slice for every run: ``slice`` fixed, or chosen by the driver as the slice whose mean series
best correlates with the MEG profile (paper: the 64-volume window against the epoch's channel mean;
windows: the paired volumes against the epochs' MEG power, as BOLD follows power), averaged over the
*training* runs only. The paper picks a slice per run, held-out runs included, which chooses a
held-out target with its own data; we do not.

Features: ``mean`` (the paper's time-mean vector, z-scored across channels) or ``bandpower``
(log power per channel in the canonical bands over the epoch, z-scored across channels per band).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import signal

from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import TARGET_KINDS

from .cache import CachedRun
from .kernels import correlate_slices, zscore_channels_numpy

BANDS = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0),
         "gamma": (30.0, 45.0)}
EPOCH_SAMPLES = 64  # MEG samples at 100 Hz (0.64 s)
WINDOW_VOLUMES = 64  # paper: fMRI window length
WINDOW_INDEX = 32  # paper: volume of the window that is paired


@dataclass(frozen=True, kw_only=True)
class PairingConfig:
    """How MEG epochs are paired with fMRI targets (features, stride, lag, epoch, target kind)."""
    pairing: str = "windows"  # "windows" | "paper"
    features: str = "mean"  # "mean" | "bandpower"
    size: int = 32  # output image side, pixels
    stride: float = 2.0  # s between epochs (windows)
    lag: float = 5.0  # s hemodynamic lag (windows)
    slice: int | None = None  # fixed axial slice; None = chosen by correlation
    epoch: float = EPOCH_SAMPLES / 100  # s of MEG per sample (windows; the paper: 0.64)
    target: str = "slice"  # "slice" | "volume" | "parcels" (targets.py)
    atlas: str | None = None  # parcels: the label image
    mask: tuple[str, str] | None = None  # volume: (mask file, sha256), set by the driver
    power: str = "log"  # bandpower: "log" (log band power) or "linear" (band power itself)
    # bandpower, windows: 0 = one epoch per sample; N = the band power of each of the N 1-s bins before
    # the paired volume (an FIR encoding model's input: lags 0..N-1 s)
    fir_lags: int = 0
    # the dataset's channels in their canonical order (``bids_io.ChannelSet``), set by the driver: every
    # run's MEG is read by these names; None = each cached run's own order (direct library use)
    channels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGET_KINDS:
            raise InputError(f"--target must be one of {', '.join(TARGET_KINDS)}, got {self.target!r}")
        if (self.target == "parcels") != (self.atlas is not None):
            raise InputError("--target parcels needs --atlas FILE.nii.gz (an integer label image), and "
                             "--atlas is only for --target parcels")
        if self.pairing not in ("windows", "paper"):
            raise InputError(f"--pairing must be 'windows' or 'paper', got {self.pairing!r}")
        if self.features not in ("mean", "bandpower"):
            raise InputError(f"--features must be 'mean' or 'bandpower', got {self.features!r}")
        if self.power not in ("log", "linear") or (self.power != "log" and self.features != "bandpower"):
            raise InputError(f"--power must be 'log' or 'linear', and only with --features bandpower; got "
                             f"{self.power!r} with {self.features!r}")
        if not 0 <= self.fir_lags <= 30 or (self.fir_lags and (self.features != "bandpower"
                                                                or self.pairing != "windows")):
            raise InputError(f"--fir-lags is 0-30 one-second bins, with --features bandpower and --pairing "
                             f"windows; got {self.fir_lags} with {self.features!r}, {self.pairing!r}")
        if self.size < 4 or self.stride <= 0 or self.lag < 0 or not 0.1 <= self.epoch <= 30:
            raise InputError(f"need --size >= 4, --stride > 0, --lag >= 0 and 0.1 <= --epoch <= 30 s, "
                             f"got {self}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class MissingChannelsError(InputError):
    """A run's MEG lacks channels of the dataset's canonical set."""


def canonical_meg(run: CachedRun, channels: tuple[str, ...] | None) -> np.ndarray:
    """The run's cached MEG ``(channels, samples)`` with its rows in the canonical order ``channels``
    (by name, whatever order its FIF had); every row when ``channels`` is None."""
    meg = run.meg[:]
    if channels is None:
        return meg
    names = list(run.attrs["ch_names"])
    if names == list(channels):
        return meg
    position = {name: i for i, name in enumerate(names)}
    missing = [c for c in channels if c not in position]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise MissingChannelsError(
            f"{run.name}: its MEG file lacks {len(missing)} of the dataset's {len(channels)} channels "
            f"({shown}); restore them (re-export the FIF with every channel), or mark them 'bad' in this "
            "run's channels.tsv (a bad channel is excluded from every run), or leave the run out "
            "(--subjects/--runs)")
    return meg[[position[c] for c in channels]]


def feature_names(config: PairingConfig, ch_names: list[str]) -> list[str]:
    """``CH`` (mean), ``CH:band`` (bandpower) or ``CH:band:lagJs`` (bandpower with FIR lags), in the
    order of the feature vector: (lags,) bands, channels."""
    if config.features == "mean":
        return list(ch_names)
    names = [f"{ch}:{band}" for band in BANDS for ch in ch_names]
    if not config.fir_lags:
        return names
    return [f"{name}:lag{j}s" for j in range(config.fir_lags) for name in names]


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to ``(size, size)`` with half-pixel centres and no antialiasing: the same
    numbers as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``."""
    def weights(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float64)

    image = image.astype(np.float64)
    y0, y1, wy = weights(image.shape[0])
    x0, x1, wx = weights(image.shape[1])
    rows = image[y0] * (1 - wy)[:, None] + image[y1] * wy[:, None]
    return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32)


def band_power(meg: np.ndarray, sfreq: float) -> np.ndarray:
    """Instantaneous power in each canonical band, ``(bands, channels, samples)`` float32."""
    out = np.empty((len(BANDS), *meg.shape), dtype=np.float32)
    for i, (low, high) in enumerate(BANDS.values()):
        sos = signal.butter(4, (low, min(high, 0.45 * sfreq)), btype="bandpass", fs=sfreq, output="sos")
        out[i] = signal.sosfiltfilt(sos, meg, axis=1) ** 2
    return out


def epoch_features(meg: np.ndarray, power: np.ndarray | None, start: int, length: int,
                   scale: str = "log") -> np.ndarray:
    """Feature vector of the ``length``-sample epoch starting at MEG sample ``start``: the channel
    means z-scored across channels (the paper's text), or band power ``(bands * channels,)``, its log
    (``scale="log"``) or itself (``"linear"``)."""
    stop = start + length
    if power is None:
        vector = meg[:, start:stop].mean(axis=1)
        return zscore_channels_numpy(vector[None, :])[0]
    mean = power[:, :, start:stop].mean(axis=2)
    return (np.log(mean + 1e-6) if scale == "log" else mean).ravel()  # (bands, channels) raveled


def standardise_over_time(features: np.ndarray) -> np.ndarray:
    """Z-score each feature across a run's epochs (log band power): keeps how power changes over
    the story, which a z-score across channels would remove, and takes out each subject's and
    channel's own level."""
    sd = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(sd > 0, sd, 1)


def meg_features(meg: np.ndarray, sfreq: float, starts: list[int], length: int, kind: str,
                 scale: str = "log", fir_lags: int = 0, lag: float = 0.0) -> np.ndarray:
    """Feature vectors ``(len(starts), width)`` float32 of the ``length``-sample epochs at ``starts``
    of the z-scored 100 Hz MEG ``(channels, samples)``: ingest and ``generate`` both call this. With
    ``fir_lags`` N, each sample's features are instead the band power of the N one-second bins before
    its volume (at ``start + lag`` s): bin j spans ``[volume - (j + 1) s, volume - j s)``."""
    power = band_power(meg, sfreq) if kind == "bandpower" else None
    if fir_lags:
        second = round(sfreq)
        ends = [s + round(lag * sfreq) for s in starts]
        features = np.stack([np.concatenate([epoch_features(meg, power, end - (j + 1) * second, second, scale)
                                             for j in range(fir_lags)]) for end in ends])
    else:
        features = np.stack([epoch_features(meg, power, s, length, scale) for s in starts])
    if power is not None and len(starts) > 1:
        features = standardise_over_time(features)
    return features.astype(np.float32)


@dataclass
class RunPairs:
    """One run's pairs: MEG vectors, targets, per-sample metadata, slice profile, warnings."""
    meg: np.ndarray  # (n, features) float32
    fmri: np.ndarray  # (n, *target shape) in [0, 1] (float32; volume targets are stored as float16)
    meta: list[dict]
    slice: int
    slice_correlation: np.ndarray  # (slices,) correlations used to choose the slice
    warnings: list[str]


@dataclass
class Windows:
    """Where a run's samples sit: MEG epoch starts (cached 100 Hz samples), paired volumes, the MEG
    profile and the slice-mean table that the slice choice correlates."""

    starts: list[int]
    volumes: list[int]
    length: int  # MEG samples per epoch
    meg_onset: int  # MEG sample of story time 0
    profile: np.ndarray
    table: np.ndarray  # (len(profile), slices) slice means at the profile's times
    warnings: list[str]


def run_windows(run: CachedRun, config: PairingConfig, meg: np.ndarray | None = None) -> Windows:
    """The windows pairing of one run: an epoch every ``stride`` s with the volume ``lag`` s later."""
    a = run.attrs
    sfreq, tr = a["meg_sfreq"], a["fmri_tr"]
    meg = run.meg[:] if meg is None else meg
    warnings: list[str] = []
    meg_onset = round(a["meg_story_onset_s"] * sfreq)  # MEG sample of story time 0
    fmri_onset = a["fmri_story_onset_s"]
    n_vols = run.slice_means.shape[0]
    length = EPOCH_SAMPLES if config.pairing == "paper" else round(config.epoch * sfreq)
    if config.pairing == "paper":
        if meg_onset < 0:
            warnings.append(f"{run.name}: the MEG file starts {-meg_onset / sfreq:.3f} s after the story; "
                            "the paper epoch starts at the file start")
        starts = [max(meg_onset, 0)]
        first_volume = round(fmri_onset / tr)
        if first_volume + WINDOW_VOLUMES > n_vols:
            raise InputError(f"{run.name}: {n_vols} volumes, the paper's 64-volume window from volume "
                             f"{first_volume} does not fit")
        volumes = [first_volume + WINDOW_INDEX]
        profile = meg[:, starts[0]:starts[0] + length].mean(axis=0)
        table = run.slice_means[first_volume:first_volume + WINDOW_VOLUMES]
        return Windows(starts, volumes, length, meg_onset, profile, table, warnings)
    duration = a["story_duration_s"]
    starts, volumes, profile_values = [], [], []
    for i in range(int(duration // config.stride) + 1):
        tau = i * config.stride
        start = meg_onset + round(tau * sfreq)
        volume = round((fmri_onset + tau + config.lag) / tr)
        if tau + length / sfreq > duration or volume >= n_vols:
            break
        volume_at = start + round(config.lag * sfreq)  # MEG sample of the paired volume
        first, last = ((volume_at - config.fir_lags * round(sfreq), volume_at) if config.fir_lags
                       else (start, start + length))
        if first < 0 or last > meg.shape[1]:
            continue  # the MEG file does not cover this epoch (or these FIR bins)
        starts.append(start)
        volumes.append(volume)
        profile_values.append((meg[:, start:start + length] ** 2).mean())
    if len(starts) < 2:
        raise InputError(f"{run.name}: fewer than 2 windows fit the story; lower --stride or --lag")
    return Windows(starts, volumes, length, meg_onset, np.array(profile_values), run.slice_means[volumes],
                   warnings)


def slice_correlation(run: CachedRun, config: PairingConfig) -> np.ndarray:
    """Per axial slice, the correlation of the slice mean with the run's MEG profile (paper, Fig. 1)."""
    windows = run_windows(run, config, canonical_meg(run, config.channels))
    return correlate_slices(windows.table, windows.profile)


def consensus_slice(profiles: list[np.ndarray]) -> int:
    """The slice with the highest mean correlation over ``profiles`` (the *training* runs' only: a
    held-out run's target must not be chosen with its own data)."""
    table = np.stack(profiles)
    mean = np.nanmean(np.where(np.isfinite(table), table, np.nan), axis=0)
    if not np.isfinite(mean).any():
        raise InputError("no slice correlates with the MEG profile in any training run; pass --slice")
    return int(np.nanargmax(mean))


def pair_run(run: CachedRun, config: PairingConfig, extract) -> RunPairs:
    """The run's (MEG features, target) pairs; ``extract(run, volumes, slice, size)`` makes the
    targets (``targets.extractor``). Slice targets need ``config.slice`` (which the driver resolves)."""
    slices = config.target == "slice"
    if slices and config.slice is None:
        raise InputError(f"{run.name}: pairing needs a slice; the driver chooses one from training runs")
    sfreq = run.attrs["meg_sfreq"]
    meg = canonical_meg(run, config.channels)
    windows = run_windows(run, config, meg)
    correlation = correlate_slices(windows.table, windows.profile) if slices else np.zeros(0)
    chosen, n_slices = (config.slice if slices else -1), run.slice_means.shape[1]
    if slices and not 0 <= chosen < n_slices:
        raise InputError(f"{run.name}: --slice {chosen} is outside 0..{n_slices - 1}")
    starts, volumes, length, meg_onset = windows.starts, windows.volumes, windows.length, windows.meg_onset
    features = meg_features(meg, sfreq, starts, length, config.features, config.power, config.fir_lags,
                            config.lag)
    images = extract(run, volumes, chosen, config.size)
    tr, fmri_onset = run.attrs["fmri_tr"], run.attrs["fmri_story_onset_s"]
    meta = [{"subject": run.subject, "run": run.run, "story_time_s": round((s - meg_onset) / sfreq, 4),
             "meg_sample": int(s), "fmri_volume": int(v), "fmri_time_s": round(v * tr - fmri_onset, 4),
             "slice": chosen} for s, v in zip(starts, volumes, strict=True)]
    return RunPairs(features, images, meta, chosen, correlation, windows.warnings)
