"""Finding and reading the inputs of a ds004078-layout BIDS dataset.

Runs are found with MNE-BIDS entity queries and paired by their BIDS entities (subject, run),
never by directory order. The raw tree and the ``derivatives/preprocessed_data`` copies
(``sub-XX/MEG/`` tSSS+ICA FIF, ``sub-XX/MNI/`` bold) are both supported; fMRI events and sidecars
always come from the raw tree, which is the only place they exist.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import mne_bids

from meg2fmri.shards.errors import BidsInputError

TASK = "RDR"
PREPROCESSED = Path("derivatives") / "preprocessed_data"


@dataclass(frozen=True)
class RunFiles:
    """The files of one (subject, run); run N plays story N in both sessions."""

    subject: str
    run: int
    meg: Path  # *_meg.fif
    meg_events: Path  # *_events.tsv beside the FIF (may be missing: triggers are in STI101)
    bold: Path  # *_bold.nii.gz
    bold_json: Path  # raw-tree sidecar
    bold_events: Path  # raw-tree func events.tsv: story onset and duration

    @property
    def name(self) -> str:
        return f"sub-{self.subject}_run-{self.run}"

    def inputs(self) -> list[Path]:
        return [self.meg, self.bold]


def _by_entities(root: Path, suffix: str, extension: str) -> dict[tuple[str, int], Path]:
    found = {}
    for path in mne_bids.find_matching_paths(root, tasks=TASK, suffixes=suffix, extensions=extension,
                                             check=False):
        if path.subject is None or path.run is None:
            continue
        found[(path.subject, int(path.run))] = Path(path.fpath)
    return found


def find_runs(root: Path, preprocessed: bool = False) -> tuple[list[RunFiles], list[str]]:
    """Every (subject, run) with both a MEG and a BOLD file, sorted; plus notes on unpaired files."""
    root = Path(root)
    if not root.is_dir():
        raise BidsInputError(f"--bids-root {root} is not a folder")
    data_root = root / PREPROCESSED if preprocessed else root
    if preprocessed and not data_root.is_dir():
        raise BidsInputError(f"--preprocessed: {data_root} does not exist; drop the flag to use raw files")
    megs = _by_entities(data_root, "meg", ".fif")
    bolds = _by_entities(data_root, "bold", ".nii.gz")
    if not megs and not bolds:
        raise BidsInputError(f"no task-{TASK} MEG (.fif) or BOLD (.nii.gz) files under {data_root}: "
                             "is this a ds004078-layout BIDS dataset (sub-XX/meg, sub-XX/func)?")
    runs, notes = [], []
    for key in sorted(set(megs) | set(bolds), key=lambda k: (k[0], k[1])):
        subject, run = key
        if key not in megs or key not in bolds:
            notes.append(f"sub-{subject} run-{run}: only {'MEG' if key in megs else 'BOLD'} found; skipped")
            continue
        func = root / f"sub-{subject}" / "func"
        stem = f"sub-{subject}_task-{TASK}_run-{run}"
        runs.append(RunFiles(subject, run, megs[key], megs[key].with_name(f"{stem}_events.tsv"),
                             bolds[key], func / f"{stem}_bold.json", func / f"{stem}_events.tsv"))
    return runs, notes


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a BIDS TSV file; the UTF-8 byte-order mark of the real ds004078 files is accepted."""
    if not path.is_file():
        raise BidsInputError(f"{path} is missing")
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def participant_sexes(root: Path) -> dict[str, str]:
    """Subject id -> sex ('F'/'M') from participants.tsv."""
    path = Path(root) / "participants.tsv"
    rows = read_tsv(path)
    if not rows or "sex" not in rows[0] or "participant_id" not in rows[0]:
        raise BidsInputError(f"{path} needs the columns participant_id and sex")
    return {row["participant_id"].removeprefix("sub-"): row["sex"] for row in rows}


@dataclass(frozen=True)
class StoryEvent:
    onset: float  # s from the scan start
    duration: float  # s, the story length


def fmri_story(path: Path) -> StoryEvent:
    """The story audio event of a func events.tsv (``onset duration stim_file``)."""
    rows = read_tsv(path)
    for row in rows:
        if row.get("stim_file", "").startswith("audio/"):
            try:
                return StoryEvent(float(row["onset"]), float(row["duration"]))
            except (KeyError, ValueError):
                break
    raise BidsInputError(f"{path}: no story row (stim_file audio/...) with numeric onset and duration")


def repetition_time(path: Path) -> float:
    if not path.is_file():
        raise BidsInputError(f"{path} is missing (needed for RepetitionTime)")
    try:
        return float(json.loads(path.read_text())["RepetitionTime"])
    except (KeyError, ValueError, TypeError) as err:
        raise BidsInputError(f"{path}: no numeric RepetitionTime ({err})") from None


def dataset_fingerprint(root: Path) -> dict:
    """Identity of a BIDS dataset: its name and a hash of its description and participants."""
    root = Path(root)
    digest = hashlib.sha256()
    name = root.name
    for fname in ("dataset_description.json", "participants.tsv"):
        path = root / fname
        if path.is_file():
            digest.update(path.read_bytes())
    description = root / "dataset_description.json"
    if description.is_file():
        name = json.loads(description.read_text()).get("Name", name)
    return {"name": name, "fingerprint": digest.hexdigest()}
