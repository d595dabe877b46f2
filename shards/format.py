"""The on-disk sample format: what a shard holds, written once here for ingest and loader.

A shard is a plain POSIX tar readable by ``tar``, ``tarfile`` and ``webdataset``. Each sample is
three members, always in this order and always of the same size within a dataset, so a reader
that knows the index can compute every member's byte offset:

- ``{key}.meg.npy``  float32 ``(n_features,)``: the MEG feature vector (width in the index)
- ``{key}.fmri.npy`` float32 ``(size, size)``: the fMRI slice, min-max normalised to [0, 1]
- ``{key}.json``     UTF-8 JSON metadata, space-padded to ``META_BYTES`` (see ``META_FIELDS``)

Keys look like ``sub-01_run-3_w0042`` (no dots: webdataset splits the key at the first dot).
Tar headers are deterministic (mtime 0, uid/gid 0, mode 0644), so the same samples give the same
bytes and the same sha256.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ShardIntegrityError

MEG_MEMBER = "meg.npy"
FMRI_MEMBER = "fmri.npy"
META_MEMBER = "json"
MEMBERS = (MEG_MEMBER, FMRI_MEMBER, META_MEMBER)
SAMPLE_DTYPE = np.dtype("<f4")
META_BYTES = 512
TAR_BLOCK = 512
# Metadata of every sample (all required):
META_FIELDS = {
    "subject": "subject id without 'sub-', e.g. '01'",
    "run": "run number = story number (int)",
    "split": "'train', 'test', 'seen_story' or 'seen_subject' (shards.split)",
    "story_time_s": "start of the MEG epoch in story time (s after the story began)",
    "meg_sample": "first sample of the MEG epoch in the cached 100 Hz signal (file-relative)",
    "fmri_volume": "index of the fMRI volume in the run",
    "fmri_time_s": "acquisition start of that volume in story time (s)",
    "slice": "axial slice index (0-based, NIfTI k axis)",
}


def sample_key(subject: str, run: int, index: int) -> str:
    return f"sub-{subject}_run-{run}_w{index:04d}"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array, dtype=SAMPLE_DTYPE), allow_pickle=False)
    return buffer.getvalue()


def meta_bytes(meta: dict) -> bytes:
    missing = set(META_FIELDS) - set(meta)
    if missing:
        raise ValueError(f"sample metadata lacks {sorted(missing)}")
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    if len(text) > META_BYTES:
        raise ValueError(f"sample metadata is {len(text)} bytes, more than {META_BYTES}: {text[:80]!r}")
    return text + b" " * (META_BYTES - len(text))


@dataclass(frozen=True)
class Sample:
    key: str
    meg: np.ndarray  # (n_features,) float32
    fmri: np.ndarray  # (size, size) float32 in [0, 1]
    meta: dict


def member_sizes(n_features: int, size: int) -> dict[str, int]:
    """Bytes of each member's data for this dataset (the tar pads each to 512-byte blocks)."""
    return {MEG_MEMBER: len(npy_bytes(np.zeros(n_features))),
            FMRI_MEMBER: len(npy_bytes(np.zeros((size, size)))),
            META_MEMBER: META_BYTES}


def sample_stride(n_features: int, size: int) -> int:
    """Bytes one sample occupies in a shard: per member a header block plus padded data."""
    return sum(TAR_BLOCK + -(-n // TAR_BLOCK) * TAR_BLOCK for n in member_sizes(n_features, size).values())


def write_shard(path: Path, samples: Iterable[Sample]) -> int:
    """Write ``samples`` as a tar at ``path`` (the caller renames it into place); return the count."""
    count = 0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for member, payload in ((MEG_MEMBER, npy_bytes(sample.meg)),
                                    (FMRI_MEMBER, npy_bytes(sample.fmri)),
                                    (META_MEMBER, meta_bytes(sample.meta))):
                info = tarfile.TarInfo(f"{sample.key}.{member}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))
            count += 1
    return count


def read_shard(path: Path) -> Iterator[Sample]:
    """Samples of a shard, in order (plain ``tarfile``; the loader has a faster path)."""
    with tarfile.open(path, "r") as tar:
        members = tar.getmembers()
        if len(members) % len(MEMBERS):
            raise ShardIntegrityError(f"{path}: {len(members)} members is not a whole number of samples")
        for i in range(0, len(members), len(MEMBERS)):
            group = members[i:i + len(MEMBERS)]
            key = group[0].name.split(".", 1)[0]
            names = [m.name for m in group]
            if names != [f"{key}.{m}" for m in MEMBERS]:
                raise ShardIntegrityError(f"{path}: sample {key} has members {names}")
            meg, fmri, meta = (tar.extractfile(m).read() for m in group)
            yield Sample(key, np.load(io.BytesIO(meg)), np.load(io.BytesIO(fmri)), json.loads(meta))
