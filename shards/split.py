"""The train / held-out split by subject.

The paper holds out two subjects, one female and one male. Our default, stated so it can be
repeated: among the subjects being ingested, the highest-numbered female and the highest-numbered
male (on ds004078: sub-11 and sub-12).
"""

from __future__ import annotations

from .errors import InputError


def held_out_subjects(sexes: dict[str, str], chosen: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Held-out subject ids from ``sexes`` (subject id -> 'F' | 'M'), or ``chosen`` checked."""
    if chosen is not None:
        unknown = sorted(set(chosen) - set(sexes))
        if unknown:
            raise InputError(f"--held-out names subject(s) {unknown} that are not being ingested "
                             f"({sorted(sexes)})")
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


def split_of(subject: str, held_out: tuple[str, ...]) -> str:
    return "held_out" if subject in held_out else "train"
