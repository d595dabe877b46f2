"""The Zarr cache of continuous preprocessed signals, one group per run (zarr format 3).

    cache.zarr/                      root group: dataset identity, participants' sexes
    cache.zarr/sub-01_run-1/         one run (written under a hidden name, renamed when complete)
        meg               (channels, samples) float32, z-scored, 100 Hz, file-relative time
        fmri              (volumes, slices, y, x), the run min-max normalised to [0, 1], one
                          compressed chunk per volume, in shards of 16 volumes (fewer files:
                          with two workers the cache write took a quarter less time), packed
                          losslessly as the CF conventions do: the scanner's int16 values
                          with the array attributes ``scale_factor`` and ``add_offset``
                          (normalised = value * scale_factor + add_offset; xarray applies
                          them on open). Exact, and half the bytes of float32.
        fmri_slice_means  (volumes, slices) float64, of the normalised run (exact, from int16)

Re-pairing with other parameters (``ingest --from-cache``) reads only this store.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from meg2fmri.shards.atomic import replace_dir
from meg2fmri.shards.errors import InputError, IntegrityError

from .bids_io import RunFiles, StoryEvent
from .preprocess import MEG_SFREQ, FmriRun, MegRun

CACHE_NAME = "cache.zarr"
CACHE_VERSION = 1
RUN_PATTERN = re.compile(r"^sub-(\w+)_run-(\d+)$")
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
# int16 scanner values: byte-shuffled lz4 wrote a demo run in 0.17 s to 55% of its size.
FMRI_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
VOLUMES_PER_WRITE = 16  # also the shard size of the fmri array


def source_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def open_root(out: Path, dataset: dict, sexes: dict[str, str] | None) -> Path:
    """Create the cache root, or check that an existing one caches the same dataset."""
    root = Path(out) / CACHE_NAME
    group = zarr.open_group(root, mode="a")
    known = group.attrs.get("dataset")
    if known is None:
        group.attrs.update({"dataset": dataset, "sexes": sexes or {}, "cache_version": CACHE_VERSION})
    elif known["fingerprint"] != dataset["fingerprint"]:
        raise InputError(f"{root} caches another dataset ({known['name']!r}), not {dataset['name']!r}: "
                         "use another --out")
    elif sexes:
        group.attrs["sexes"] = {**group.attrs.get("sexes", {}), **sexes}
    return root


def root_attrs(root: Path) -> dict:
    if not (root / "zarr.json").is_file():
        raise InputError(f"{root}: no Zarr cache here; run `ingest` without --from-cache first")
    return dict(zarr.open_group(root, mode="r").attrs)


def list_runs(root: Path) -> list[tuple[str, int]]:
    """(subject, run) of every complete run in the cache, sorted."""
    runs = []
    for name in os.listdir(root):
        match = RUN_PATTERN.match(name)
        if match and (root / name / "zarr.json").is_file():
            runs.append((match.group(1), int(match.group(2))))
    return sorted(runs)


def run_name(subject: str, run: int) -> str:
    return f"sub-{subject}_run-{run}"


def is_cached(root: Path, files: RunFiles) -> bool:
    """True if the run is cached from these very files (same size and modification time)."""
    path = root / files.name
    if not (path / "zarr.json").is_file():
        return False
    attrs = zarr.open_group(path, mode="r").attrs
    if "fmri_affine" not in attrs:  # cached before whole-brain targets: decode it again, once
        return False
    return attrs.get("sources", {}) == {"meg": source_stamp(files.meg), "bold": source_stamp(files.bold)}


def write_run(root: Path, files: RunFiles, meg: MegRun, fmri: FmriRun, story: StoryEvent) -> None:
    """Write one run's group under a hidden name, then rename it into place."""
    final = root / files.name
    tmp = root / f".{files.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(tmp, mode="w")
    group.create_array("meg", data=meg.data, chunks=(meg.data.shape[0], 3000), compressors=COMPRESSOR)
    shape = fmri.volumes.shape
    lo, hi = fmri.value_range
    volumes = group.create_array("fmri", shape=shape, dtype=fmri.volumes.dtype, chunks=(1, *shape[1:]),
                                 shards=(VOLUMES_PER_WRITE, *shape[1:]), compressors=FMRI_COMPRESSOR,
                                 dimension_names=("t", "k", "j", "i"),
                                 attributes={"scale_factor": 1.0 / (hi - lo), "add_offset": -lo / (hi - lo),
                                             "long_name": "BOLD min-max normalised over the run"})
    for start in range(0, shape[0], VOLUMES_PER_WRITE):
        volumes[start:start + VOLUMES_PER_WRITE] = fmri.volumes[start:start + VOLUMES_PER_WRITE]
    group.create_array("fmri_slice_means", data=fmri.slice_means, compressors=None)
    group.attrs.update({
        "subject": files.subject, "run": files.run, "ch_names": meg.ch_names,
        "meg_sfreq": MEG_SFREQ, "meg_story_onset_s": meg.story_onset, "meg_first_samp": meg.first_samp,
        "fmri_tr": fmri.tr, "fmri_story_onset_s": story.onset, "story_duration_s": story.duration,
        "fmri_value_range": list(fmri.value_range), "fmri_affine": fmri.affine.tolist(),
        "warnings": meg.warnings,
        "sources": {"meg": source_stamp(files.meg), "bold": source_stamp(files.bold)},
    })
    replace_dir(tmp, final)


@dataclass
class CachedRun:
    """A cached run: the arrays stay on disk until sliced."""

    subject: str
    run: int
    meg: zarr.Array
    fmri: zarr.Array
    slice_means: np.ndarray
    attrs: dict

    @property
    def name(self) -> str:
        return run_name(self.subject, self.run)

    def image(self, volume: int, axial_slice: int) -> np.ndarray:
        """One axial slice of one volume, normalised to [0, 1], float32 ``(y, x)``."""
        packed = self.fmri[volume, axial_slice].astype(np.float32)
        scale, offset = self.fmri.attrs["scale_factor"], self.fmri.attrs["add_offset"]
        return packed * np.float32(scale) + np.float32(offset)


def read_run(root: Path, subject: str, run: int) -> CachedRun:
    path = root / run_name(subject, run)
    try:
        group = zarr.open_group(path, mode="r")
        return CachedRun(subject, run, group["meg"], group["fmri"], group["fmri_slice_means"][:],
                         dict(group.attrs))
    except (KeyError, FileNotFoundError, ValueError) as err:
        raise IntegrityError(f"{path}: incomplete or unreadable cache group ({err}); delete it and "
                             "re-run ingest without --from-cache") from None


def remove_partials(root: Path) -> None:
    """Delete groups left half-written by a killed ingest."""
    if root.is_dir():
        for stale in root.glob(".sub-*.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
