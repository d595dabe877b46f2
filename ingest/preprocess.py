"""The paper's continuous preprocessing (section 3.2), one run at a time.

MEG: read the FIF once with MNE -> story onset from STI101 (the dataset's known trigger faults
repaired) -> resample to 100 Hz (polyphase anti-aliasing FIR) -> z-score each of the 328 channels
over the run.
fMRI: read the NIfTI once with nibabel -> check TR and shape -> per-volume slice means and the
run's min and max in one numba pass on the int16 data; min and max normalise the run to [0, 1]
(the cache stores the int16 values with that exact scale).

Every error names the file and what is wrong.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import mne
import nibabel as nib
import numpy as np
from isal import igzip
from scipy import signal

from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError

from .bids_io import RunFiles, StoryEvent
from .kernels import NonFiniteError, decimate, slice_means_numpy, slice_stats, zscore_channels

MEG_SFREQ = 100.0  # Hz after resampling (paper)
STORY_BEGIN, STORY_END = 1, 2  # STI101 values
TRIGGER_TOLERANCE = 0.5  # s: Beg/End spacing may differ from the story length by this much
TR_TOLERANCE = 1e-3  # s


class RunInputError(InputError):
    """One run's input files cannot be used; the message names the file."""


@dataclass
class MegRun:
    """A run's preprocessed MEG: (channels, samples) at 100 Hz, channel names, story onset, warnings."""
    data: np.ndarray  # (channels, samples) float32, z-scored, at MEG_SFREQ, file-relative
    ch_names: list[str]
    story_onset: float  # s from the FIF file start (negative if the file starts after the story)
    first_samp: int  # samples at the original rate between acquisition start and file start
    decoded_bytes: int  # size of the data as MNE decoded it (float64, original rate)
    warnings: list[str] = field(default_factory=list)


def story_onset(events: np.ndarray, first_samp: int, sfreq: float, duration: float,
                run: str) -> tuple[float, list[str]]:
    """Story onset in seconds from the file start, from STI101 events ``(n, 3)``.

    ``find_events`` samples include ``first_samp``; it is subtracted here. Where the begin
    trigger is missing, or Beg/End spacing disagrees with ``duration`` (the story length from the
    fMRI events.tsv) by more than 0.5 s, onset = End - duration (dataset README, usage notes).
    """
    def first(value: int) -> float | None:
        hits = events[events[:, 2] == value]
        return None if len(hits) == 0 else (int(hits[0, 0]) - first_samp) / sfreq

    beg, end = first(STORY_BEGIN), first(STORY_END)
    if beg is None and end is None:
        raise RunInputError("no story events (STI101 values 1 = begin, 2 = end) were found")
    if end is None:
        return beg, [f"{run}: no story-end trigger; using the begin trigger at {beg:.3f} s unchecked"]
    if beg is not None and abs((end - beg) - duration) <= TRIGGER_TOLERANCE:
        return beg, []
    onset = end - duration
    why = ("the begin trigger is missing" if beg is None else
           f"Beg/End spacing {end - beg:.3f} s disagrees with the story length {duration:.3f} s")
    return onset, [f"{run}: {why}; story onset = End - duration = {onset:.3f} s"]


@functools.lru_cache(maxsize=4)
def anti_alias_fir(factor: int) -> np.ndarray:
    """Linear-phase low-pass FIR for decimating by ``factor``: flat to 0.8 x the new Nyquist
    (40 Hz at 100 Hz), Hamming window, ``10 * factor + 1`` taps."""
    return signal.firwin(10 * factor + 1, 0.8 / factor)


def resample_meg(data: np.ndarray, factor: int, stim_rows: list[int]) -> np.ndarray:
    """Decimate ``(channels, samples)`` by ``factor``: polyphase FIR (scipy's ``resample_poly``,
    the method of MNE's ``Raw.resample(method="polyphase")``, as a numba kernel that equals it) for
    signals; trigger channels are subsampled, not filtered, as MNE does, so their steps stay steps."""
    out = decimate(data, anti_alias_fir(factor), factor)
    out[stim_rows] = data[stim_rows, ::factor][:, :out.shape[1]]
    return out


def preprocess_meg(files: RunFiles, story: StoryEvent) -> MegRun:
    """A run's MEG, the story onset from its STI101 triggers (checked against ``story``)."""
    return preprocess_meg_file(files.meg, files.name, story.duration, source=files.source)


def read_raw(path, storage_options: dict | None = None, source: Location | None = None):
    """MNE's Raw of a FIF: a local file (decoded lazily), or an ``s3://`` object downloaded whole into
    a task-local temporary file (deleted once decoded), or an error naming the file. ``path`` is
    relative to ``source`` when one is given, else a path or URL.

    Measured (`bench ingest --source s3`): the temporary file took 0.73-0.81x the time of reading the
    object into memory and handing MNE a file object (which needs ``preload=True`` and holds the
    object's bytes beside the decoded data); s3fs's default read-ahead made one GET per FIF,
    ``cache_type="none"`` 66 and was 16-19x slower."""
    if source is None:
        text = str(path)
        parent, _, name = text.rpartition("/")
        source, path = Location(parent or ".", storage_options), name
    url = source.url_of(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if source.remote:
                with tempfile.TemporaryDirectory(prefix="meg2fmri-fif-") as folder:
                    local = os.path.join(folder, "run_meg.fif")
                    source.fs.get_file(source.path(path), local)
                    return mne.io.read_raw_fif(local, preload=True, verbose="error")
            return mne.io.read_raw_fif(source.path(path), preload=False, verbose="error")
    except FileNotFoundError:
        raise RunInputError(f"{url}: no such MEG file") from None
    except Exception as err:  # MNE raises many types for corrupt or truncated files
        raise RunInputError(f"{url}: cannot read the FIF file ({type(err).__name__}: {err}); "
                            "re-download or re-export it") from None


def preprocess_meg_file(path, name: str, duration: float | None, onset: float | None = None,
                        storage_options: dict | None = None, source: Location | None = None) -> MegRun:
    """The paper's MEG preprocessing of one FIF (local or ``s3://``; relative to ``source`` if given).
    The story onset comes from the STI101 triggers (``duration`` checks them), or is ``onset`` (s from
    the file start) as given."""
    raw = read_raw(path, storage_options, source)
    if source is not None:
        path = source.url_of(path)
    try:
        data = raw.get_data()  # decodes the file once, straight into one float64 array
    except Exception as err:
        raise RunInputError(f"{path}: cannot read the FIF file ({type(err).__name__}: {err}); "
                            "re-download or re-export it") from None
    ch_names, sfreq, first_samp = list(raw.ch_names), raw.info["sfreq"], raw.first_samp
    stim_rows = [i for i, kind in enumerate(raw.get_channel_types()) if kind == "stim"]
    notes: list[str] = []
    if onset is None:
        if "STI101" not in ch_names:
            raise RunInputError(f"{path}: no STI101 trigger channel")
        trigger = mne.io.RawArray(data[[ch_names.index("STI101")]],
                                  mne.create_info(["STI101"], sfreq, "stim"), first_samp=first_samp,
                                  verbose="error")
        events = mne.find_events(trigger, stim_channel="STI101", shortest_event=1, verbose="error")
        try:
            onset, notes = story_onset(events, first_samp, sfreq, duration, name)
        except RunInputError as err:
            raise RunInputError(f"{path}: {err}") from None
    factor = sfreq / MEG_SFREQ
    if factor != int(factor):
        raise RunInputError(f"{path}: sampling rate {sfreq} Hz is not a multiple of {MEG_SFREQ} Hz")
    decoded_bytes = data.nbytes
    data = resample_meg(data, int(factor), stim_rows)
    try:  # NaN or inf anywhere in the input spreads into the filtered data, and is caught here
        data = zscore_channels(data)
    except NonFiniteError:
        raise RunInputError(f"{path}: the MEG data hold NaN or infinite values") from None
    return MegRun(data, ch_names, onset, first_samp, decoded_bytes, notes)


@dataclass
class FmriRun:
    """A run's preprocessed BOLD: normalised volumes, TR, affine, value range, slice means."""
    volumes: np.ndarray  # (volumes, slices, y, x) scanner values: a transposed view, not a copy
    slice_means: np.ndarray  # (volumes, slices) float64 of the normalised data
    tr: float
    value_range: tuple[float, float]  # scanner values mapped to 0 and 1
    affine: np.ndarray  # (4, 4) voxel (i, j, k) -> mm of the NIfTI (its sform, else qform)



class ChunkedReads(io.RawIOBase):
    """A readable stream whose ``readinto`` fills the caller's buffer a chunk at a time. nibabel reads
    a stream's data with ``readinto`` into one preallocated buffer; a gzip stream's inherited
    ``readinto`` first reads the *whole* request into a temporary bytes object, so the run's data
    existed twice at once (peak 2x the decoded size)."""

    CHUNK = 1 << 24

    def __init__(self, stream):
        self.stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.stream.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            chunk = self.stream.read(min(self.CHUNK, len(view) - done))
            if not chunk:
                break
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
        return done


def read_nifti(source: Location, rel: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A (gzipped) NIfTI and its data array, streamed through ISA-L's gunzip (about twice as fast as
    zlib): from the local file, or from the S3 object's read-ahead stream (nothing written to disk).
    The data are decoded once, in the file's dtype (no float64 copy)."""
    with source.fs.open(source.path(rel), "rb") as raw:
        if not rel.endswith(".gz"):
            return stream_image(raw)
        with igzip.IGzipFile(fileobj=raw, mode="rb") as gz:
            return stream_image(ChunkedReads(gz))


def stream_image(stream) -> tuple[nib.Nifti1Image, np.ndarray]:
    """nibabel's ``from_stream`` without its memory-map attempt: ``np.memmap`` first seeks a stream to
    its end, which on a gzip stream decompresses the whole run once for nothing (the run was
    decompressed twice: 1.13 s for a bench-preset run whose one-shot gunzip takes 0.65 s)."""
    from nibabel.fileholders import FileHolder

    holders = {"header": FileHolder(fileobj=stream), "image": FileHolder(fileobj=stream)}
    img = nib.Nifti1Image.from_file_map(holders, mmap=False)
    return img, np.asanyarray(img.dataobj)


TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}  # NIfTI xyzt_units -> seconds


def header_tr(header) -> float:
    """The repetition time in seconds from a NIfTI header, in the time unit its ``xyzt_units`` names
    (``sec``, ``msec``, ``usec``; ``unknown`` read as seconds, as nibabel and most tools do)."""
    unit = header.get_xyzt_units()[1]
    if unit not in TIME_UNITS:
        raise RunInputError(f"the header's time unit is {unit!r}, not a time (sec, msec or usec)")
    return float(header.get_zooms()[3]) * TIME_UNITS[unit]


def bold_shape(files: RunFiles) -> tuple[int, ...]:
    """The BOLD run's shape ``(i, j, k, t)`` from its header alone (a few hundred bytes read)."""
    try:
        with files.source.fs.open(files.source.path(files.bold), "rb") as raw:
            stream = igzip.IGzipFile(fileobj=raw, mode="rb") if files.bold.endswith(".gz") else raw
            return tuple(int(n) for n in nib.Nifti1Header.from_fileobj(stream).get_data_shape())
    except Exception as err:
        raise RunInputError(f"{files.url('bold')}: cannot read the NIfTI header ({type(err).__name__}: "
                            f"{err}); re-download it") from None


def fif_channels(files: RunFiles) -> list[str]:
    """The channel names of a run's FIF, from its header (for datasets without channels.tsv)."""
    return list(read_raw(files.meg, source=files.source).ch_names)


def load_bold(files: RunFiles, tr_sidecar: float) -> tuple[np.ndarray, np.ndarray]:
    """The run as ``(volumes, slices, y, x)`` (a transposed view of nibabel's array) and its
    affine, the header TR checked against the sidecar's."""
    path = files.url("bold")
    try:
        img, data = read_nifti(files.source, files.bold)
    except Exception as err:  # nibabel / gzip / zlib errors on corrupt or truncated files
        raise RunInputError(f"{path}: cannot read the NIfTI file ({type(err).__name__}: {err}); "
                            "re-download it") from None
    if data.ndim != 4:
        raise RunInputError(f"{path}: expected a 4D BOLD run, got shape {data.shape}")
    tr = header_tr(img.header)
    if abs(tr - tr_sidecar) > TR_TOLERANCE:
        raise RunInputError(f"{path}: TR {tr:.4f} s in the header but RepetitionTime {tr_sidecar} s in "
                            f"{files.bold_json.rsplit('/', 1)[-1]}; fix the header or the sidecar")
    return data.T, np.asarray(img.affine, dtype=np.float64)


def preprocess_fmri(files: RunFiles, tr_sidecar: float) -> FmriRun:
    """Read a run's BOLD once and normalise it as the paper does (min-max over the run)."""
    volumes, affine = load_bold(files, tr_sidecar)
    if volumes.size == 0:
        raise RunInputError(f"{files.url('bold')}: no voxels (shape {volumes.shape[::-1]})")
    if volumes.dtype == np.int16:  # the scanner's values: means, min and max in one pass
        means, lo, hi = slice_stats(volumes)
    else:
        if not np.isfinite(volumes).all():
            raise RunInputError(f"{files.url('bold')}: the BOLD data hold NaN or infinite values")
        means = slice_means_numpy(volumes)
        lo, hi = volumes.min(), volumes.max()
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        raise RunInputError(f"{files.url('bold')}: the run is constant ({lo}); nothing to normalise")
    return FmriRun(volumes, (means - lo) / (hi - lo), tr_sidecar, (lo, hi), affine)
