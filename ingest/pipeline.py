"""The ingest driver: plan the runs, run one Ray task per (subject, run), assemble the shards.

A task decodes its FIF and NIfTI exactly once into the Zarr cache (unless the cache already holds
the run from the same files), then pairs the run from the cache and saves the pairs under
``.work/``. Tasks fail alone: a failure is reported with the file and the reason, every other run
goes on. Shards and the index are written last, from every finished run in (subject, run) order,
so a resumed ingest gives byte-identical shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meg2fmri.shards.errors import InputError, Meg2fmriError, OutputExistsError
from meg2fmri.shards.format import MASK_NAME
from meg2fmri.shards.index import INDEX_NAME, read_index

from . import cache, targets
from .bids_io import RunFiles, dataset_fingerprint, find_runs, fmri_story, participant_sexes, repetition_time
from .pairing import PairingConfig, pair_run, slice_correlation
from .preprocess import preprocess_fmri, preprocess_meg

WORK = ".work"
OUR_NAMES = {cache.CACHE_NAME, "shards", INDEX_NAME, WORK, MASK_NAME}


@dataclass(frozen=True)
class IngestConfig:
    bids_root: Path | None
    out: Path
    subjects: tuple[str, ...] | None = None  # None = every subject found
    runs: tuple[int, ...] | None = None  # None = every run found
    pairing: PairingConfig = field(default_factory=PairingConfig)
    preprocessed: bool = False  # read derivatives/preprocessed_data (MEG tSSS+ICA, MNI bold)
    from_cache: bool = False  # re-pair from the Zarr cache; never touch FIF/NIfTI
    held_out: tuple[str, ...] | None = None  # None = one female + one male (shards.split)
    held_out_stories: tuple[int, ...] | None = None  # None = every sixth story (shards.split); () = none
    shard_samples: int = 1000
    workers: int | None = None  # local Ray CPUs; None = all cores
    ray_address: str | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["bids_root"] = None if self.bids_root is None else str(self.bids_root)
        out["out"] = str(self.out)
        return out


@dataclass(frozen=True)
class RunTask:
    subject: str
    run: int
    files: RunFiles | None  # None when pairing from the cache only


def pairs_dir(config: IngestConfig) -> Path:
    digest = hashlib.sha256(json.dumps(config.pairing.to_json(), sort_keys=True).encode()).hexdigest()
    return config.out / WORK / f"pairs-{digest[:12]}"


def check_out(config: IngestConfig, dataset: dict) -> None:
    """Refuse an --out that holds something other than our own outputs or another dataset's."""
    out = config.out
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; choose a folder")
    if not out.is_dir():
        return
    foreign = sorted(set(os.listdir(out)) - OUR_NAMES)
    if foreign:
        raise OutputExistsError(f"--out {out} holds files that ingest did not write ({foreign[:3]}); "
                                "choose an empty or ingest-only folder")
    if (out / INDEX_NAME).is_file():
        known = read_index(out).dataset
        if known.get("fingerprint") != dataset["fingerprint"]:
            raise OutputExistsError(f"--out {out} holds the shards of another dataset "
                                    f"({known.get('name')!r}); choose another --out")


def select(found: list[tuple[str, int]], config: IngestConfig) -> list[tuple[str, int]]:
    subjects = sorted({s for s, _ in found})
    runs = sorted({r for _, r in found})
    if config.subjects is not None:
        unknown = sorted(set(config.subjects) - set(subjects))
        if unknown:
            raise InputError(f"unknown subject id(s) {unknown}: the dataset has {subjects}")
    if config.runs is not None:
        unknown = sorted(set(config.runs) - set(runs))
        if unknown:
            raise InputError(f"unknown run(s) {unknown}: the dataset has runs {runs}")
    return [(s, r) for s, r in found
            if (config.subjects is None or s in config.subjects)
            and (config.runs is None or r in config.runs)]


def plan(config: IngestConfig) -> tuple[list[RunTask], dict, dict[str, str], list[str]]:
    """Tasks, dataset identity, participants' sexes and notes; raises before any work starts."""
    if config.from_cache:
        root = config.out / cache.CACHE_NAME
        attrs = cache.root_attrs(root)
        chosen = select(cache.list_runs(root), config)
        if not chosen:
            raise InputError(f"{root}: no cached runs match the selection")
        return [RunTask(s, r, None) for s, r in chosen], attrs["dataset"], attrs["sexes"], []
    if config.bids_root is None:
        raise InputError("--bids-root is required (or --from-cache)")
    found, notes = find_runs(config.bids_root, config.preprocessed)
    by_key = {(f.subject, f.run): f for f in found}
    chosen = select(sorted(by_key), config)
    dataset = dataset_fingerprint(config.bids_root)
    sexes = participant_sexes(config.bids_root)
    return [RunTask(s, r, by_key[(s, r)]) for s, r in chosen], dataset, sexes, notes


def resident_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its high-water mark (``VmHWM``), MB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def reset_peak_memory() -> None:
    """Restart the high-water mark at the current RSS (Linux; elsewhere a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def needs_survey(pairing: PairingConfig) -> bool:
    """Whether pairing waits for a choice made over the training runs (a slice, or the mask)."""
    return (pairing.target == "slice" and pairing.slice is None) or (
        pairing.target == "volume" and pairing.mask is None)


def survey(cached: cache.CachedRun, pairing: PairingConfig) -> dict:
    """What the driver's choice needs of one run: its slice-correlation profile (slice targets), or
    its mean normalised volume and grid (volume targets: the training mask)."""
    if pairing.target == "slice":
        return {"profile": slice_correlation(cached, pairing).tolist()}
    shape, affine = targets.grid_of(cached)
    return {"mean_volume": targets.mean_volume(cached), "grid": {"shape": list(shape),
                                                                 "affine": affine.tolist()}}


def ingest_run(task: RunTask, config: IngestConfig) -> dict:
    """One (subject, run): cache (reading FIF and NIfTI once) if needed, then pair; while the slice
    or the mask is not chosen yet (``needs_survey``), return what the driver needs to choose it over
    the training runs instead (``survey``). Never raises for bad input: returns ``{"ok": False,
    "error": ...}`` naming the file."""
    name = f"sub-{task.subject}_run-{task.run}"
    root = config.out / cache.CACHE_NAME
    decoded, decoded_mb = False, 0.0
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
        if task.files is not None and not cache.is_cached(root, task.files):
            story = fmri_story(task.files.bold_events)
            tr = repetition_time(task.files.bold_json)
            meg = preprocess_meg(task.files, story)
            lap("meg")
            fmri = preprocess_fmri(task.files, tr)
            lap("fmri")
            cache.write_run(root, task.files, meg, fmri, story)
            lap("cache")
            decoded_mb = (meg.decoded_bytes + fmri.volumes.nbytes) / 2**20
            del meg, fmri
            decoded = True
        cached = cache.read_run(root, task.subject, task.run)
        if needs_survey(config.pairing):
            return {"subject": task.subject, "run": task.run, "ok": True, "decoded": decoded,
                    **survey(cached, config.pairing), "decoded_mb": decoded_mb,
                    "peak_task_mb": resident_mb("VmHWM") - baseline_mb, "seconds": seconds}
        extract = targets.extractor(cached, config.pairing)
        pairs = pair_run(cached, config.pairing, extract)
        stored = pairs.fmri.astype(extract.layout.np_dtype)
        error = float(np.abs(stored.astype(np.float32) - pairs.fmri).max())
        folder = pairs_dir(config)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp-{os.getpid()}.npz"
        np.savez(tmp, meg=pairs.meg, fmri=stored, meta=json.dumps(pairs.meta),
                 correlation=pairs.slice_correlation, storage_error=error)
        os.replace(tmp, folder / f"{name}.npz")
        lap("pair")
    except (Meg2fmriError, OSError, ValueError) as err:
        return {"subject": task.subject, "run": task.run, "ok": False, "error": str(err)}
    except Exception as err:  # a bug must not stop the other runs either; say what it was
        return {"subject": task.subject, "run": task.run, "ok": False,
                "error": f"{name}: unexpected {type(err).__name__}: {err}"}
    return {"subject": task.subject, "run": task.run, "ok": True, "count": len(pairs.meta),
            "slice": pairs.slice, "decoded": decoded, "warnings": cached.attrs["warnings"] + pairs.warnings,
            "storage_error": error,
            "decoded_mb": decoded_mb, "peak_task_mb": resident_mb("VmHWM") - baseline_mb,
            "seconds": seconds}


def load_pairs(config: IngestConfig, subject: str, run: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    with np.load(pairs_dir(config) / f"sub-{subject}_run-{run}.npz") as npz:
        return npz["meg"], npz["fmri"], json.loads(str(npz["meta"]))


def done_runs(config: IngestConfig, tasks: list[RunTask]) -> set[tuple[str, int]]:
    """Runs whose pairs for this pairing already exist (and whose cache is still current)."""
    folder = pairs_dir(config)
    done = set()
    for task in tasks:
        if not (folder / f"sub-{task.subject}_run-{task.run}.npz").is_file():
            continue
        if task.files is None or cache.is_cached(config.out / cache.CACHE_NAME, task.files):
            done.add((task.subject, task.run))
    return done


def reset_work(config: IngestConfig) -> None:
    """Drop pairs of other pairing configurations (they are cheap to recompute from the cache)."""
    keep = pairs_dir(config)
    work = config.out / WORK
    if work.is_dir():
        for child in work.iterdir():
            if child != keep:
                shutil.rmtree(child, ignore_errors=True)
