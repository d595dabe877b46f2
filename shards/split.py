"""The split by subject *and* story: which samples train a model and which evaluate it.

SMN4Lang's MEG and fMRI are separate sessions of the same stories, so only the stimulus-locked part
of BOLD is predictable from the MEG, and a held-out subject who heard a training story can be
predicted with no MEG at all (the training subjects' response at the same story time). Only new
stories test a mapping from MEG to BOLD. Every sample therefore falls in one of four sets:

- ``train``: training subjects x training stories (the only data used to fit, tune or normalise)
- ``test``: held-out subjects x held-out stories (the headline: new people, new stories)
- ``seen_story``: held-out subjects x training stories (diagnostic: a story clock can score here)
- ``seen_subject``: training subjects x held-out stories (diagnostic: known people, new stories)

Defaults, stated so they can be repeated:

- held-out subjects: among the subjects being ingested, the highest-numbered female and the
  highest-numbered male (on ds004078: sub-11 and sub-12), as the paper holds out one of each;
- held-out stories: every sixth story (6, 12, ..., 60: ten of ds004078's sixty; the demo preset
  hears stories 1-4 and 6, 12, 18, 24), among the stories being ingested; if none of those is
  ingested, the highest-numbered story (the tiny preset: story 2 of 1-2).
"""

from __future__ import annotations

from argparse import ArgumentTypeError

from .errors import InputError

SPLITS = ("train", "test", "seen_story", "seen_subject")
EVALUATION_SETS = SPLITS[1:]
STORY_PERIOD = 6  # every sixth story is held out by default


def held_out_subjects(sexes: dict[str, str], chosen: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Held-out subject ids from ``sexes`` (subject id -> 'F' | 'M'), or ``chosen`` checked."""
    if chosen is not None:
        unknown = sorted(set(chosen) - set(sexes))
        if unknown:
            raise InputError(f"--held-out names subject(s) {unknown} that are not being ingested "
                             f"({sorted(sexes)})")
        if not set(sexes) - set(chosen):
            raise InputError(f"--held-out {','.join(chosen)} leaves no training subject")
        return tuple(sorted(chosen))
    picks = []
    for sex in ("F", "M"):
        candidates = sorted(s for s, v in sexes.items() if v.upper() == sex)
        if not candidates:
            raise InputError(f"cannot hold out one female and one male subject: no subject with sex "
                             f"{sex!r} among {sorted(sexes)} (participants.tsv); pass --held-out")
        picks.append(candidates[-1])
    if len(sexes) - len(picks) < 1:
        raise InputError(f"holding out {sorted(picks)} leaves no training subject; ingest more subjects")
    return tuple(sorted(picks))


def held_out_stories(stories: list[int], chosen: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Held-out story numbers among ``stories`` (the default rule above), or ``chosen`` checked.

    ``chosen == ()`` holds out no story: then only ``train`` and ``seen_story`` exist (the split by
    subject alone of earlier versions; its ``seen_story`` set was called ``held_out``)."""
    stories = sorted(set(stories))
    if chosen is not None:
        unknown = sorted(set(chosen) - set(stories))
        if unknown:
            raise InputError(f"--held-out-stories names story/stories {unknown} that are not being "
                             f"ingested ({stories})")
        picks = tuple(sorted(set(chosen)))
    else:
        picks = tuple(s for s in stories if s % STORY_PERIOD == 0) or tuple(stories[-1:])
    if not set(stories) - set(picks):
        raise InputError(f"holding out stories {list(picks)} leaves no training story among {stories}; "
                         "ingest more runs or pass --held-out-stories")
    return picks


def split_of(subject: str, story: int, subjects: tuple[str, ...], stories: tuple[int, ...]) -> str:
    """The set of a (subject, story) given the held-out subjects and stories."""
    new_subject, new_story = subject in subjects, story in stories
    if new_subject:
        return "test" if new_story else "seen_story"
    return "seen_subject" if new_story else "train"


def run_list(text: str) -> tuple[int, ...] | None:
    """``all`` (None), ``1,2,5`` or ranges like ``1-10`` (sorted, without repeats)."""
    if text == "all":
        return None
    runs: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            runs.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ArgumentTypeError(f"runs must look like 1,2,5 or 1-10 or all, got {text!r}") from None
    return tuple(sorted(runs))
