"""A map-style, random-access copy of the shards' samples in Zarr, for users who want ``dataset[i]``.

``export_zarr`` writes ``<out>/<split>/{meg, fmri, meta}`` with row ``i`` = sample id ``i`` of the
split (the order of the shard index, as in ``plan.py``); ``ZarrSamples`` reads it from a local path
or any fsspec URL (``s3://`` through s3fs with the same ``storage_options``).

Rows are chunked in small blocks (``rows_per_chunk``) and stored uncompressed: z-scored MEG and
normalised fMRI floats barely compress, and a random-access reader decodes one chunk per sample.
``__getitems__`` lets torch's DataLoader fetch a whole batch with one orthogonal selection.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from meg2fmri.shards.commit import replace_dir
from meg2fmri.shards.errors import InputError, IntegrityError, OutputExistsError
from meg2fmri.shards.index import SPLITS

from .decode import SampleLayout, shard_arrays
from .storage import StoreConfig, open_store

FORMAT = "meg2fmri-zarr-samples"


def export_zarr(source: str | Path, out: str | Path, *, store: StoreConfig | None = None,
                rows_per_chunk: int = 64, progress: bool = True, overwrite: bool = False) -> Path:
    """Copy every split of the shards at ``source`` into a Zarr group at ``out`` (written atomically)."""
    shard_store = open_store(source, store)
    index = shard_store.read_index()
    layout = SampleLayout.from_index(index)
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_samples(shard_store, index, layout, tmp, rows_per_chunk, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    return out


def _write_samples(shard_store, index, layout, tmp: Path, rows_per_chunk: int, progress: bool) -> None:
    root = zarr.open_group(tmp, mode="w")
    root.attrs.update({"format": FORMAT, "version": 1, "features": index.features,
                       "target": index.target, "split": index.split, "dataset": index.dataset})
    target = layout.target
    for split in SPLITS:
        entries = [e for e in index.shards if e.split == split]
        n = sum(e.count for e in entries)
        group = root.create_group(split)
        arrays = {
            "meg": group.create_array("meg", shape=(n, layout.width), dtype="float32",
                                      chunks=(rows_per_chunk, layout.width), compressors=None),
            "fmri": group.create_array("fmri", shape=(n, *target.shape), dtype=target.np_dtype,
                                       chunks=(rows_per_chunk, *target.shape), compressors=None),
            "meta": group.create_array("meta", shape=(n, 512), dtype="uint8", chunks=(rows_per_chunk, 512),
                                       compressors=None),
        }
        row = 0
        for entry in tqdm(entries, desc=f"to zarr ({split})", unit="shard", disable=not progress):
            shard = shard_arrays(shard_store.shard(entry), entry, layout)
            arrays["meg"][row:row + entry.count] = shard.meg
            arrays["fmri"][row:row + entry.count] = shard.fmri
            arrays["meta"][row:row + entry.count] = shard.meta
            row += entry.count


class ZarrSamples(torch.utils.data.Dataset):
    """``dataset[i]`` -> ``{"meg": (width,), "fmri": (1, S, S) or (values,), "index": i}`` (as the
    shard loader gives); ``meta=True`` adds the JSON."""

    def __init__(self, url: str | Path, split: str = "train", *, storage_options: dict | None = None,
                 meta: bool = False):
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, not {split!r}")
        text = str(url)
        if "://" in text and not text.startswith("file://"):
            store = zarr.storage.FsspecStore.from_url(text, storage_options=storage_options or {},
                                                      read_only=True)
        else:
            store = text.removeprefix("file://")
        try:
            root = zarr.open_group(store, mode="r")
        except FileNotFoundError:
            raise IntegrityError(f"{url}: no Zarr samples here; write them with `shards to-zarr`") from None
        if root.attrs.get("format") != FORMAT:
            raise IntegrityError(f"{url}: not a {FORMAT} group; write it with `shards to-zarr`")
        self.meg, self.fmri = root[f"{split}/meg"], root[f"{split}/fmri"]
        self.meta_rows = root[f"{split}/meta"]
        self.meta, self.split = meta, split

    def __len__(self) -> int:
        return self.meg.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {name: value[0] for name, value in self.__getitems__([i]).items()}

    def __getitems__(self, indices: list[int]) -> dict:
        """A whole batch at once (torch's DataLoader calls this with the sampler's indices)."""
        indices = np.asarray(indices, dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        rows = indices[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        meg = self.meg.get_orthogonal_selection((rows,))[inverse]
        fmri = self.fmri.get_orthogonal_selection((rows,))[inverse]
        images = fmri[:, None] if fmri.ndim == 3 else fmri  # slices as one-channel images
        batch = {"meg": torch.from_numpy(meg), "fmri": torch.from_numpy(images),
                 "index": torch.from_numpy(indices)}
        if self.meta:
            raw = self.meta_rows.get_orthogonal_selection((rows,))[inverse]
            batch["meta"] = [json.loads(bytes(r)) for r in raw]
        return batch


def collate_batch(batch: dict) -> dict:
    """``collate_fn`` for a DataLoader over ``ZarrSamples``: ``__getitems__`` already made the batch."""
    return batch
