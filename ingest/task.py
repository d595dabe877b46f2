"""One Ray task: a (subject, run) decoded once into the cache, then paired.

A task reads only its own run's files, each once, and writes only its own run's objects (its cache
group, its pairs file), so no two tasks ever write the same object or chunk. It never raises for bad
input: the result says ``ok: False`` and names the file.
"""

from __future__ import annotations

import time

import numpy as np

from meg2fmri.shards.errors import IntegrityError, Meg2fmriError

from . import cache, targets
from .bids_io import fmri_story, repetition_time
from .config import IngestConfig, RunTask
from .meter import reset_peak_memory, resident_mb
from .outcome import RunOutcome
from .pairing import PairingConfig, pair_run, slice_correlation
from .pairs import RunPairs, save_pairs
from .preprocess import preprocess_fmri, preprocess_meg


def needs_survey(pairing: PairingConfig) -> bool:
    """Whether pairing waits for a choice made over the training runs (a slice, or the mask)."""
    return (pairing.target == "slice" and pairing.slice is None) or (
        pairing.target == "volume" and pairing.mask is None)


def survey(cached: cache.CachedRun, pairing: PairingConfig) -> dict:
    """What the driver's choice needs of one run (``RunOutcome`` fields): its slice-correlation
    profile (slice targets), or its mean normalised volume and grid (volume targets: the mask)."""
    if pairing.target == "slice":
        return {"profile": slice_correlation(cached, pairing).tolist()}
    shape, affine = targets.grid_of(cached)
    return {"mean_volume": targets.mean_volume(cached), "grid": {"shape": list(shape),
                                                                 "affine": affine.tolist()}}


def slice_profile(correlation: np.ndarray) -> list[float | None]:
    """Per-slice correlation of the slice means with the MEG profile (the paper's Fig. 1), for the
    index: rounded, None where undefined."""
    return [round(float(c), 4) if np.isfinite(c) else None for c in correlation]


def unexpected_error(task: RunTask, err: Exception) -> str:
    """What a task says of an error its checks did not foresee. Missing AWS credentials (botocore's
    NoCredentialsError through s3fs) are the common one on a cluster: the driver's machine has them,
    the node that ran the task does not."""
    from botocore.exceptions import NoCredentialsError

    if isinstance(err, NoCredentialsError):
        import socket

        return (f"{task.id}: no AWS credentials on {socket.gethostname()}, the machine that ran this task: "
                "S3 needs them on every Ray node (an instance role, or the AWS_* variables in the nodes' "
                "environment; a Ray started before they were set does not see them) or in "
                "--storage-options; for a public --bids-root only, --anon")
    return f"{task.id}: unexpected {type(err).__name__}: {err}"


def decode_run(task: RunTask, config: IngestConfig, lap) -> float:
    """Read the run's FIF and NIfTI once, preprocess, and commit its cache group; decoded MB."""
    files = task.files
    story = fmri_story(files)
    tr = repetition_time(files)
    meg = preprocess_meg(files, story)
    lap("meg")
    fmri = preprocess_fmri(files, tr)
    lap("fmri")
    digests = {"meg": cache.content_digest(meg.data), "bold": cache.content_digest(fmri.volumes)}
    cache.write_run(config.output(), files, meg, fmri, story, digests, config.attempt)
    lap("cache")
    return (meg.decoded_bytes + fmri.volumes.nbytes) / 2**20


def ingest_run(task: RunTask, config: IngestConfig) -> RunOutcome:
    """One (subject, run): cache (reading FIF and NIfTI once) if needed, then pair; while the slice
    or the mask is not chosen yet (``needs_survey``), return what the driver needs to choose it over
    the training runs instead (``survey``)."""
    out = config.output()
    decoded_mb = 0.0
    reset_peak_memory()
    baseline_mb = resident_mb()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now

    try:
        if task.files is not None and not cache.is_cached(cache.committed_attrs(out, task.id), task.files):
            decoded_mb = decode_run(task, config, lap)
        try:
            cached = cache.read_run(out, task.subject, task.run)
        except IntegrityError:  # committed but broken: a killed ingest's task kept writing after a
            if task.files is None or decoded_mb:  # resumed one had cleaned it up; decode it again
                raise
            decoded_mb = decode_run(task, config, lap)
            cached = cache.read_run(out, task.subject, task.run)
        common = {"subject": task.subject, "run": task.run, "ok": True, "decoded": decoded_mb > 0,
                  "digests": cached.attrs.get("digests", {}), "fmri_tr": cached.attrs.get("fmri_tr"),
                  "decoded_mb": decoded_mb, "seconds": seconds}
        if needs_survey(config.pairing):
            return RunOutcome(**common, **survey(cached, config.pairing),
                              peak_task_mb=resident_mb("VmHWM") - baseline_mb)
        extract = targets.extractor(cached, config.pairing, out)
        pairs = pair_run(cached, config.pairing, extract)
        stored = pairs.fmri.astype(extract.layout.np_dtype)
        error = float(np.abs(stored.astype(np.float32) - pairs.fmri).max())
        save_pairs(out, config.pairing, task.id,
                   RunPairs(pairs.meg, stored, pairs.meta, pairs.slice_correlation, error), config.attempt)
        lap("pair")
    except (Meg2fmriError, OSError, ValueError) as err:
        return RunOutcome.failure(task.id, str(err))
    except Exception as err:  # a bug must not stop the other runs either; say what it was
        return RunOutcome.failure(task.id, unexpected_error(task, err))
    return RunOutcome(**common, count=len(pairs.meta), slice=pairs.slice,
                      warnings=cached.attrs["warnings"] + pairs.warnings, storage_error=error,
                      slice_correlation=slice_profile(pairs.slice_correlation),
                      peak_task_mb=resident_mb("VmHWM") - baseline_mb)
