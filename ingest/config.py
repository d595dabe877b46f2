"""What one ingest does: the resolved configuration, validated when it is built, and one run's task."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from meg2fmri.shards.commit import Location, is_remote
from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import RunId

from .bids_io import RunFiles
from .pairing import PairingConfig

ON_DUPLICATE = ("warn", "skip", "raise")
SECRET_OPTIONS = ("key", "secret", "token", "password")


def has_aws_credentials() -> bool:
    """Whether botocore's standard chain finds credentials (environment, profile, instance role)."""
    import botocore.session

    return botocore.session.get_session().get_credentials() is not None


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """What to ingest, from where to where, paired how, split how: one ingest's resolved options."""
    bids_root: str | None  # a folder or s3://bucket/prefix (e.g. s3://openneuro.org/ds004078)
    out: str  # a folder or s3://bucket/prefix
    subjects: tuple[str, ...] | None = None  # None = every subject found
    runs: tuple[int, ...] | None = None  # None = every run found
    pairing: PairingConfig = field(default_factory=PairingConfig)
    preprocessed: bool = False  # read derivatives/preprocessed_data (MEG tSSS+ICA, MNI bold)
    from_cache: bool = False  # re-pair from the Zarr cache; never touch FIF/NIfTI
    held_out: tuple[str, ...] | None = None  # None = one female + one male (shards.split)
    held_out_stories: tuple[int, ...] | None = None  # None = every sixth story (shards.split); () = none
    shard_samples: int = 1000
    workers: int | None = None  # local Ray CPUs; None = all cores
    ray_address: str | None = None
    storage_options: dict = field(default_factory=dict)  # s3fs options (endpoint_url, key, ...), both ends
    anon: bool | None = None  # anonymous reads of an s3:// --bids-root; None: when no credentials exist
    on_duplicate: str = "warn"  # runs whose decoded MEG or BOLD equals another run's: warn | skip | raise
    overwrite: bool = False  # replace an --out holding shards of other options (or of another dataset)
    # this ingest attempt's fencing token, set by the driver: every write of a task carries it, and a
    # task of a superseded attempt (a killed driver's straggler) writes nothing (``fence``)
    attempt: str = ""

    def __post_init__(self) -> None:
        for name in ("bids_root", "out"):
            value = getattr(self, name)
            if isinstance(value, Path) or (value is not None and not is_remote(value)):
                object.__setattr__(self, name, str(Path(value).absolute()))
        if self.on_duplicate not in ON_DUPLICATE:
            raise InputError(f"on_duplicate must be one of {ON_DUPLICATE}, got {self.on_duplicate!r}")
        if self.shard_samples < 1:
            raise InputError(f"--shard-samples must be at least 1, got {self.shard_samples}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")

    def output(self) -> Location:
        """Where the cache, the pairs, the shards and the index go (written with credentials)."""
        return Location(self.out, self.storage_options)

    def source(self) -> Location:
        """The BIDS dataset: anonymous reads on S3 when asked, or when no credentials are found."""
        if self.bids_root is None:
            raise InputError("--bids-root is required (or --from-cache)")
        anon = self.anon
        if anon is None and is_remote(self.bids_root):
            anon = not has_aws_credentials()
        return Location(self.bids_root, self.storage_options, anon)

    def options(self) -> dict:
        """What decides the shards' content, as asked for (before the driver resolves a slice or a
        mask): recorded in the index and compared on a re-run into the same --out. The dataset itself
        is compared by its fingerprint; --from-cache re-pairs what was cached, whatever its tree."""
        pairing = {k: v for k, v in self.pairing.to_json().items() if k not in ("mask", "channels")}
        out = {"subjects": self.subjects, "runs": self.runs, "held_out": self.held_out,
               "held_out_stories": self.held_out_stories, "shard_samples": self.shard_samples,
               "on_duplicate": self.on_duplicate, "pairing": pairing}
        if not self.from_cache:
            out["preprocessed"] = self.preprocessed
        return json.loads(json.dumps(out))  # tuples as lists: as the index stores them

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["storage_options"] = {k: v for k, v in self.storage_options.items() if k not in SECRET_OPTIONS}
        return out


@dataclass(frozen=True)
class RunTask:
    """One (subject, run) to ingest: its files (None: from the cache only) and the memory to ask Ray for."""
    id: RunId
    files: RunFiles | None  # None when pairing from the cache only
    memory: int = 0  # bytes Ray reserves for the task (0: none asked)

    @property
    def subject(self) -> str:
        return self.id.subject

    @property
    def run(self) -> int:
        return self.id.run
