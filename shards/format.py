"""The on-disk sample format: what a shard holds, written once here for ingest and loader.

A shard is a plain POSIX tar readable by ``tar``, ``tarfile`` and ``webdataset``. Each sample is
three members, always in this order and always of the same size within a dataset, so a reader
that knows the index can compute every member's byte offset:

- ``{key}.meg.npy``  float32 ``(n_features,)``: the MEG feature vector (width in the index)
- ``{key}.fmri.npy`` the fMRI target, min-max normalised over its run to [0, 1]; its kind, shape
  and dtype are the index's ``target`` (``TargetLayout``):

  - ``slice``   float32 ``(size, size)``: one axial slice resized (the paper's target)
  - ``volume``  float16 ``(voxels,)``: every voxel inside the brain mask (``mask.nii.gz`` beside
    the index; C order of the NIfTI ``(i, j, k)`` array), at the paired volume
  - ``parcels`` float32 ``(parcels,)``: the mean over each label of an atlas (labels in the index)
- ``{key}.json``     UTF-8 JSON metadata, space-padded to ``META_BYTES`` (see ``META_FIELDS``)

Keys look like ``sub-01_run-3_w0042`` (no dots: webdataset splits the key at the first dot).
Tar headers are deterministic (mtime 0, uid/gid 0, mode 0644), so the same samples give the same
bytes and the same sha256.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import ShardIntegrityError

MEG_MEMBER = "meg.npy"
FMRI_MEMBER = "fmri.npy"
META_MEMBER = "json"
MEMBERS = (MEG_MEMBER, FMRI_MEMBER, META_MEMBER)
SAMPLE_DTYPE = np.dtype("<f4")  # MEG features, slice and parcel targets
TARGET_KINDS = ("slice", "volume", "parcels")
TARGET_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
MASK_NAME = "mask.nii.gz"  # volume targets: the brain mask (training data only), beside the index
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
    "slice": "axial slice index (0-based, NIfTI k axis); -1 for volume and parcel targets",
}


@dataclass(frozen=True)
class TargetLayout:
    """What the ``fmri`` member holds: ``kind`` (``TARGET_KINDS``), ``shape`` and ``dtype`` (a key of
    ``TARGET_DTYPES``). The index stores it as its ``target`` (with kind-specific extras)."""

    kind: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS or self.dtype not in TARGET_DTYPES:
            raise ValueError(f"target {self.kind!r} {self.dtype!r}: not one of {TARGET_KINDS} x "
                             f"{sorted(TARGET_DTYPES)}")
        if self.kind == "slice" and len(self.shape) != 2 or self.kind != "slice" and len(self.shape) != 1:
            raise ValueError(f"a {self.kind} target has shape {self.shape}")

    @classmethod
    def slice_of(cls, size: int) -> TargetLayout:
        return cls("slice", (size, size), "float32")

    @classmethod
    def from_json(cls, obj: dict) -> TargetLayout:
        return cls(obj["kind"], tuple(obj["shape"]), obj["dtype"])

    @property
    def np_dtype(self) -> np.dtype:
        return TARGET_DTYPES[self.dtype]

    @property
    def values(self) -> int:
        """Numbers per target (pixels, voxels or parcels)."""
        return int(np.prod(self.shape))


@dataclass(frozen=True, order=True)
class RunId:
    """One recording: a subject and a run (run N plays story N in both sessions). The one place the
    name ``sub-XX_run-N`` is spelled: cache groups, pair files, sample keys, log lines and errors."""

    subject: str
    run: int

    @property
    def name(self) -> str:
        return f"sub-{self.subject}_run-{self.run}"

    @property
    def story(self) -> int:
        return self.run

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> RunId | None:
        """The run a ``sub-XX_run-N`` name (or a sample key starting with one) names, else None."""
        match = RUN_NAME.match(name)
        return None if match is None else cls(match.group(1), int(match.group(2)))


RUN_NAME = re.compile(r"^sub-([A-Za-z0-9]+)_run-(\d+)(?:_|$)")


def sample_key(subject: str, run: int, index: int) -> str:
    """``sub-XX_run-N_wIIII``: a sample's key (no dots: webdataset splits keys at the first)."""
    return f"{RunId(subject, run).name}_w{index:04d}"


def npy_bytes(array: np.ndarray, dtype: np.dtype = SAMPLE_DTYPE) -> bytes:
    """An array as ``.npy`` bytes in ``dtype``."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    return buffer.getvalue()


def meta_bytes(meta: dict) -> bytes:
    """A sample's metadata as UTF-8 JSON, space-padded to ``META_BYTES``."""
    missing = set(META_FIELDS) - set(meta)
    if missing:
        raise ValueError(f"sample metadata lacks {sorted(missing)}")
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    if len(text) > META_BYTES:
        raise ValueError(f"sample metadata is {len(text)} bytes, more than {META_BYTES}: {text[:80]!r}")
    return text + b" " * (META_BYTES - len(text))


@dataclass(frozen=True)
class Sample:
    """One sample: key, MEG vector, target, metadata."""
    key: str
    meg: np.ndarray  # (n_features,) float32
    fmri: np.ndarray  # the target (TargetLayout), in [0, 1]
    meta: dict


def member_sizes(n_features: int, target: TargetLayout) -> dict[str, int]:
    """Bytes of each member's data for this dataset (the tar pads each to 512-byte blocks)."""
    return {MEG_MEMBER: len(npy_bytes(np.zeros(n_features))),
            FMRI_MEMBER: len(npy_bytes(np.zeros(target.shape), target.np_dtype)),
            META_MEMBER: META_BYTES}


def sample_stride(n_features: int, target: TargetLayout) -> int:
    """Bytes one sample occupies in a shard: per member a header block plus padded data."""
    return sum(TAR_BLOCK + -(-n // TAR_BLOCK) * TAR_BLOCK for n in member_sizes(n_features, target).values())


def check_sample(sample: Sample, width: int, target: TargetLayout) -> None:
    """Refuse a sample that does not fit the index: MEG ``(width,)`` float32, the target ``target.shape``
    in a float dtype that ``target.dtype`` holds exactly or by rounding (float32 or the target's own)."""
    meg, fmri = np.asarray(sample.meg), np.asarray(sample.fmri)
    problems = []
    if meg.shape != (width,) or meg.dtype != SAMPLE_DTYPE:
        problems.append(f"MEG {meg.dtype} {meg.shape}, the index says float32 ({width},)")
    if fmri.shape != tuple(target.shape) or fmri.dtype not in (SAMPLE_DTYPE, target.np_dtype):
        problems.append(f"fMRI {fmri.dtype} {fmri.shape}, the index says {target.dtype} "
                        f"{tuple(target.shape)}")
    if problems:
        raise ShardIntegrityError(f"sample {sample.key}: {'; '.join(problems)}: refusing to write a shard "
                                  "that mixes shapes (a bug upstream of the shard writer: please report it)")


def write_shard(path: Path | BinaryIO, samples: Iterable[Sample],
                target_dtype: np.dtype = SAMPLE_DTYPE,
                expect: tuple[int, TargetLayout] | None = None) -> int:
    """Write ``samples`` as a tar to ``path`` or a binary file (the caller commits it); return the count.
    With ``expect`` (feature width, target layout), every sample is checked first (``check_sample``)."""
    count = 0
    where = {"fileobj": path} if hasattr(path, "write") else {"name": path}
    with tarfile.open(mode="w", format=tarfile.USTAR_FORMAT, **where) as tar:
        for sample in samples:
            if expect is not None:
                check_sample(sample, *expect)
            for member, payload in ((MEG_MEMBER, npy_bytes(sample.meg)),
                                    (FMRI_MEMBER, npy_bytes(sample.fmri, target_dtype)),
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
