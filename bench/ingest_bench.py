"""``bench ingest``: ingest with 1 worker vs all cores, against merely reading the same inputs.

On the ``bench`` preset (earlier versions' demo preset: 12 subjects x 3 runs at 106x106x72), written by
``synth`` into the work folder if no --bids-root is given.
Each configuration gets an untimed warm-up (Ray workers start, numba loads its cache), then the
timed repeats; inputs are page-cached by then, for every configuration alike. Ray's own start-up
is not timed. ``read_only`` is what any pipeline pays at least: ``mne.io.read_raw_fif(preload=True)``
and ``np.asarray(nibabel.load(...).dataobj)`` for the same runs, one after another on one core,
compared with ``ingest_1worker``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import mne
import nibabel as nib
import numpy as np

from meg2fmri.ingest.bids_io import find_runs
from meg2fmri.ingest.driver import run_ingest
from meg2fmri.ingest.pipeline import IngestConfig
from meg2fmri.ingest.synth.config import SynthConfig
from meg2fmri.ingest.synth.writer import TRUTH, write_dataset

from .report import row


def demo_dataset(work: Path) -> Path:
    root = work / "demo-bids"
    if not (root / TRUTH / "synth_config.json").is_file():
        write_dataset(SynthConfig.from_preset("bench", root), jobs=len(os.sched_getaffinity(0)))
    return root


def read_only(files: list) -> None:
    for f in files:
        raw = mne.io.read_raw_fif(f.meg, preload=True, verbose="error")
        data = np.asarray(nib.load(f.bold).dataobj)
        del raw, data


def timed_ingest(root: Path, work: Path, subjects: tuple[str, ...] | None, workers: int,
                 repeats: int) -> tuple[list[float], list[dict]]:
    import ray

    ray.init(address="local", num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    times, results = [], []
    try:
        for i in range(repeats + 1):  # the first is the warm-up
            out = work / f"ingest-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            report = run_ingest(IngestConfig(root, out, subjects=subjects, workers=workers), progress=False)
            elapsed = time.perf_counter() - start
            if report.failed:
                raise RuntimeError(f"bench ingest: runs failed: {report.failed}")
            if i:
                times.append(elapsed)
                results += report.results
    finally:
        ray.shutdown()
    return times, results


def run(bids_root: Path | None, work: Path, subjects: tuple[str, ...] | None, repeats: int = 3
        ) -> tuple[list[dict], list[str]]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    work.mkdir(parents=True, exist_ok=True)
    root = bids_root or demo_dataset(work)
    files = [f for f in find_runs(root)[0] if subjects is None or f.subject in subjects]
    input_mb = sum(p.stat().st_size for f in files for p in f.inputs()) / 1e6
    read_only(files)  # warm the page cache
    read_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read_only(files)
        read_times.append(time.perf_counter() - start)
    cores = len(os.sched_getaffinity(0))
    one_times, one_results = timed_ingest(root, work, subjects, 1, repeats)
    all_times, _ = timed_ingest(root, work, subjects, cores, repeats)
    n = len(files)
    decoded = [r for r in one_results if r.get("decoded")]
    peak_ratio = max(r["peak_task_mb"] / r["decoded_mb"] for r in decoded)
    peak_mb = max(r["peak_task_mb"] for r in decoded)
    rows = []
    for name, times in (("read_only", read_times), ("ingest_1worker", one_times), ("ingest_all", all_times)):
        median = statistics.median(times)
        rows.append(row(name, median, n / median, "runs/s", mb_per_s=input_mb / median, runs=n,
                        workers=cores if name == "ingest_all" else 1, times_s=times))
    rows[1]["peak_task_mb"] = peak_mb
    rows[1]["peak_vs_decoded"] = peak_ratio
    stages = {k: statistics.mean(r["seconds"][k] for r in decoded) for k in decoded[0]["seconds"]}
    rows[1]["stage_s_per_run"] = {k: round(v, 3) for k, v in stages.items()}
    speedup = rows[1]["median_s"] / rows[2]["median_s"]
    overhead = rows[1]["median_s"] / rows[0]["median_s"]
    notes = [f"{n} runs, {input_mb:.0f} MB of FIF + NIfTI from {root}",
             f"all {cores} cores vs 1 worker: {speedup:.2f}x (target >= 1.6x on 2 cores)",
             f"ingest (1 worker) / read-only: {overhead:.2f}x (target <= 1.3x)",
             f"peak memory per task: {peak_mb:.0f} MB = {peak_ratio:.2f}x the run's decoded size "
             "(target <= 1.5x)",
             "1-worker seconds per run by stage (mean): "
             + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
             + f"; read-only {rows[0]['median_s'] / n:.3f}"]
    return rows, notes
