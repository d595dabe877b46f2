"""Assemble the finished runs' pairs into WebDataset shards and the index, each committed whole.

Samples go in (split, subject, run, window) order into shards of ``shard_samples``, named
``shards/{split}-{number:06d}-{tag}.tar`` (``tag``: ``driver.shard_tag``, from the options and the
decoded data, so a re-run with other options never writes over a shard an older index lists); each
shard is
streamed to its final name through ``Location.open_atomic`` (a rename locally; one upload on S3,
invisible until complete) and hashed as it is written; the index is written last, and shards it does
not list (an earlier, larger ingest's) are then removed. The same pairs always give the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from meg2fmri.shards.commit import Location
from meg2fmri.shards.format import RunId, Sample, TargetLayout, sample_key, write_shard
from meg2fmri.shards.index import INDEX_NAME, ShardEntry, ShardIndex, index_bytes
from meg2fmri.shards.split import SPLITS

from .pairing import PairingConfig
from .pairs import load_pairs
from .plan import SHARD_DIR


class HashingWriter:
    """A write-only file that hashes and counts what passes through it to ``target``."""

    def __init__(self, target):
        self.target, self.digest, self.size = target, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.target.write(data)

    def tell(self) -> int:
        return self.size


def split_samples(out: Location, pairing: PairingConfig, runs: list[RunId], split_of: dict[RunId, str],
                  split: str) -> Iterator[Sample]:
    """The samples of each split, in run order."""
    for run in runs:
        if split_of[run] != split:
            continue
        pairs = load_pairs(out, pairing, run)
        for i, m in enumerate(pairs.meta):
            yield Sample(sample_key(run.subject, run.run, i), pairs.meg[i], pairs.fmri[i],
                         {**m, "split": split})


def chunks(samples: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    """``items`` in consecutive lists of at most ``size``."""
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_shards(out: Location, pairing: PairingConfig, shard_samples: int, runs: list[RunId],
                 split_of: dict[RunId, str], index_fields: dict, tag: str) -> ShardIndex:
    """Write every split's shards under ``out/shards/`` and then ``out/index.json``; a sample whose
    shape or dtype differs from the index's is refused (``format.write_shard``)."""
    entries: list[ShardEntry] = []
    layout = TargetLayout.from_json(index_fields["target"])
    width = index_fields["features"]["width"]
    for split in SPLITS:
        for number, batch in enumerate(chunks(split_samples(out, pairing, runs, split_of, split),
                                              shard_samples)):
            name = f"{SHARD_DIR}/{split}-{number:06d}-{tag}.tar"
            with out.open_atomic(name) as f:
                writer = HashingWriter(f)
                write_shard(writer, batch, layout.np_dtype, expect=(width, layout))
            entries.append(ShardEntry(name, split, len(batch), writer.size, writer.digest.hexdigest(),
                                      batch[0].key, batch[-1].key))
    index = ShardIndex(shards=entries, **index_fields)
    out.put(INDEX_NAME, index_bytes(index))
    listed = {e.name.rsplit("/", 1)[-1] for e in entries}
    for stale in out.names(SHARD_DIR):  # shards of an earlier, larger ingest
        if stale.endswith(".tar") and stale not in listed:
            out.remove(f"{SHARD_DIR}/{stale}")
    return index
