"""Decode a whole shard at once: numpy strided views over the shard's bytes, no per-sample Python.

Every sample in a dataset has members of the same sizes (``shards.format``), so the ``i``-th
sample's MEG vector starts at ``i * stride + offset``. A shard held in memory (or memory-mapped)
becomes three views: ``meg (count, width)``, ``fmri (count, *target shape)`` (the index's
``target``: a slice, the in-mask voxels or parcels) and ``meta (count, 512)``
bytes. Batches are gathered from these views (``kernels.gather_rows``) straight into the batch buffers.

The tar headers are checked in bulk (magic, member sizes, npy headers, first and last key), so a
shard written with another layout fails loudly instead of decoding as garbage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from meg2fmri.shards.errors import ShardIntegrityError
from meg2fmri.shards.format import (
    FMRI_MEMBER,
    MEG_MEMBER,
    MEMBERS,
    META_BYTES,
    META_MEMBER,
    SAMPLE_DTYPE,
    TAR_BLOCK,
    TargetLayout,
    npy_bytes,
)
from meg2fmri.shards.index import ShardEntry, ShardIndex


def _padded(n: int) -> int:
    return -(-n // TAR_BLOCK) * TAR_BLOCK


@dataclass(frozen=True)
class SampleLayout:
    """Byte offsets of one sample's members, from the index (``features.width``, ``target``)."""

    width: int
    target: TargetLayout
    stride: int
    headers: dict[str, int]  # member -> offset of its tar header within the sample
    data: dict[str, int]  # member -> offset of its payload (after the npy header for arrays)
    npy_headers: dict[str, bytes]  # member -> the exact npy header every sample carries

    @classmethod
    def from_index(cls, index: ShardIndex) -> SampleLayout:
        width, target = index.features["width"], index.target_layout
        payloads = {MEG_MEMBER: npy_bytes(np.zeros(width)),
                    FMRI_MEMBER: npy_bytes(np.zeros(target.shape), target.np_dtype)}
        nbytes = {MEG_MEMBER: width * 4, FMRI_MEMBER: target.values * target.np_dtype.itemsize}
        headers, data, npy_headers, offset = {}, {}, {}, 0
        for member in MEMBERS:
            length = len(payloads[member]) if member in payloads else META_BYTES
            skip = length - nbytes[member] if member in payloads else 0
            headers[member], data[member] = offset, offset + TAR_BLOCK + skip
            if member in payloads:
                npy_headers[member] = payloads[member][:skip]
            offset += TAR_BLOCK + _padded(length)
        if offset != index.layout()["sample_stride"]:
            raise ShardIntegrityError(f"sample stride {offset} != the index's layout "
                                      f"{index.layout()['sample_stride']}")
        return cls(width, target, offset, headers, data, npy_headers)

    @property
    def payload_bytes(self) -> int:
        """MEG and fMRI bytes per sample (what a batch delivers)."""
        return 4 * self.width + self.target.values * self.target.np_dtype.itemsize


@dataclass(frozen=True)
class ShardArrays:
    """One shard's samples as strided views: MEG ``(n, width)``, targets, metadata."""
    name: str
    meg: np.ndarray  # (count, width) float32, strided view
    fmri: np.ndarray  # (count, *target shape) of the target dtype, strided view
    meta: np.ndarray  # (count, META_BYTES) uint8
    names: np.ndarray  # (count, 100) uint8: the tar name field of each sample's MEG member

    @property
    def pixels(self) -> np.ndarray:
        """``fmri`` as ``(count, values)`` rows (a view)."""
        rows = self.fmri.reshape(self.fmri.shape[0], -1)  # inner axes are contiguous: a view, no copy
        return rows

    def metadata(self, rows: np.ndarray) -> list[dict]:
        """The samples' JSON metadata, with their ``key`` added."""
        return [{**json.loads(bytes(self.meta[r])), "key": _member_name(self.names[r]).split(".", 1)[0]}
                for r in rows]


def _strided(buf: np.ndarray, offset: int, shape: tuple, stride: int, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    inner = [dtype.itemsize]
    for n in reversed(shape[2:]):
        inner.insert(0, inner[0] * n)
    return np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset, strides=(stride, *inner))


def _member_name(header: np.ndarray) -> str:
    return bytes(header[:100]).rstrip(b"\0").decode("utf-8", "replace")


def shard_arrays(buf: np.ndarray, entry: ShardEntry, layout: SampleLayout) -> ShardArrays:
    """Views of ``entry``'s samples in ``buf`` (the shard's bytes as uint8), after bulk header checks."""
    count, stride = entry.count, layout.stride
    if len(buf) < count * stride + 2 * TAR_BLOCK:
        raise ShardIntegrityError(f"{entry.name}: {len(buf)} bytes cannot hold {count} samples "
                                  f"of {stride} bytes (truncated?)")
    for member in MEMBERS:
        header = _strided(buf, layout.headers[member], (count, TAR_BLOCK), stride, np.uint8)
        if not (header[:, 257:262] == np.frombuffer(b"ustar", np.uint8)).all():
            raise ShardIntegrityError(f"{entry.name}: a {member} tar header is damaged (no ustar magic)")
        if not (header[:, 124:136] == header[0, 124:136]).all():
            raise ShardIntegrityError(f"{entry.name}: {member} members differ in size; "
                                      "not a fixed-layout shard")
        for row, key in ((0, entry.first_key), (count - 1, entry.last_key)):
            if _member_name(header[row]) != f"{key}.{member}":
                raise ShardIntegrityError(f"{entry.name}: sample {row} is {_member_name(header[row])!r}, "
                                          f"the index says {key}.{member}")
        if member in layout.npy_headers:
            expected = np.frombuffer(layout.npy_headers[member], np.uint8)
            start = layout.data[member] - len(expected)
            got = _strided(buf, start, (count, len(expected)), stride, np.uint8)
            if not (got == expected).all():
                raise ShardIntegrityError(f"{entry.name}: a {member} array is not of the index's "
                                          "dtype and shape")
    meg = _strided(buf, layout.data[MEG_MEMBER], (count, layout.width), stride, SAMPLE_DTYPE)
    target = layout.target
    fmri = _strided(buf, layout.data[FMRI_MEMBER], (count, *target.shape), stride, target.np_dtype)
    meta = _strided(buf, layout.data[META_MEMBER], (count, META_BYTES), stride, np.uint8)
    names = _strided(buf, layout.headers[MEG_MEMBER], (count, 100), stride, np.uint8)
    return ShardArrays(entry.name, meg, fmri, meta, names)
