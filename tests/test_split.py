"""The split by subject and story: rules, and that no held-out story or subject reaches training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meg2fmri.ingest.pairing import consensus_slice
from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index
from meg2fmri.shards.split import SPLITS, held_out_stories, split_of


def test_default_held_out_stories_are_every_sixth_else_the_last():
    assert held_out_stories(list(range(1, 61))) == (6, 12, 18, 24, 30, 36, 42, 48, 54, 60)  # ds004078
    assert held_out_stories([1, 2, 3, 6, 12]) == (6, 12)  # the demo preset
    assert held_out_stories([1, 2, 3]) == (3,)  # the tiny preset: no sixth story ingested
    assert held_out_stories([1, 2, 5], (2, 5)) == (2, 5)
    assert held_out_stories([1, 2], ()) == ()  # 'none': split by subject only
    with pytest.raises(InputError, match=r"story/stories \[7\] that are not being ingested"):
        held_out_stories([1, 2], (7,))
    with pytest.raises(InputError, match="leaves no training story"):
        held_out_stories([6])


def test_split_of_every_subject_story_combination():
    assert [split_of(s, r, ("02",), (3,)) for s, r in [("01", 1), ("02", 3), ("02", 1), ("01", 3)]] == \
        ["train", "test", "seen_story", "seen_subject"]


def test_no_sample_of_a_held_out_subject_or_story_is_in_training_for_every_set(ingested: Path):
    index = read_index(ingested)
    subjects, stories = set(index.held_out("subjects")), set(index.held_out("stories"))
    seen: dict[str, set] = {name: set() for name in SPLITS}
    for entry in index.shards:
        for sample in read_shard(ingested / entry.name):
            m = sample.meta
            seen[entry.split].add((m["subject"], m["run"]))
            assert m["split"] == entry.split
    assert all(seen[name] for name in SPLITS)  # every set has samples
    assert not {s for s, _ in seen["train"]} & subjects and not {r for _, r in seen["train"]} & stories
    assert {s for s, _ in seen["test"]} <= subjects and {r for _, r in seen["test"]} <= stories
    assert {r for _, r in seen["seen_story"]}.isdisjoint(stories)
    assert {s for s, _ in seen["seen_story"]} <= subjects
    assert {s for s, _ in seen["seen_subject"]}.isdisjoint(subjects)
    assert {r for _, r in seen["seen_subject"]} <= stories
    assert index.to_json()["counts"] == {name: index.count(name) for name in SPLITS}


def test_the_automatic_slice_is_chosen_from_training_runs_only(ingested: Path):
    """Each run's slice-correlation profile is in the index; the slice used is the best mean over the
    training runs, whatever the held-out runs' profiles say."""
    index = read_index(ingested)
    def profile(run: dict) -> np.ndarray:
        return np.array([np.nan if c is None else c for c in run["slice_correlation"]], dtype=float)

    profiles = {(r["subject"], r["run"]): profile(r) for r in index.runs}
    train = [p for (s, r), p in profiles.items()
             if s not in index.held_out("subjects") and r not in index.held_out("stories")]
    assert len(train) == 4
    chosen = index.config["slice_choice"]
    assert chosen["slice"] == consensus_slice(train) == index.runs[0]["slice"]
    assert {r["slice"] for r in index.runs} == {chosen["slice"]}
    assert "4 training runs" in chosen["chosen_from"]
