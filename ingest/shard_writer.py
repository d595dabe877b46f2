"""Assemble the finished runs' pairs into WebDataset shards and the index, atomically.

Samples go in (split, subject, run, window) order into shards of ``shard_samples``; each shard is
written under a hidden name and renamed when complete; the index is written last. The same pairs
always give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from meg2fmri.shards.format import Sample, TargetLayout, sample_key, write_shard
from meg2fmri.shards.index import ShardEntry, ShardIndex, file_sha256, write_index
from meg2fmri.shards.split import SPLITS

from .pipeline import IngestConfig, load_pairs

SHARD_DIR = "shards"


def split_samples(config: IngestConfig, runs: list[tuple[str, int]], split_of: dict[tuple[str, int], str],
                  split: str) -> Iterator[Sample]:
    for subject, run in runs:
        if split_of[(subject, run)] != split:
            continue
        meg, fmri, meta = load_pairs(config, subject, run)
        for i, m in enumerate(meta):
            yield Sample(sample_key(subject, run, i), meg[i], fmri[i], {**m, "split": split})


def chunks(samples: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_shards(config: IngestConfig, runs: list[tuple[str, int]], split_of: dict[tuple[str, int], str],
                 index_fields: dict) -> ShardIndex:
    """Write every split's shards under ``out/shards/`` and then ``out/index.json``."""
    folder = config.out / SHARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[ShardEntry] = []
    dtype = TargetLayout.from_json(index_fields["target"]).np_dtype
    for split in SPLITS:
        for number, batch in enumerate(chunks(split_samples(config, runs, split_of, split),
                                              config.shard_samples)):
            name = f"{split}-{number:06d}.tar"
            tmp = folder / f".{name}.tmp-{os.getpid()}"
            write_shard(tmp, batch, dtype)
            os.replace(tmp, folder / name)
            entries.append(ShardEntry(f"{SHARD_DIR}/{name}", split, len(batch),
                                      (folder / name).stat().st_size, file_sha256(folder / name),
                                      batch[0].key, batch[-1].key))
    index = ShardIndex(shards=entries, **index_fields)
    write_index(config.out, index)
    listed = {Path(e.name).name for e in entries}
    for stale in folder.glob("*.tar"):  # shards of an earlier, larger ingest
        if stale.name not in listed:
            stale.unlink()
    return index
