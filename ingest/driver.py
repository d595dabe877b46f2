"""Run an ingest end to end: checks before any work, Ray tasks with a progress bar, shards, report."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import MASK_NAME, RunId
from meg2fmri.shards.index import ShardIndex
from meg2fmri.shards.split import SPLITS, held_out_stories, held_out_subjects, split_of

from . import cache, targets
from .config import IngestConfig, RunTask
from .fence import WORK, begin_attempt
from .outcome import RunOutcome
from .pairing import consensus_slice, feature_names
from .pairs import load_pairs, paired_runs, reset_work
from .plan import canonical_channels, check_inputs, check_out, plan
from .shard_writer import write_shards
from .task import ingest_run, needs_survey, slice_profile


@dataclass
class IngestReport:
    """What an ingest did: every run's outcome, the split, the index written (None if none), notes,
    seconds."""
    results: list[RunOutcome]  # one per (subject, run), sorted
    held_out: tuple[str, ...]
    held_out_stories: tuple[int, ...]
    index: ShardIndex | None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # plan, tasks, shards

    @property
    def failed(self) -> list[RunOutcome]:
        """Runs that could not be ingested (a duplicate skipped on purpose is not a failure)."""
        return [r for r in self.results if r.failed]


def result_of_done(out: Location, config: IngestConfig, run: RunId, attrs: dict) -> RunOutcome:
    """The outcome of a run finished by an earlier (possibly interrupted) ingest."""
    pairs = load_pairs(out, config.pairing, run)
    return RunOutcome(subject=run.subject, run=run.run, ok=True, count=len(pairs.meta),
                      slice=pairs.meta[0]["slice"], resumed=True, warnings=attrs["warnings"],
                      storage_error=pairs.storage_error, digests=attrs.get("digests", {}),
                      fmri_tr=attrs.get("fmri_tr"), slice_correlation=slice_profile(pairs.correlation))


def done_runs(out: Location, config: IngestConfig, tasks: list[RunTask]) -> dict[RunId, dict]:
    """Runs whose pairs for this pairing exist and whose cache group is committed and current
    (from the same input files): each with its cache attributes."""
    paired = paired_runs(out, config.pairing)
    groups = cache.run_groups(out, [t.id for t in tasks if t.id in paired])
    return {t.id: groups[t.id] for t in tasks if groups.get(t.id) is not None
            and (t.files is None or cache.is_cached(groups[t.id], t.files))}


def start_ray(config: IngestConfig):
    """Connect to ``--ray-address`` or start a local Ray on loopback, sized to ``workers``."""
    if not config.ray_address:
        # Ray turns token authentication on for a new local cluster and says so on stderr in every
        # ingest; asking for it by name keeps it on (a token in ~/.ray) without the message. Ray reads
        # the mode when it is imported, so this comes first.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return ray, False
    if config.ray_address:
        ray.init(address=config.ray_address, configure_logging=False, log_to_driver=False)
    else:
        cpus = config.workers or len(os.sched_getaffinity(0))
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False, log_to_driver=False)
    return ray, True


def ray_ingest_run(task: RunTask, config: IngestConfig) -> RunOutcome:
    """``ingest_run`` in a Ray worker, with numba's and blosc's threads limited to the CPUs Ray
    gave the task (otherwise every task would use every core and they would fight)."""
    import numba
    import numcodecs.blosc
    import ray

    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    numba.set_num_threads(min(cpus, numba.config.NUMBA_NUM_THREADS))
    numcodecs.blosc.set_nthreads(cpus)
    outcome = ingest_run(task, config)
    outcome.node = ray.get_runtime_context().get_node_id()
    return outcome


@contextmanager
def ray_session(config: IngestConfig):
    """A Ray session for the ingest: the one already running, or a local one shut down afterwards."""
    ray, started = start_ray(config)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def node_memory(ray) -> int:
    """The most memory (bytes) Ray can give one task on any node of the cluster."""
    return max((int(n["Resources"].get("memory", 0)) for n in ray.nodes() if n.get("Alive")), default=0)


def run_tasks(ray, tasks: list[RunTask], config: IngestConfig, progress: bool,
              desc: str = "ingest") -> list[RunOutcome]:
    """One Ray task per run, each asking for the memory it will use (``RunTask.memory``, capped at
    the largest node's), with a progress bar in runs and input MB/s."""
    remote = ray.remote(num_cpus=1, max_retries=0)(ray_ingest_run)
    largest = node_memory(ray)
    refs = {}
    for task in tasks:
        memory = min(task.memory, largest) if largest else task.memory
        options = {"memory": memory} if memory else {}
        refs[remote.options(**options).remote(task, config)] = task
    results = []
    total_mb = sum(t.files.input_bytes() for t in tasks if t.files is not None) / 2**20  # at most
    started, done_mb = time.perf_counter(), 0.0
    bar = tqdm(total=len(tasks), desc=desc, unit="run", disable=not progress)
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                task = refs[ref]
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayError as err:  # the worker died (e.g. out of memory)
                    last = [line for line in str(err).splitlines() if line.strip()][-1]
                    results.append(RunOutcome.failure(task.id, f"{task.id}: task died: {last}"))
                if task.files is not None and results[-1].decoded:
                    done_mb += task.files.input_bytes() / 2**20
                    rate = done_mb / max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix_str(f"{done_mb:.0f}/{total_mb:.0f} MB in, {rate:.1f} MB/s")
                bar.update()
    finally:
        bar.close()
    return results


def survey_runs(ray, tasks: list[RunTask], config: IngestConfig, train: set[tuple[str, int]],
                progress: bool) -> tuple[IngestConfig, list[RunOutcome], dict, dict]:
    """Cache every run and choose, from the *training* runs only, what pairing waits for: one slice
    (their slice-correlation profiles) or the brain mask (their mean volumes; written beside the
    index). Return the config with the choice, the failed runs, how it was chosen (for the index),
    and each cached run's first-pass result (whether it was decoded, its memory and stage times)."""
    results = run_tasks(ray, tasks, config, progress, desc="ingest (cache, survey)")
    failed = [r for r in results if not r.ok]
    first = {(r.subject, r.run): r for r in results if r.ok}
    training = [r for r in results if r.ok and (r.subject, r.run) in train]
    if not training:  # nothing can be paired: report every run (the failures say why)
        what = "--slice" if config.pairing.target == "slice" else "the mask"
        reason = f"not paired: no training run could be ingested to choose {what} from (fix those)"
        failed += [RunOutcome.failure(r.id, f"{r.id}: {reason}") for r in results if r.ok]
        return config, failed, {"chosen_from": reason}, first
    if config.pairing.target == "slice":
        chosen = consensus_slice([np.array(r.profile, dtype=float) for r in training])
        pairing = dataclasses.replace(config.pairing, slice=chosen)
        how = {"slice": chosen, "chosen_from": f"mean slice correlation over {len(training)} training runs"}
    else:
        pairing, how = write_mask(config, results, training)
    first = {key: r.without_survey() for key, r in first.items()}
    return dataclasses.replace(config, pairing=pairing), failed, how, first


def write_mask(config: IngestConfig, results: list[RunOutcome], training: list[RunOutcome]) -> tuple:
    """The training runs' brain mask as ``OUT/mask.nii.gz`` (every run must share one grid)."""
    grid = training[0].grid
    other = [r for r in results if r.ok and (r.grid["shape"] != grid["shape"] or not np.allclose(
        r.grid["affine"], grid["affine"], atol=1e-3))]
    if other:
        r = other[0]
        raise InputError(
            f"{r.id} is on a {'x'.join(map(str, r.grid['shape']))} grid, {training[0].id} on "
            f"{'x'.join(map(str, grid['shape']))} (or their affines differ): volume targets need one grid "
            "for every run. Raw-space grids differ in anatomy between subjects and visits; ingest the MNI "
            "derivatives with --preprocessed")
    mask = targets.training_mask([r.mean_volume for r in training], np.array(grid["affine"]))
    out = config.output()
    data = gzip.compress(mask.to_bytes(), mtime=0)
    voxels = int(np.asarray(mask.dataobj).sum())
    if voxels == 0:
        raise InputError(f"{out.url_of(MASK_NAME)}: the training runs' mask is empty; check the BOLD images")
    out.put(MASK_NAME, data)
    digest = hashlib.sha256(data).hexdigest()
    how = {"mask": MASK_NAME, "mask_sha256": digest, "voxels": voxels, "grid": grid,
           "chosen_from": f"nilearn compute_epi_mask of the mean of {len(training)} training runs' "
                          "mean normalised volumes"}
    return dataclasses.replace(config.pairing, mask=(MASK_NAME, digest)), how


def target_entry(config: IngestConfig, choice: dict, results: list[RunOutcome]) -> dict:
    """The index's ``target``: kind, shape and dtype, with what a reader needs to place the values,
    and the runs' repetition time ``tr`` (s) when they share one."""
    trs = {round(r.fmri_tr, 6) for r in results if r.ok and r.fmri_tr}
    entry = place_target(config, choice, results)
    return entry | {"tr": trs.pop()} if len(trs) == 1 else entry


def place_target(config: IngestConfig, choice: dict, results: list[RunOutcome]) -> dict:
    """The index's ``target`` entry without the TR: kind, shape, dtype and where the values sit."""
    p = config.pairing
    if p.target == "slice":
        entry = {"kind": "slice", "shape": [p.size, p.size], "dtype": "float32"}
        ok = [r for r in results if r.ok]
        try:  # where the slice sits (for `generate`'s NIfTI): the first run's grid
            shape, affine = targets.grid_of(cache.read_run(config.output(), ok[0].subject, ok[0].run))
            entry |= {"grid": list(shape), "affine": affine.tolist(), "slice": p.slice}
        except (IndexError, InputError):  # no run, or a cache from before affines were kept
            pass
        return entry
    if p.target == "volume":
        preprocessed = config.preprocessed
        return {"kind": "volume", "shape": [choice["voxels"]], "dtype": "float16", "mask": MASK_NAME,
                "mask_sha256": choice["mask_sha256"], "grid": choice["grid"]["shape"],
                "affine": choice["grid"]["affine"],
                "space": "MNI152NLin2009cAsym 2 mm (--preprocessed)" if preprocessed else
                "the runs' native grid (raw data: anatomy differs between subjects; prefer --preprocessed)",
                "order": "C order of the in-mask voxels of the NIfTI (i, j, k) array",
                "float16_max_abs_error": max((r.storage_error for r in results if r.ok), default=0.0)}
    labels = targets.check_atlas(Path(p.atlas))
    return {"kind": "parcels", "shape": [len(labels)], "dtype": "float32", "atlas": str(p.atlas),
            "atlas_sha256": targets.file_digest(Path(p.atlas)), "labels": labels,
            "value": "mean over each label's voxels (atlas resampled to each run's grid, nearest)"}


def find_duplicates(results: list[RunOutcome]) -> list[dict]:
    """Groups of runs whose decoded MEG (or BOLD) are identical: ``{"data", "runs", "sha256"}``, the
    runs sorted (on ds004078 the MEG files of sub-05 and sub-06, runs 58-60, are byte-identical)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in results:
        if r.ok:
            for what, digest in sorted(r.digests.items()):
                groups.setdefault((what, digest), []).append(str(r.id))
    return [{"data": what, "runs": sorted(runs), "sha256": digest}
            for (what, digest), runs in sorted(groups.items()) if len(runs) > 1]


def apply_duplicate_policy(config: IngestConfig, results: list[RunOutcome], notes: list[str]) -> list[dict]:
    """``--on-duplicate``: warn (a note; every run kept), skip (only the first run of each group is
    sharded; the others are reported as skipped) or raise (nothing is sharded)."""
    duplicates = find_duplicates(results)
    for group in duplicates:
        what = "MEG" if group["data"] == "meg" else "BOLD"
        text = f"identical decoded {what} in {', '.join(group['runs'])}"
        if config.on_duplicate == "raise":
            raise InputError(f"{text} (sha256 {group['sha256'][:12]}); check the source files, or pass "
                             "--on-duplicate warn (keep all) or skip (keep the first)")
        keep = " (the later runs are skipped)" if config.on_duplicate == "skip" else ""
        notes.append(f"{text}{keep}")
    if config.on_duplicate == "skip":
        skipped = {run for g in duplicates for run in g["runs"][1:]}
        for r in results:
            if r.ok and str(r.id) in skipped:
                r.ok, r.skipped, r.error = False, True, f"{r.id}: skipped, a duplicate (--on-duplicate skip)"
    return duplicates


def run_ingest(config: IngestConfig, progress: bool = True) -> IngestReport:
    """Ingest ``config``; every input problem that can be seen up front raises before work."""
    clock = time.perf_counter()
    out = config.output()
    out.check_writable()
    options = config.options()  # as asked for, before a slice, a mask or the channels are resolved
    if config.pairing.target == "parcels":
        targets.check_atlas(Path(config.pairing.atlas))  # an argument: checked before the output's state
    tasks, dataset, sexes, notes = plan(config)
    if check_out(out, dataset, options, config.overwrite):  # --overwrite of another dataset's output
        for rel in (cache.CACHE_NAME, WORK, MASK_NAME):
            out.remove(rel)
    check_inputs(config, tasks, out)
    subjects = sorted({t.subject for t in tasks})
    missing = [s for s in subjects if s not in sexes]
    if missing:
        raise InputError(f"participants.tsv has no row for sub-{missing[0]} (needed for the split)")
    held_out = held_out_subjects({s: sexes[s] for s in subjects}, config.held_out)
    all_stories = sorted({t.run for t in tasks})
    stories = held_out_stories(all_stories, config.held_out_stories)
    split = {t.id: split_of(t.subject, t.run, held_out, stories) for t in tasks}
    channels = canonical_channels(config, tasks, out)
    config = dataclasses.replace(config, attempt=uuid.uuid4().hex,
                                 pairing=dataclasses.replace(config.pairing, channels=channels.names))
    cache.open_root(out, dataset, None if config.from_cache else sexes,
                    None if config.from_cache else channels.to_json())
    begin_attempt(out, config.attempt)  # from here on, tasks of an earlier attempt write nothing
    cache.remove_partials(out)  # groups a killed ingest left uncommitted
    out.remove_temporaries()
    seconds = {"plan": time.perf_counter() - clock}
    clock = time.perf_counter()
    failed: list[RunOutcome] = []
    first: dict[tuple[str, int], RunOutcome] = {}
    slice_choice = ({"slice": config.pairing.slice, "chosen_from": "--slice"}
                    if config.pairing.target == "slice" else {})
    with ray_session(config) as ray:
        if needs_survey(config.pairing):
            config, failed, slice_choice, first = survey_runs(
                ray, tasks, config, {(k.subject, k.run) for k, v in split.items() if v == "train"}, progress)
            tasks = [t for t in tasks if t.id not in {r.id for r in failed}]
        if needs_survey(config.pairing):
            tasks = []
        reset_work(out, config.pairing)
        done = done_runs(out, config, tasks)
        results = failed + [result_of_done(out, config, run, attrs) for run, attrs in sorted(done.items())]
        todo = [t for t in tasks if t.id not in done]
        if todo:
            results += run_tasks(ray, todo, config, progress)
    seconds["tasks"] = time.perf_counter() - clock
    used = {r.node for r in [*results, *first.values()] if r.node}
    if used:
        notes.append(f"tasks ran on {len(used)} Ray node{'s' if len(used) > 1 else ''}")
    for r in results:  # a run decoded in the slice-choice pass: keep what that pass measured
        earlier = first.get((r.subject, r.run))
        if r.ok and earlier is not None and earlier.decoded:
            r.merge_first_pass(earlier)
    check_fenced(out, config, results)
    results.sort(key=lambda r: (r.subject, r.run))
    for r in results:
        r.split = split[r.id]
    duplicates = apply_duplicate_policy(config, results, notes)
    ok = [r.id for r in results if r.ok]
    index = None
    clock = time.perf_counter()
    if ok:
        fields = index_fields(config, options, dataset, channels, subjects, held_out, all_stories, stories,
                              slice_choice, results, duplicates)
        index = write_shards(out, config.pairing, config.shard_samples, ok, split, fields,
                             shard_tag(config, options, results))
        if config.pairing.target != "volume":  # an earlier index's (volume targets), now replaced
            out.remove(MASK_NAME)
    seconds["shards"] = time.perf_counter() - clock
    return IngestReport(results, held_out, stories, index, notes, seconds)


def index_fields(config: IngestConfig, options: dict, dataset: dict, channels, subjects: list[str],
                 held_out: tuple[str, ...], all_stories: list[int], stories: tuple[int, ...],
                 slice_choice: dict, results: list[RunOutcome], duplicates: list[dict]) -> dict:
    """Everything of the index but its shards: dataset, features, target, split, options, resolved
    configuration, the runs used and those that failed, duplicates."""
    names = feature_names(config.pairing, list(channels.names))
    choice = "slice_choice" if config.pairing.target == "slice" else "target_choice"
    return {
        "dataset": dataset,
        "features": {"kind": config.pairing.features, "width": len(names), "names": names,
                     "channels": channels.to_json()},
        "target": target_entry(config, slice_choice, results),
        "split": {"subjects": {"train": [s for s in subjects if s not in held_out],
                               "held_out": list(held_out)},
                  "stories": {"train": [s for s in all_stories if s not in stories],
                              "held_out": list(stories)}},
        "options": options,
        "config": config.to_json() | {choice: slice_choice},
        "runs": [r.index_entry() for r in results if r.ok],
        "failed": [r.failed_entry() for r in results if not r.ok],
        "duplicates": duplicates,
    }


def check_fenced(out: Location, config: IngestConfig, results: list[RunOutcome]) -> None:
    """Each run decoded by this attempt must still hold this attempt's commit: a straggler of an earlier
    attempt that slipped past its fence in the instant before this one began could have committed over
    it. Such a run is reported failed (run ingest again: it is decoded afresh), never used."""
    decoded = [r for r in results if r.ok and r.decoded]
    if not decoded:
        return
    groups = cache.run_groups(out, [r.id for r in decoded])
    for r in decoded:
        attrs = groups.get(r.id)
        if attrs is None or attrs.get("attempt", config.attempt) != config.attempt:
            r.ok, r.error = False, (f"{r.id}: its cache group was committed by an earlier, superseded "
                                    "ingest attempt while this one ran; run ingest again (the run is "
                                    "decoded afresh)")


def shard_tag(config: IngestConfig, options: dict, results: list[RunOutcome]) -> str:
    """A short content tag in every shard's name: the same options and decoded data give the same names
    (a resumed ingest rewrites nothing), anything else new ones, so a re-run (``--overwrite``) never
    writes over a shard that an older index lists."""
    digest = hashlib.sha256(json.dumps({
        "options": options, "pairing": config.pairing.to_json(),
        "runs": sorted((r.subject, r.run, sorted(r.digests.items())) for r in results if r.ok)},
        sort_keys=True).encode())
    return digest.hexdigest()[:10]


def summary_table(report: IngestReport) -> str:
    """The table ``ingest`` prints: one line per run (split, samples, slice, status), then the counts."""
    lines = [f"{'subject':<8}{'run':>4}  {'split':<13}{'samples':>8}{'slice':>6}  status"]
    for r in report.results:
        if r.ok:
            status = "ok (cached earlier)" if r.resumed else "ok"
            row = f"{r.subject:<8}{r.run:>4}  {r.split:<13}{r.count:>8}{r.slice:>6}"
            lines.append(f"{row}  {status}")
            lines += [f"{'':<41}warning: {w}" for w in r.warnings]
        else:
            row = f"{r.subject:<8}{r.run:>4}  {r.split:<13}{'-':>8}{'-':>6}"
            lines.append(f"{row}  FAILED: {r.error}")
    if report.index is not None:
        counts = ", ".join(f"{s} {report.index.count(s)}" for s in SPLITS)
        lines.append(f"shards: {len(report.index.shards)}, samples: {counts} (held-out subjects: "
                     f"{', '.join(report.held_out)}; held-out stories: "
                     f"{', '.join(map(str, report.held_out_stories)) or 'none'})")
    lines += [f"note: {n}" for n in report.notes]
    if report.failed:
        lines.append(f"{len(report.failed)} run(s) FAILED; fix them and run ingest again "
                     "(finished runs are not redone)")
    return "\n".join(lines)
