"""What one (subject, run) task of an ingest returns to the driver: ``RunOutcome``.

A task (``task.ingest_run``, in a Ray worker) builds one; the driver filters them (ok, failed,
skipped), merges a first pass's facts into the second's (``merge_first_pass``), writes their summary
into the index (``index_entry``) and prints them (``driver.summary_table``). Nothing else spells
their fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from meg2fmri.shards.format import RunId


@dataclass(kw_only=True)
class RunOutcome:
    """One run's result: ok or the error, what was paired, what was decoded, and what it cost."""
    subject: str
    run: int
    ok: bool
    error: str | None = None  # why it failed (``ok`` False), naming the run and the fix
    skipped: bool = False  # not a failure: a duplicate left out on purpose (--on-duplicate skip)
    split: str | None = None  # set by the driver once the split is known
    count: int = 0  # samples paired
    slice: int | None = None  # the slice its pairs hold (-1 for volume and parcel targets)
    decoded: bool = False  # its FIF and NIfTI were read in this ingest (not taken from the cache)
    resumed: bool = False  # finished by an earlier, interrupted ingest
    decoded_mb: float = 0.0
    fmri_tr: float | None = None  # s, from the cache (the BOLD sidecar's RepetitionTime)
    warnings: list[str] = field(default_factory=list)
    storage_error: float = 0.0  # the largest |stored - computed| of its targets (float16 volumes)
    digests: dict[str, str] = field(default_factory=dict)  # sha256 of the decoded MEG and BOLD
    slice_correlation: list[float | None] | None = None  # per-slice profile (the paper's Fig. 1)
    peak_task_mb: float = 0.0  # the task's resident memory above its start
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: meg, fmri, cache, pair
    node: str | None = None  # the Ray node that ran it
    # a survey pass (the slice or the mask is not chosen yet) returns one of these instead of pairs
    profile: list[float] | None = None
    mean_volume: Any = None  # (i, j, k) mean normalised volume
    grid: dict | None = None  # {"shape", "affine"}

    @property
    def id(self) -> RunId:
        return RunId(self.subject, self.run)

    @property
    def failed(self) -> bool:
        """Could not be ingested (a duplicate skipped on purpose is not a failure)."""
        return not self.ok and not self.skipped

    @classmethod
    def failure(cls, run: RunId, error: str, skipped: bool = False) -> RunOutcome:
        return cls(subject=run.subject, run=run.run, ok=False, error=error, skipped=skipped)

    def merge_first_pass(self, earlier: RunOutcome) -> None:
        """A run cached in a survey pass and paired in a second: the first pass decoded it."""
        self.decoded, self.resumed, self.decoded_mb = True, False, earlier.decoded_mb
        self.peak_task_mb = max(earlier.peak_task_mb, self.peak_task_mb)
        self.seconds = {**earlier.seconds, **self.seconds}

    def without_survey(self) -> RunOutcome:
        """The same outcome without the survey's bulky mean volume (kept for the mask only)."""
        return replace(self, mean_volume=None)

    def index_entry(self) -> dict:
        """Its line in the index's ``runs``."""
        return {"subject": self.subject, "run": self.run, "split": self.split, "count": self.count,
                "slice": self.slice, "warnings": self.warnings, "slice_correlation": self.slice_correlation}

    def failed_entry(self) -> dict:
        """Its line in the index's ``failed``."""
        return {"subject": self.subject, "run": self.run, "split": self.split, "error": self.error}
