"""Write a whole synthetic dataset atomically: a hidden temporary folder, renamed when complete.

Every file is a pure function of (config, subject, run), computed in its own task with its own
random stream, so the bytes do not depend on ``jobs`` or on the order in which tasks finish.
"""

from __future__ import annotations

import functools
import os
import shutil
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from meg2fmri.shards.commit import Location, replace_dir
from meg2fmri.shards.errors import InputError, OutputExistsError
from meg2fmri.shards.format import RunId

from . import bids, fmri, meg
from .config import DEFECT_RUNS, MEG_SFREQ, RunPlan, SynthConfig, estimated_bytes
from .sources import DRIVE_SFREQ, bold_drive, canonical_hrf, story_sources
from .truth import CONFIG_NAME, TRUTH, runs_file, story_file, subject_file  # noqa: F401 - re-exported


def subject_rng(seed: int, subject: str) -> np.random.Generator:
    """The random generator of one subject (its anatomy, mixing, maps)."""
    return np.random.default_rng([seed, 2, int(subject)])


def run_rng(seed: int, subject: str, run: int, modality: int) -> np.random.Generator:
    """The random generator of one run's noise."""
    return np.random.default_rng([seed, 3, int(subject), run, modality])


@dataclass(frozen=True)
class SubjectModel:
    """One subject's ground truth: MEG mixing and background patterns, anatomy, source maps, HRF."""

    mixing: np.ndarray  # (306, len(coupling.meg_rows())), T and T/m: shared then MEG-only sources
    background: np.ndarray  # (306, n_background), unit-RMS patterns
    anatomy: fmri.Anatomy
    maps: np.ndarray  # (n_bold, *shape): shared then hidden sources
    hrf_peak: float  # s


@functools.lru_cache(maxsize=2)
def subject_model(config: SynthConfig, subject: str) -> SubjectModel:
    """A subject's generative model: anatomy, MEG mixing, BOLD maps, HRF peak."""
    c = config.coupling
    group = np.random.default_rng([config.seed, 0])
    sensors = meg.sensor_array()
    group_mixing = meg.dipolar_fields(group, sensors, c.n_sources)
    blobs = fmri.group_blobs(group, c.n_sources)
    # MEG-only fields and hidden sources' blobs from their own stream: with none of either, the
    # shared sources' truth is what it was before these options existed
    extra = np.random.default_rng([config.seed, 6])
    group_mixing = np.hstack([group_mixing, meg.dipolar_fields(extra, sensors, c.meg_only_sources)])
    blobs = np.concatenate([blobs, fmri.group_blobs(extra, c.hidden_sources)])
    rng = subject_rng(config.seed, subject)
    mixing = meg.subject_mixing(group_mixing, rng, sensors, c)
    background = meg.dipolar_fields(rng, sensors, c.n_background)
    anatomy = fmri.subject_anatomy(rng, config.volume_shape)
    if c.maps == "networks":  # the group's nodes from their own stream (the blobs' stays as it was)
        nodes = fmri.group_network_nodes(np.random.default_rng([config.seed, 9]), c)
        maps = fmri.subject_network_maps(rng, nodes, anatomy, c)
    else:
        maps = fmri.subject_maps(rng, blobs, anatomy, c)
    hrf_peak = float(np.random.default_rng([config.seed, 7, int(subject)]).uniform(*c.hrf_peak))
    return SubjectModel(mixing, background, anatomy, maps, hrf_peak)


@functools.lru_cache(maxsize=2)
def story_model(config: SynthConfig, story: int, duration: float):
    """A story's sources (every subject who hears the story shares them)."""
    return story_sources(config.seed, story, duration, config.coupling)


def write_run(config: SynthConfig, plan: RunPlan, root: Path) -> dict:
    """Write the MEG and the fMRI recording of one (subject, run); return its timing facts."""
    model = subject_model(config, plan.subject)
    sources = story_model(config, plan.run, plan.story_duration)
    rng = run_rng(config.seed, plan.subject, plan.run, 0)
    timing = meg.meg_timing(rng, plan, config.meg_tail, config.meg_sfreq)
    raw = meg.synthesize_meg(plan, timing, sources, model.mixing, model.background,
                             config.coupling, rng, meg.sensor_array(), config.meg_sfreq)
    stem = bids.run_stem(plan.subject, plan.run)
    meg.write_fif(raw, bids.meg_dir(root, plan.subject) / f"{stem}_meg.fif")
    del raw
    bids.write_meg_sidecars(root, plan, timing, config.coupling, config.meg_sfreq)
    drive = bold_drive(sources, config.coupling)
    bold = fmri.synthesize_bold(plan, drive, model.anatomy, model.maps, config.coupling,
                                run_rng(config.seed, plan.subject, plan.run, 1), model.hrf_peak,
                                run_rng(config.seed, plan.subject, plan.run, 2))
    fmri.write_nifti(bold, bids.func_dir(root, plan.subject) / f"{stem}_bold.nii.gz")
    bids.write_bold_sidecars(root, plan, config.volume_shape[2])
    return {"subject": plan.subject, "run": plan.run, "story_duration_s": plan.story_duration,
            "n_vols": plan.n_vols, "meg_first_samp": timing.first_samp,
            "meg_story_start_s": timing.story_start, "meg_beg_trigger_s": timing.beg_trigger,
            "meg_end_trigger_s": timing.end_trigger, "meg_n_times": timing.n_times,
            "defect": int(plan.defect)}


def write_subject_truth(config: SynthConfig, subject: str, root: Path) -> None:
    """A subject's ground-truth arrays (``truth.subject_file``)."""
    model = subject_model(config, subject)
    subject_file(root, subject, "x").parent.mkdir(parents=True, exist_ok=True)
    arrays = {"meg_mixing": model.mixing, "meg_background_patterns": model.background,
              "fmri_maps": model.maps, "fmri_baseline": model.anatomy.baseline,
              "fmri_grey_weight": model.anatomy.grey, "fmri_brain_mask": model.anatomy.brain,
              "fmri_hrf_peak_s": np.array(model.hrf_peak)}
    for name, array in arrays.items():
        np.save(subject_file(root, subject, name), array)


def write_story_files(config: SynthConfig, story: int, duration: float, root: Path) -> None:
    """The story's audio, and its latents at 100 Hz (bin means) and BOLD drive at ``DRIVE_SFREQ``
    (story time) as ground truth."""
    sources = story_model(config, story, duration)
    story_file(root, story, "x").parent.mkdir(parents=True, exist_ok=True)
    step = int(MEG_SFREQ // 100)
    n = sources.envelope.shape[1] // step * step
    for name, array in (("envelope", sources.envelope), ("slow", sources.slow)):
        binned = array[:, :n].reshape(array.shape[0], -1, step).mean(axis=2)
        np.save(story_file(root, story, f"{name}_100Hz"), binned.astype(np.float32))
    drive = bold_drive(sources, config.coupling).astype(np.float32)
    np.save(story_file(root, story, f"bold-drive_{DRIVE_SFREQ:g}Hz"), drive)
    if sources.acoustic is not None:
        binned = sources.acoustic[:n].reshape(-1, step).mean(axis=1)
        np.save(story_file(root, story, "acoustic_100Hz"), binned.astype(np.float32))
    bids.write_stimuli(root, story, sources.loudness()[None], config.seed)


def write_truth_description(config: SynthConfig, root: Path, runs: list[dict]) -> None:
    """The ground truth's ``dataset_description.json``, ``synth_config.json`` and ``runs.tsv``."""
    folder = root / TRUTH
    folder.mkdir(parents=True, exist_ok=True)
    bids.write_json(folder / "dataset_description.json", {
        "Name": "Ground truth of the meg2fmri synthetic dataset",
        "BIDSVersion": "1.6.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "meg2fmri synth", "Version": version("meg2fmri")}],
    })
    c = config.coupling
    sources = {"meg_and_bold": list(range(c.n_sources)), "bold_only": list(range(c.n_sources, c.n_bold)),
               "meg_only": list(range(c.n_bold, c.n_latent)),
               "auditory": list(range(c.auditory_sources)),
               "bold_networks": fmri.source_networks(c) if c.maps == "networks" else None}
    hrf_peaks = {f"sub-{s}": round(subject_model(config, s).hrf_peak, 4) for s in config.subjects}
    bids.write_json(folder / CONFIG_NAME, {"config": config.to_json(),
                                           "hrf_10Hz": canonical_hrf().round(8).tolist(),
                                           "sources": sources, "hrf_peak_s": hrf_peaks,
                                           "defect_runs": {RunId(s, r).name: v for (s, r), v
                                                           in DEFECT_RUNS.items()}})
    runs = sorted(runs, key=lambda row: (row["subject"], row["run"]))
    bids.write_tsv(runs_file(root), list(runs[0]), [list(row.values()) for row in runs])


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse a ``--out`` that is a file, or a non-empty folder without ``--overwrite``."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"--out {out} exists and is not empty; pass --overwrite to "
                                    "replace it, or choose another --out")
        if not (out / TRUTH / CONFIG_NAME).is_file():
            raise OutputExistsError(f"--out {out} is not a synth dataset (no {TRUTH / CONFIG_NAME});"
                                    " refusing to delete it even with --overwrite")


def check_disk(config: SynthConfig) -> None:
    """Refuse to start when the dataset would not fit on the disk."""
    parent = config.out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    need, free = estimated_bytes(config), shutil.disk_usage(parent).free
    if need > free:
        raise InputError(f"synth needs about {need / 1e9:.1f} GB in {parent} but only "
                         f"{free / 1e9:.1f} GB are free: choose a smaller --preset/--runs or another --out")


def remove_stale_partials(out: Path) -> None:
    """Delete temporary folders left by a synth that was killed (its process is gone)."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = int(stale.name.rsplit("-", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)


def write_dataset(config: SynthConfig, overwrite: bool = False, jobs: int = 1,
                  progress: bool = True) -> Path:
    """Write the dataset described by ``config`` to ``config.out`` and return that path.

    Nothing appears at ``config.out`` until every file is complete; on any error or Ctrl-C the
    temporary folder is removed and ``config.out`` is left as it was.
    """
    out = config.out
    check_output(out, overwrite)
    Location(out.parent).check_writable("--out")
    check_disk(config)
    remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    plans = config.plan()
    try:
        tmp.mkdir()
        bids.write_top_level(tmp, config)
        for subject in config.subjects:
            bids.write_subject_sidecars(tmp, subject)
        stories = sorted({(p.run, p.story_duration) for p in plans})
        runs = run_tasks(config, plans, stories, tmp, jobs, progress)
        write_truth_description(config, tmp, runs)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_tasks(config: SynthConfig, plans: list[RunPlan], stories: list[tuple[int, float]],
              root: Path, jobs: int, progress: bool) -> list[dict]:
    """Write every run, ``jobs`` processes at a time, with a progress bar."""
    bar = tqdm(total=len(plans), desc="synth", unit="run", disable=not progress)
    if jobs <= 1:
        runs = []
        for plan in plans:
            runs.append(write_run(config, plan, root))
            bar.update()
        for subject in config.subjects:
            write_subject_truth(config, subject, root)
        for story, duration in stories:
            write_story_files(config, story, duration, root)
        bar.close()
        return runs
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures: list[Future] = [pool.submit(write_run, config, plan, root) for plan in plans]
        extra = [pool.submit(write_subject_truth, config, s, root) for s in config.subjects]
        extra += [pool.submit(write_story_files, config, s, d, root) for s, d in stories]
        try:
            for future in futures:
                future.add_done_callback(lambda _: bar.update())
            runs = [future.result() for future in futures]
            for future in extra:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
    return runs

