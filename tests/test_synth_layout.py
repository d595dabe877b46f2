"""The synthetic dataset has the exact ds004078 layout, names, sidecars and events formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import DATA, read_tsv

BOM = "\ufeff"


def expected_subject_files(subject: str, runs: list[int]) -> set[str]:
    """Files the real dataset has for these runs, from its own file list (sub-01 as template)."""
    wanted = re.compile(r"^sub-01/(meg|func)/sub-01_(coordsystem\.json|task-RDR_run-(\d+)_.*)$")
    names = set()
    for line in (DATA / "ds004078-sub-01-files.txt").read_text().split():
        m = wanted.match(line)
        if m and (m.group(3) is None or int(m.group(3)) in runs):
            names.add(line.replace("sub-01", f"sub-{subject}"))
    return names


def test_files_match_real_layout_exactly(tiny_root: Path):
    found = {str(p.relative_to(tiny_root)) for p in tiny_root.glob("sub-*/**/*") if p.is_file()}
    expected = set().union(*(expected_subject_files(s, [1, 2, 3]) for s in ["01", "02", "03", "04"]))
    assert len(expected) == 4 * (1 + 3 * 7)
    assert found == expected


def test_top_level_files(tiny_root: Path):
    for name in ["dataset_description.json", "participants.tsv", "participants.json", "README",
                 "stimuli/audio/story_1.wav", "stimuli/images/hurryup.png"]:
        assert (tiny_root / name).is_file(), name
    description = json.loads((tiny_root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.6.0" and description["DatasetType"] == "raw"
    text = (tiny_root / "participants.tsv").read_text(encoding="utf-8")
    assert text.startswith(BOM + "participant_id\tage\tsex\thand\n")  # as the real file
    rows = read_tsv(tiny_root / "participants.tsv")
    assert [r["participant_id"] for r in rows] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert [r["sex"] for r in rows] == ["M", "F", "M", "M"]  # the real subjects' sexes


def test_sidecars_have_the_real_fields(tiny_root: Path):
    meg = json.loads((tiny_root / "sub-02/meg/sub-02_task-RDR_run-2_meg.json").read_text())
    bold = json.loads((tiny_root / "sub-02/func/sub-02_task-RDR_run-2_bold.json").read_text())
    assert set(meg) == set(json.loads((DATA / "ref_meg.json").read_text()))
    assert set(bold) == set(json.loads((DATA / "ref_bold.json").read_text()))
    assert meg["SamplingFrequency"] == 1000.0 and meg["TriggerChannelCount"] == 9
    assert bold["RepetitionTime"] == 0.71 and len(bold["SliceTiming"]) == 18
    assert max(bold["SliceTiming"]) < bold["RepetitionTime"]
    ours = read_tsv(tiny_root / "sub-02/meg/sub-02_task-RDR_run-2_channels.tsv")
    real = read_tsv(DATA / "ref_channels.tsv")
    assert [(r["name"], r["type"], r["units"]) for r in ours] == [
        (r["name"], r["type"], r["units"]) for r in real]


def test_events_have_the_real_format(tiny_root: Path):
    meg_events = (tiny_root / "sub-03/meg/sub-03_task-RDR_run-1_events.tsv").read_text(encoding="utf-8")
    real_meg = (DATA / "ref_meg_events.tsv").read_text(encoding="utf-8")
    assert meg_events.splitlines()[0] == real_meg.splitlines()[0]  # BOM + header
    pattern = re.compile(r"^\d+\.\d{3}\t0\.0\t(Beg\t1|End\t2)\t\d+$")
    assert all(pattern.match(line) for line in meg_events.splitlines()[1:])
    rows = read_tsv(tiny_root / "sub-03/meg/sub-03_task-RDR_run-1_events.tsv")
    for row in rows:
        assert int(row["sample"]) == round(float(row["onset"]) * 1000)
    func = read_tsv(tiny_root / "sub-03/func/sub-03_task-RDR_run-1_events.tsv")
    real_func = (DATA / "ref_func_events.tsv").read_text().splitlines()[0]
    ours = (tiny_root / "sub-03/func/sub-03_task-RDR_run-1_events.tsv").read_text()
    assert ours.splitlines()[0] == real_func
    assert func[0] == {"onset": "10.650000", "duration": "40.000000", "stim_file": "audio/story_1.wav"}
    assert func[1]["stim_file"] == "images/hurryup.png"
    assert float(func[1]["onset"]) == 10.65 + 40 + 8
