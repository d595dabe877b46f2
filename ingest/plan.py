"""Planning an ingest before any work: the output is ours, the runs exist, each task's memory."""

from __future__ import annotations

import json

from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError, OutputExistsError
from meg2fmri.shards.format import MASK_NAME, RunId
from meg2fmri.shards.index import INDEX_NAME

from . import cache
from .bids_io import dataset_fingerprint, find_runs, participant_sexes
from .config import IngestConfig, RunTask
from .meter import task_memory
from .pairs import WORK

SHARD_DIR = "shards"
OUR_NAMES = {cache.CACHE_NAME, SHARD_DIR, INDEX_NAME, WORK, MASK_NAME}


def check_out(out: Location, dataset: dict) -> None:
    """Refuse an --out that holds something other than our own outputs or another dataset's."""
    if not out.remote and out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; choose a folder")
    names = set(out.names())
    foreign = sorted(n for n in names - OUR_NAMES if not n.startswith(f".{INDEX_NAME}.tmp-"))
    if foreign:
        raise OutputExistsError(f"--out {out} holds files that ingest did not write ({foreign[:3]}); "
                                "choose an empty or ingest-only folder or prefix")
    if INDEX_NAME in names:
        known = json.loads(out.read_text(INDEX_NAME)).get("dataset", {})
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
