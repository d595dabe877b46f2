"""Finding and reading the inputs of a ds004078-layout BIDS dataset.

The dataset is a local folder or an ``s3://`` prefix (e.g. OpenNeuro's public
``s3://openneuro.org/ds004078``), listed once; runs are paired by the BIDS entities MNE-BIDS parses
from the file names (subject, run), never by directory order. The raw tree and the
``derivatives/preprocessed_data`` copies
(``sub-XX/MEG/`` tSSS+ICA FIF, ``sub-XX/MNI/`` bold) are both supported; fMRI events and sidecars
always come from the raw tree, which is the only place they exist.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field

import mne_bids

from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import BidsInputError
from meg2fmri.shards.format import RunId

TASK = "RDR"
PREPROCESSED = "derivatives/preprocessed_data"
DATA_SUFFIX = {"meg": "_meg.fif", "bold": "_bold.nii.gz"}


@dataclass(frozen=True)
class RunFiles:
    """The files of one (subject, run) in a dataset ``source`` (a folder or an ``s3://`` prefix);
    paths are relative to it. Run N plays story N in both sessions."""

    source: Location
    id: RunId
    meg: str  # *_meg.fif
    meg_events: str  # *_events.tsv beside the FIF (may be missing: triggers are in STI101)
    bold: str  # *_bold.nii.gz
    bold_json: str  # raw-tree sidecar
    bold_events: str  # raw-tree func events.tsv: story onset and duration
    meg_channels: str = ""  # *_channels.tsv beside the FIF (may be missing): names and status
    stamps: dict = field(default_factory=dict, compare=False)  # "meg"/"bold": size and ETag or mtime

    @property
    def subject(self) -> str:
        return self.id.subject

    @property
    def run(self) -> int:
        return self.id.run

    @property
    def name(self) -> str:
        return self.id.name

    def url(self, which: str) -> str:
        """The full path or ``s3://`` URL of ``meg``, ``bold``, ``bold_json``, ..."""
        return self.source.url_of(getattr(self, which))

    def input_bytes(self) -> int:
        """Bytes of the two data files (from the listing)."""
        return sum(int(self.stamps[k]["bytes"]) for k in ("meg", "bold") if k in self.stamps)


def _data_files(source: Location, data_root: str, raw: bool) -> dict[str, dict[tuple[str, int], tuple]]:
    """One recursive listing of ``data_root``: task-RDR MEG and BOLD files by (subject, run), each
    with its relative path and listing info; entities parsed by MNE-BIDS from the file name."""
    found: dict[str, dict[tuple[str, int], tuple]] = {"meg": {}, "bold": {}}
    prefix = f"{data_root}/" if data_root else ""
    for rel, info in source.find(data_root).items():
        inner = rel[len(prefix):]
        if not inner.startswith("sub-") or (raw and "/derivatives/" in f"/{inner}"):
            continue
        filename = inner.rsplit("/", 1)[-1]
        kind = next((k for k, suffix in DATA_SUFFIX.items() if filename.endswith(suffix)), None)
        if kind is None or f"_task-{TASK}_" not in filename:
            continue
        entities = mne_bids.get_entities_from_fname(filename, on_error="ignore")
        if entities.get("subject") is None or entities.get("run") is None:
            continue
        found[kind][(entities["subject"], int(entities["run"]))] = (rel, info)
    return found


def find_runs(source: Location, preprocessed: bool = False) -> tuple[list[RunFiles], list[str]]:
    """Every (subject, run) with both a MEG and a BOLD file, sorted; plus notes on unpaired files.
    ``source`` is listed once (on S3: a few LIST requests, nothing downloaded)."""
    if not source.is_dir():
        raise BidsInputError(f"--bids-root {source} is not a folder (or an s3:// prefix with objects)")
    data_root = PREPROCESSED if preprocessed else ""
    if preprocessed and not source.is_dir(data_root):
        raise BidsInputError(f"--preprocessed: {source.url_of(data_root)} does not exist; drop the flag to "
                             "use raw files")
    files = _data_files(source, data_root, raw=not preprocessed)
    megs, bolds = files["meg"], files["bold"]
    if not megs and not bolds:
        raise BidsInputError(f"no task-{TASK} MEG (.fif) or BOLD (.nii.gz) files under "
                             f"{source.url_of(data_root)}: is this a ds004078-layout BIDS dataset "
                             "(sub-XX/meg, sub-XX/func)?")
    runs, notes = [], []
    for key in sorted(set(megs) | set(bolds)):
        subject, run = key
        if key not in megs or key not in bolds:
            notes.append(f"sub-{subject} run-{run}: only {'MEG' if key in megs else 'BOLD'} found; skipped")
            continue
        stem = f"sub-{subject}_task-{TASK}_run-{run}"
        (meg, meg_info), (bold, bold_info) = megs[key], bolds[key]
        func = f"sub-{subject}/func"
        meg_dir = meg.rsplit("/", 1)[0]
        runs.append(RunFiles(source, RunId(subject, run), meg, f"{meg_dir}/{stem}_events.tsv",
                             bold, f"{func}/{stem}_bold.json", f"{func}/{stem}_events.tsv",
                             f"{meg_dir}/{stem}_channels.tsv",
                             {"meg": source.stamp(meg, meg_info), "bold": source.stamp(bold, bold_info)}))
    return runs, notes


def read_tsv(source: Location, rel: str) -> list[dict[str, str]]:
    """Rows of a BIDS TSV file; the UTF-8 byte-order mark of the real ds004078 files is accepted."""
    try:
        text = source.read_text(rel)
    except FileNotFoundError:
        raise BidsInputError(f"{source.url_of(rel)} is missing") from None
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"))


@dataclass(frozen=True)
class ChannelSet:
    """The dataset's channels in one canonical order, for every run's features.

    ``names``: the channel list (``channels.tsv`` ``name`` column) that most runs share, in its file
    order, minus ``bad``: every channel whose ``status`` is ``bad`` in the ``channels.tsv`` of any run
    being ingested. The policy is one for the whole dataset (a bad channel is excluded from every run),
    so the feature width never changes from run to run. Each run's MEG is read by these names; a run
    whose FIF lacks one of them fails alone, naming it."""

    names: tuple[str, ...]
    bad: tuple[str, ...] = ()
    found_from: str = ""

    def to_json(self) -> dict:
        return {"names": list(self.names), "bad": list(self.bad), "found_from": self.found_from,
                "policy": "channels by name in this order; a channel marked bad in any run's channels.tsv "
                          "is excluded from every run"}


def read_channel_tables(source: Location, runs: list[RunFiles]) -> dict[RunId, list[dict[str, str]]]:
    """The rows of each run's ``channels.tsv`` (fetched together: concurrently on S3); runs without one
    are left out."""
    paths = {source.path(r.meg_channels): r.id for r in runs if r.meg_channels}
    found = source.fs.cat(list(paths), on_error="omit") if paths else {}
    tables = {}
    for path, data in found.items():
        if isinstance(data, Exception):
            continue
        text = data.decode("utf-8-sig")
        tables[paths[path]] = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"))
    return tables


def dataset_channels(source: Location, runs: list[RunFiles]) -> ChannelSet | None:
    """The canonical ``ChannelSet`` from the runs' ``channels.tsv`` files; None if no run has one (then
    the first run's FIF names them: ``preprocess.fif_channels``)."""
    tables = read_channel_tables(source, runs)
    lists: dict[tuple[str, ...], list[RunId]] = {}
    bad: set[str] = set()
    for run, rows in sorted(tables.items()):
        if not rows or "name" not in rows[0]:
            raise BidsInputError(f"{source.url_of(next(r.meg_channels for r in runs if r.id == run))}: "
                                 "no 'name' column; fix the file or delete it")
        lists.setdefault(tuple(row["name"] for row in rows), []).append(run)
        bad |= {row["name"] for row in rows if row.get("status", "").strip().lower() == "bad"}
    if not lists:
        return None
    names, users = max(lists.items(), key=lambda item: len(item[1]))  # ties: the first run's list
    return ChannelSet(tuple(n for n in names if n not in bad), tuple(sorted(bad)),
                      f"channels.tsv of {len(users)} of {len(tables)} runs")


def participant_sexes(source: Location) -> dict[str, str]:
    """Subject id -> sex ('F'/'M') from participants.tsv."""
    rows = read_tsv(source, "participants.tsv")
    if not rows or "sex" not in rows[0] or "participant_id" not in rows[0]:
        raise BidsInputError(f"{source.url_of('participants.tsv')} needs the columns participant_id and sex")
    return {row["participant_id"].removeprefix("sub-"): row["sex"] for row in rows}


@dataclass(frozen=True)
class StoryEvent:
    """Where the story sits in a BOLD run: onset (s from the scan start) and duration (s)."""
    onset: float  # s from the scan start
    duration: float  # s, the story length


def fmri_story(files: RunFiles) -> StoryEvent:
    """The story audio event of the run's func events.tsv (``onset duration stim_file``)."""
    rows = read_tsv(files.source, files.bold_events)
    path = files.url("bold_events")
    for row in rows:
        if row.get("stim_file", "").startswith("audio/"):
            try:
                return StoryEvent(float(row["onset"]), float(row["duration"]))
            except (KeyError, ValueError):
                break
    raise BidsInputError(f"{path}: no story row (stim_file audio/...) with numeric onset and duration")


def repetition_time(files: RunFiles) -> float:
    """The run's BOLD repetition time (s) from its ``_bold.json`` sidecar."""
    path = files.url("bold_json")
    try:
        text = files.source.read_text(files.bold_json)
    except FileNotFoundError:
        raise BidsInputError(f"{path} is missing (needed for RepetitionTime)") from None
    try:
        return float(json.loads(text)["RepetitionTime"])
    except (KeyError, ValueError, TypeError) as err:
        raise BidsInputError(f"{path}: no numeric RepetitionTime ({err})") from None


def dataset_fingerprint(source: Location) -> dict:
    """Identity of a BIDS dataset: its name and a hash of its description and participants."""
    digest = hashlib.sha256()
    name = source.url.rstrip("/").rsplit("/", 1)[-1]
    texts = {}
    for fname in ("dataset_description.json", "participants.tsv"):
        try:
            texts[fname] = source.read_bytes(fname)
        except FileNotFoundError:
            continue
        digest.update(texts[fname])
    if "dataset_description.json" in texts:
        name = json.loads(texts["dataset_description.json"]).get("Name", name)
    return {"name": name, "fingerprint": digest.hexdigest()}
