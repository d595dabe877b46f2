"""Fencing ingest attempts: a straggler of a killed driver never writes after a resume.

``.work/attempt`` holds the fencing token of the ingest attempt now running (``begin_attempt``). A
driver killed with tasks in flight leaves them running; the next attempt writes its own token before it
cleans up, and every write of a task (removing or writing its cache group, committing it, putting its
pairs) is preceded by ``fence``: a task of a superseded attempt raises ``StaleAttemptError`` instead of
writing, so a straggler released late changes nothing. Commits also carry the token, and the driver
checks those of the runs it decoded (``driver.check_fenced``).
"""

from __future__ import annotations

from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import StaleAttemptError

WORK = ".work"  # the driver's and tasks' working objects under --out (pairs, the attempt token)
ATTEMPT = f"{WORK}/attempt"


def begin_attempt(out: Location, attempt: str) -> None:
    """Make ``attempt`` the one ingest attempt whose tasks may write under ``out``."""
    out.put(ATTEMPT, attempt.encode())


def fence(out: Location, attempt: str, what: str) -> None:
    """Raise ``StaleAttemptError`` unless ``attempt`` is still the current one (``""``: no fencing, for
    direct library use)."""
    if not attempt:
        return
    try:
        current = out.read_text(ATTEMPT)
    except FileNotFoundError:
        current = ""
    if current != attempt:
        raise StaleAttemptError(f"{what}: not written: this task belongs to ingest attempt {attempt[:8]}, "
                                f"superseded by {current[:8] or 'none'} (its driver was stopped)")


