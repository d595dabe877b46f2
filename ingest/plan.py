"""Planning an ingest before any work: the output is ours, the runs exist, each task's memory."""

from __future__ import annotations

import json

from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError, OutputExistsError
from meg2fmri.shards.format import MASK_NAME, RunId
from meg2fmri.shards.index import INDEX_NAME

from . import cache
from .bids_io import ChannelSet, dataset_channels, dataset_fingerprint, find_runs, participant_sexes
from .config import IngestConfig, RunTask
from .fence import WORK
from .meter import task_memory
from .preprocess import bold_shape, fif_channels

SHARD_DIR = "shards"
OUR_NAMES = {cache.CACHE_NAME, SHARD_DIR, INDEX_NAME, WORK, MASK_NAME}


def check_out(out: Location, dataset: dict, options: dict, overwrite: bool) -> bool:
    """Refuse an --out that holds something other than our own outputs, or (unless ``overwrite``) the
    shards of another dataset or of other options, naming the options that differ. Return whether
    the cache there must be dropped (``overwrite`` of another dataset's output)."""
    if not out.remote and out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; choose a folder")
    names = set(out.names())
    foreign = sorted(n for n in names - OUR_NAMES if not n.startswith(f".{INDEX_NAME}.tmp-"))
    if foreign:
        raise OutputExistsError(f"--out {out} holds files that ingest did not write ({foreign[:3]}); "
                                "choose an empty or ingest-only folder or prefix")
    if INDEX_NAME not in names:
        return False
    index = json.loads(out.read_text(INDEX_NAME))
    known = index.get("dataset", {})
    if known.get("fingerprint") != dataset["fingerprint"]:
        if overwrite:
            return True
        raise OutputExistsError(f"--out {out} holds the shards of another dataset "
                                f"({known.get('name')!r}); choose another --out, or pass --overwrite to "
                                "replace them")
    differ = differing_options(index.get("options"), options)
    if differ and not overwrite:
        raise OutputExistsError(f"--out {out} holds shards made with other options ({'; '.join(differ)}); "
                                "pass --overwrite to replace them (readers of the old index keep reading "
                                "whole, old shards until the new index lands), or choose another --out")
    return False


def differing_options(before: dict | None, now: dict) -> list[str]:
    """``--option: was -> now`` for each option that differs (every option, if ``before`` is None: an
    index from before options were recorded). An option the older index does not name is not compared:
    options are added with defaults that keep the earlier behaviour."""
    if before is None:
        return ["the index predates recorded options"]
    flat_before, flat_now = flatten(before), flatten(now)
    return [f"{key}: {flat_before.get(key)!r} -> {flat_now[key]!r}"
            for key in sorted(flat_now) if key in flat_before and flat_before[key] != flat_now[key]]


def flatten(options: dict) -> dict:
    """``{"pairing": {"lag": 5}}`` -> ``{"--lag": 5}``: the names the user typed."""
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out |= flatten(value)
        else:
            out["--" + key.replace("_", "-")] = value
    return out


def check_inputs(config: IngestConfig, tasks: list[RunTask], out: Location) -> None:
    """What can be checked against the first run before any work: a fixed ``--slice`` against its
    header's slices (or its cached shape with --from-cache)."""
    p = config.pairing
    if p.target != "slice" or p.slice is None or not tasks:
        return
    first = tasks[0]
    if first.files is not None:
        slices, where = bold_shape(first.files)[2], first.files.url("bold")
    else:
        attrs = cache.committed_attrs(out, first.id) or {}
        if "fmri_affine" not in attrs:
            return
        slices = cache.read_run(out, first.subject, first.run).fmri.shape[1]
        where = out.url_of(cache.group_path(first.id))
    if not 0 <= p.slice < slices:
        raise InputError(f"--slice {p.slice}: {where} has {slices} axial slices (0-{slices - 1}); pass a "
                         "slice in that range, or leave --slice out to choose one from the training runs")


def canonical_channels(config: IngestConfig, tasks: list[RunTask], out: Location) -> ChannelSet:
    """The dataset's channels (``bids_io.ChannelSet``): from the runs' channels.tsv, else the first
    run's FIF header; with --from-cache, as the cache recorded them (else its runs' most common list)."""
    if config.from_cache:
        recorded = cache.root_attrs(out).get("channels")
        if recorded:
            return ChannelSet(tuple(recorded["names"]), tuple(recorded["bad"]), recorded["found_from"])
        lists: dict[tuple[str, ...], int] = {}
        for attrs in cache.run_groups(out, [t.id for t in tasks]).values():
            if attrs is not None:
                key = tuple(attrs["ch_names"])
                lists[key] = lists.get(key, 0) + 1
        names = max(lists, key=lists.get)
        return ChannelSet(names, (), f"the cached runs' most common channel list ({lists[names]} runs)")
    found = dataset_channels(config.source(), [t.files for t in tasks])
    if found is not None:
        return found
    first = tasks[0]
    return ChannelSet(tuple(fif_channels(first.files)), (), f"the FIF header of {first.id} (no channels.tsv)")


def select(found: list[tuple[str, int]], config: IngestConfig) -> list[tuple[str, int]]:
    """The runs of ``found`` that ``--subjects`` and ``--runs`` ask for, or an error naming what is
    missing."""
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
    out = config.output()
    if config.from_cache:
        attrs = cache.root_attrs(out)
        chosen = select(cache.list_runs(out), config)
        if not chosen:
            raise InputError(f"{out.url_of(cache.CACHE_NAME)}: no cached runs match the selection")
        return [RunTask(RunId(s, r), None) for s, r in chosen], attrs["dataset"], attrs["sexes"], []
    source = config.source()
    found, notes = find_runs(source, config.preprocessed)
    by_key = {(f.subject, f.run): f for f in found}
    chosen = select(sorted(by_key), config)
    dataset = dataset_fingerprint(source)
    sexes = participant_sexes(source)
    tasks = [RunTask(RunId(s, r), by_key[(s, r)], task_memory(by_key[(s, r)].input_bytes()))
             for s, r in chosen]
    return tasks, dataset, sexes, notes
