"""``bench ingest``: ingest with 1 worker and with all cores, against the fastest decode of the same
inputs, from local files and (``--source s3``) from an S3 server on loopback, in one run.

On the ``bench`` preset (12 subjects x 3 runs at 106x106x72), written by ``synth`` into the work folder
if no --bids-root is given. Each configuration gets an untimed warm-up (Ray workers start, numba loads
its cache), then the timed repeats; local inputs are page-cached by then, for every configuration
alike. Ray's own start-up is not timed.

- ``decode_floor``: what any pipeline pays at least to decode the inputs: ``mne.io.read_raw_fif``
  (``preload=True``) of each FIF and an ISA-L gunzip of each NIfTI's bytes, one run after another
  on one core (``decode_floor_s3``: the same after one GET of each object).
- ``write_floor``: what any pipeline pays at least to write what ingest writes: a plain buffered write
  of the same bytes (the Zarr cache, the shards, the index, read back from the 1-worker ingest's
  output) into as many files. ``ingest_1worker`` is compared with decode + write (target <= 1.2x)
  and, beside it, with the decode alone. ``write_floor_committed``: the same bytes landed as ingest
  lands them (temporary name and rename; fsync for the shards and the index, as the commit rule does).
- ``long_run``: one run at a real story length (``--long-seconds``, 600 s), 1 worker, local: its
  seconds, input MB/s and peak task memory project ds004078's 720 runs (notes).
- ``float_bold``: the float32 (MNI-shaped, 97x115x97) BOLD path's peak memory over its decoded
  size, in a fresh process (target <= 1.5x).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mne
import numpy as np
from isal import igzip

from meg2fmri.ingest.bids_io import find_runs
from meg2fmri.ingest.config import IngestConfig
from meg2fmri.ingest.driver import run_ingest
from meg2fmri.shards.commit import Location

from .fixtures import demo_dataset, local_ray, moto_process, upload_tree
from .report import row

DS004078_RUNS = 720
DS004078_MEAN_STORY_S = 303.5  # mean audio_dur_s of the 60 stories (reference ds004078-runs.tsv)


def decode_floor(files: list) -> None:
    """Read every FIF with MNE and gunzip every NIfTI with ISA-L (bytes fetched whole first; a FIF on
    S3 through a temporary file, the faster way measured)."""
    for f in files:
        if f.source.remote:
            fif_from_s3([f], "tempfile")
        else:
            mne.io.read_raw_fif(f.source.path(f.meg), preload=True, verbose="error")
        igzip.decompress(f.source.read_bytes(f.bold))


def output_files(out: Path) -> dict[str, bytes]:
    """Every file an ingest wrote (Zarr cache, shards, index), by relative path, read into memory."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def write_floor(files: dict[str, bytes], scratch: Path, committed: bool = False) -> None:
    """A plain buffered write of the same output bytes, file by file (no fsync, no rename, no
    compression: what writing the cache and shards costs at least once the bytes exist).
    ``committed``: each file the way ingest lands it: under a temporary name, then renamed (zarr's
    local store), and fsynced first where the commit rule does it (shards, index: everything outside
    ``cache.zarr/``); what any writer with the same guarantees pays at least."""
    shutil.rmtree(scratch, ignore_errors=True)
    for rel, data in files.items():
        path = scratch / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp") if committed else path
        with open(tmp, "wb") as f:
            f.write(data)
            if committed and not rel.startswith("cache.zarr/"):
                f.flush()
                os.fsync(f.fileno())
        if committed:
            os.replace(tmp, path)


def fif_from_s3(files: list, how: str) -> None:
    """Every FIF from S3 decoded by MNE, read whole into memory (``memory``) or downloaded to a
    task-local temporary file first (``tempfile``: what ingest does, being the faster here)."""
    import tempfile

    for f in files:
        source = f.source
        if how == "memory":
            raw = mne.io.read_raw_fif(io.BytesIO(source.read_bytes(f.meg)), preload=True, verbose="error")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "run_meg.fif")
                source.fs.get_file(source.path(f.meg), path)
                raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
        del raw


def median_of(fn, repeats: int) -> list[float]:
    """The median wall time of ``repeats`` calls and the times."""
    fn()  # warm-up (page cache, imports)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timed_ingest(root: str, out_of, subjects: tuple[str, ...] | None, workers: int, repeats: int,
                 storage_options: dict | None = None, **extra) -> tuple[list[float], list[dict]]:
    """Seconds of ``repeats`` ingests (after a warm-up) with ``workers`` CPUs; the last results."""
    times, results = [], []
    with local_ray(workers):
        for i in range(repeats + 1):  # the first is the warm-up
            out = out_of(i)
            Location(out, storage_options).remove("")
            start = time.perf_counter()
            # the split does not change the work: nothing held out, so that any subset of subjects runs
            extra = {"held_out": (), "held_out_stories": (), **extra}
            report = run_ingest(IngestConfig(bids_root=root, out=out, subjects=subjects, workers=workers,
                                             storage_options=storage_options or {}, anon=False, **extra),
                                progress=False)
            elapsed = time.perf_counter() - start
            if report.failed:
                raise RuntimeError(f"bench ingest: runs failed: {report.failed}")
            if i:
                times.append(elapsed)
                results = report.results
    return times, results


def long_run(work: Path, seconds: float) -> tuple[dict, list[dict]]:
    """One subject, one run of ``seconds`` of story on the bench grid: decode floor and 1-worker ingest."""
    from meg2fmri.ingest.synth.config import SynthConfig
    from meg2fmri.ingest.synth.writer import write_dataset

    root = work / f"long-{seconds:g}s-bids"
    if not (root / "participants.tsv").is_file():
        write_dataset(SynthConfig.from_preset("bench", root, subjects=("01",), runs=(1,),
                                              story_duration=seconds), jobs=1)
    files = find_runs(Location(root))[0]
    floor = median_of(lambda: decode_floor(files), 1)
    times, results = timed_ingest(str(root), lambda i: str(work / "long-ingest"), None, 1, 1)
    mb = sum(f.input_bytes() for f in files) / 1e6
    return {"floor_s": floor[0], "ingest_s": times[0], "input_mb": mb,
            "peak_task_mb": results[0].peak_task_mb, "decoded_mb": results[0].decoded_mb}, files


FLOAT_BOLD = """
import sys, numpy as np, nibabel as nib
from meg2fmri.ingest.meter import resident_mb, reset_peak_memory
from meg2fmri.ingest.bids_io import RunFiles
from meg2fmri.ingest.preprocess import preprocess_fmri
from meg2fmri.shards.commit import Location
from meg2fmri.shards.format import RunId
folder = sys.argv[1]
files = RunFiles(Location(folder), RunId("01", 1), "x", "x", "bold.nii.gz", "bold.json", "x")
import time
reset_peak_memory(); base = resident_mb(); start = time.perf_counter()
run = preprocess_fmri(files, 0.71)
print(resident_mb("VmHWM") - base, run.volumes.nbytes / 2**20, time.perf_counter() - start)
"""


def float_bold_peak(work: Path, volumes: int) -> tuple[float, float, float]:
    """(peak MB above the start, decoded MB, seconds) of ``preprocess_fmri`` on a float32 MNI-shaped
    run (read, gunzip, checks, slice means)."""
    import nibabel as nib

    folder = work / f"float-bold-{volumes}"
    if not (folder / "bold.nii.gz").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        data = (1000 + rng.standard_normal((97, 115, 97, volumes), dtype=np.float32) * 10).astype(np.float32)
        img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
        img.header.set_zooms((2.0, 2.0, 2.0, 0.71))
        nib.save(img, folder / "bold.nii.gz")
        (folder / "bold.json").write_text(json.dumps({"RepetitionTime": 0.71}))
    out = subprocess.run([sys.executable, "-c", FLOAT_BOLD, str(folder)], capture_output=True, text=True,
                         check=True)
    peak, decoded, seconds = map(float, out.stdout.split())
    return peak, decoded, seconds


def local_timings(root: Path, work: Path, files: list, subjects: tuple[str, ...] | None, cores: int,
                  repeats: int) -> tuple[dict[str, list[float]], list, dict[str, bytes]]:
    """Seconds of the decode floor, 1-worker ingest, the write floor and all-core ingest from local
    files; the 1-worker ingest's run results and the bytes it wrote."""
    timings = {"decode_floor": median_of(lambda: decode_floor(files), repeats)}
    timings["ingest_1worker"], results = timed_ingest(str(root), lambda i: str(work / "ingest-1"), subjects,
                                                      1, repeats)
    written = output_files(work / "ingest-1")
    timings["write_floor"] = median_of(lambda: write_floor(written, work / "write-floor"), repeats)
    timings["write_floor_committed"] = median_of(
        lambda: write_floor(written, work / "write-floor", committed=True), repeats)
    shutil.rmtree(work / "write-floor", ignore_errors=True)
    timings["ingest_all"], _ = timed_ingest(str(root), lambda i: str(work / f"ingest-{cores}"), subjects,
                                            cores, repeats)
    return timings, results, written


def s3_timings(root: Path, work: Path, subjects: tuple[str, ...] | None, repeats: int
               ) -> dict[str, list[float]]:
    """The same from a moto S3 server on loopback: the decode floor after one GET of each object, a FIF
    read into memory or through a temporary file, 1-worker ingest to local files and to S3."""
    server, endpoint = moto_process()
    try:
        options = {"endpoint_url": endpoint}
        url = upload_tree(endpoint, Path(root), "bench-bids", "bench")
        s3_files = [f for f in find_runs(Location(url, options))[0]
                    if subjects is None or f.subject in subjects]
        timings = {"decode_floor_s3": median_of(lambda: decode_floor(s3_files), repeats),
                   "fif_s3_memory": median_of(lambda: fif_from_s3(s3_files, "memory"), repeats),
                   "fif_s3_tempfile": median_of(lambda: fif_from_s3(s3_files, "tempfile"), repeats)}
        timings["ingest_1worker_s3"], _ = timed_ingest(url, lambda i: str(work / "ingest-s3"), subjects, 1,
                                                       repeats, options)
        Location("s3://bench-out", options).fs.mkdir("bench-out")
        timings["ingest_1worker_s3_to_s3"], _ = timed_ingest(
            url, lambda i: f"s3://bench-out/run-{i}", subjects, 1, repeats, options)
        return timings
    finally:
        server.terminate()
        server.wait()


def ingest_notes(by: dict[str, dict], results: list, files: list, written: dict[str, bytes], cores: int,
                 root: Path, input_mb: float) -> list[str]:
    """Adds the 1-worker ingest's memory and stage figures to its row; the ratios as notes."""
    one = by["ingest_1worker"]
    decoded = [r for r in results if r.decoded]
    sizes = {(f.subject, f.run): f.input_bytes() for f in files}
    peak_ratio = max(r.peak_task_mb / r.decoded_mb for r in decoded)
    input_ratio = max(r.peak_task_mb * 2**20 / sizes[(r.subject, r.run)] for r in decoded)
    stages = {k: statistics.mean(r.seconds[k] for r in decoded) for k in decoded[0].seconds}
    one.update(peak_task_mb=max(r.peak_task_mb for r in decoded), peak_vs_decoded=peak_ratio,
               peak_vs_input=input_ratio, stage_s_per_run={k: round(v, 3) for k, v in stages.items()})
    by["write_floor"].update(output_mb=sum(len(b) for b in written.values()) / 1e6, output_files=len(written))
    floor = by["decode_floor"]["median_s"] + by["write_floor"]["median_s"]
    committed = by["write_floor_committed"]["median_s"]
    return [f"{len(files)} runs, {input_mb:.0f} MB of FIF + NIfTI from {root}",
            f"all {cores} cores vs 1 worker: {speedup(by):.2f}x",
            f"ingest (1 worker) / (decode floor + write floor): {one['median_s'] / floor:.2f}x "
            f"(target <= 1.2x); the write floor is a plain buffered write of the same "
            f"{by['write_floor']['output_mb']:.0f} MB in {len(written)} files "
            f"({by['write_floor']['median_s']:.2f} s; ingest also fsyncs each file it commits)",
            f"ingest (1 worker) / (decode floor + write floor as ingest commits, renamed and the shards "
            f"and index fsynced): {one['median_s'] / (by['decode_floor']['median_s'] + committed):.2f}x "
            f"(that write floor {committed:.2f} s)",
            f"ingest (1 worker) / decode floor alone (MNE read + ISA-L gunzip): "
            f"{one['median_s'] / by['decode_floor']['median_s']:.2f}x",
            f"peak memory per task: {one['peak_task_mb']:.0f} MB = {peak_ratio:.2f}x the "
            f"run's decoded size, {input_ratio:.2f}x its input files",
            "1-worker seconds per run by stage (mean): "
            + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())]


def speedup(by: dict[str, dict]) -> float:
    """All cores against 1 worker."""
    return by["ingest_1worker"]["median_s"] / by["ingest_all"]["median_s"]


def s3_notes(by: dict[str, dict]) -> list[str]:
    """Each S3 configuration against its local one."""
    notes = []
    for name in ("decode_floor_s3", "ingest_1worker_s3", "ingest_1worker_s3_to_s3"):
        local = "decode_floor" if name.startswith("decode") else "ingest_1worker"
        notes.append(f"{name} / {local}: {by[name]['median_s'] / by[local]['median_s']:.2f}x "
                     f"({by[name]['mb_per_s']:.0f} vs {by[local]['mb_per_s']:.0f} MB/s)")
    notes.append(f"FIF from S3, read into memory / via a temporary file: "
                 f"{by['fif_s3_memory']['median_s'] / by['fif_s3_tempfile']['median_s']:.2f}x the time")
    notes.append(f"ingest_1worker_s3 / decode_floor_s3: "
                 f"{by['ingest_1worker_s3']['median_s'] / by['decode_floor_s3']['median_s']:.2f}x")
    return notes


def long_run_result(work: Path, seconds: float, efficiency: float) -> tuple[dict, list[str]]:
    """The long story's row, and its projection onto ds004078's 720 runs."""
    long, _ = long_run(work, seconds)
    per_story_s = long["ingest_s"] / seconds
    total_s = DS004078_RUNS * DS004078_MEAN_STORY_S * per_story_s
    memory_gb = (long["peak_task_mb"] + 300) / 1024
    notes = [f"long run ({seconds:g} s story, {long['input_mb']:.0f} MB): ingest "
             f"{long['ingest_s']:.1f} s vs decode floor {long['floor_s']:.1f} s "
             f"({long['ingest_s'] / long['floor_s']:.2f}x), peak task memory {long['peak_task_mb']:.0f} MB",
             f"projection, ds004078 (720 runs, mean story {DS004078_MEAN_STORY_S} s; ingest time "
             f"proportional to story length; {efficiency:.0%} parallel efficiency as measured here): "
             f"1 worker {total_s / 3600:.1f} h; one 16-core node {total_s / (16 * efficiency) / 3600:.1f} h "
             f"with {16 * memory_gb:.0f} GB for 16 tasks; N nodes from S3: that / N while each node's "
             f"S3 bandwidth exceeds {16 * long['input_mb'] / long['ingest_s']:.0f} MB/s"]
    return row("long_run_1worker", long["ingest_s"], long["input_mb"] / long["ingest_s"], "MB/s",
               story_s=seconds, **long), notes


def run(bids_root: Path | None, work: Path, subjects: tuple[str, ...] | None, repeats: int = 3,
        source: str = "local", long_seconds: float = 600.0, float_volumes: int = 150
        ) -> tuple[list[dict], list[str]]:
    """``bench ingest``: ingest against its decode floor, 1 worker and all cores, local and S3."""
    work.mkdir(parents=True, exist_ok=True)
    root = bids_root or demo_dataset(work)
    files = [f for f in find_runs(Location(root))[0] if subjects is None or f.subject in subjects]
    input_mb = sum(f.input_bytes() for f in files) / 1e6
    cores = len(os.sched_getaffinity(0))
    timings, results, written = local_timings(root, work, files, subjects, cores, repeats)
    if source == "s3":
        timings |= s3_timings(root, work, subjects, repeats)
    rows = []
    for name, times in timings.items():
        median = statistics.median(times)
        rows.append(row(name, median, len(files) / median, "runs/s", mb_per_s=input_mb / median,
                        runs=len(files), workers=cores if name == "ingest_all" else 1, times_s=times))
    by = {r["name"]: r for r in rows}
    notes = ingest_notes(by, results, files, written, cores, root, input_mb)
    if source == "s3":
        notes += s3_notes(by)
    if long_seconds:
        long_row, long_notes = long_run_result(work, long_seconds, min(1.0, speedup(by) / cores))
        rows.append(long_row)
        notes += long_notes
    if float_volumes > 0:
        peak, decoded_mb, seconds = float_bold_peak(work, float_volumes)
        rows.append(row("float_bold", seconds, decoded_mb / seconds, "MB/s", decoded_mb=decoded_mb,
                        peak_mb=peak, peak_vs_decoded=peak / decoded_mb))
        notes.append(f"float32 MNI-shaped BOLD ({float_volumes} volumes, {decoded_mb:.0f} MB decoded): peak "
                     f"{peak:.0f} MB = {peak / decoded_mb:.2f}x (target <= 1.5x)")
    shutil.rmtree(work / "long-ingest", ignore_errors=True)
    return rows, notes
