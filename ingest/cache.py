"""The Zarr cache of continuous preprocessed signals, one group per run (zarr format 3).

    cache.zarr/                      root group: dataset identity, participants' sexes
    cache.zarr/sub-01_run-1/         one run, written at its final keys by its one task and committed
                                     by its last attribute update (``sources``: the input files'
                                     sizes and ETags); readers trust only committed groups
        meg               (channels, samples) float32, z-scored, 100 Hz, file-relative time
        fmri              (volumes, slices, y, x), the run min-max normalised to [0, 1], one
                          compressed chunk per 16 volumes (one file or object each: a chunk per
                          volume in shards of 16 took 1.4x the time to write), packed
                          losslessly as the CF conventions do: the scanner's int16 values
                          with the array attributes ``scale_factor`` and ``add_offset``
                          (normalised = value * scale_factor + add_offset; xarray applies
                          them on open). Exact, and half the bytes of float32.
        fmri_slice_means  (volumes, slices) float64, of the normalised run (exact, from int16)

Re-pairing with other parameters (``ingest --from-cache``) reads only this store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError, IntegrityError
from meg2fmri.shards.format import RunId

from .bids_io import RunFiles, StoryEvent
from .fence import fence
from .preprocess import MEG_SFREQ, FmriRun, MegRun

CACHE_NAME = "cache.zarr"
CACHE_VERSION = 1
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
# int16 scanner values: byte-shuffled lz4 wrote a demo run in 0.17 s to 55% of its size.
FMRI_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
VOLUMES_PER_WRITE = 16  # also the chunk size of the fmri array
COMMIT_ATTR = "sources"  # written last, in the group's last attribute update: the run's commit point


def group_path(run: RunId) -> str:
    """The Zarr group of one run inside ``cache.zarr``."""
    return f"{CACHE_NAME}/{run.name}"


def open_root(out: Location, dataset: dict, sexes: dict[str, str] | None,
              channels: dict | None = None) -> Location:
    """Create the cache root, or check that an existing one caches the same dataset (the driver alone
    writes the root's attributes; each task writes only its own run's group)."""
    group = zarr.open_group(out.zarr_store(CACHE_NAME), mode="a")
    known = group.attrs.get("dataset")
    if known is None:
        group.attrs.update({"dataset": dataset, "sexes": sexes or {}, "cache_version": CACHE_VERSION})
    elif known["fingerprint"] != dataset["fingerprint"]:
        raise InputError(f"{out.url_of(CACHE_NAME)} caches another dataset ({known['name']!r}), not "
                         f"{dataset['name']!r}: use another --out")
    elif sexes:
        group.attrs["sexes"] = {**group.attrs.get("sexes", {}), **sexes}
    if channels is not None:  # the dataset's channel set (bids_io.ChannelSet), for --from-cache
        group.attrs["channels"] = channels
    return out


def root_attrs(out: Location) -> dict:
    """The cache root's attributes, or an ``InputError`` if there is no cache yet."""
    if not out.exists(f"{CACHE_NAME}/zarr.json"):
        raise InputError(f"{out.url_of(CACHE_NAME)}: no Zarr cache here; run `ingest` without --from-cache "
                         "first")
    return dict(zarr.open_group(out.zarr_store(CACHE_NAME, read_only=True), mode="r").attrs)


def run_groups(out: Location, only: list[RunId] | None = None) -> dict[RunId, dict | None]:
    """Every run group in the cache (or those of ``only`` that exist) -> its attributes if committed,
    else None (half-written by a killed task). The groups' metadata objects are fetched together
    (concurrently on S3)."""
    names = out.names(CACHE_NAME) if only is None else [r.name for r in only]
    runs = {r: None for r in map(RunId.parse, names) if r is not None}
    paths = {out.path(f"{group_path(r)}/zarr.json"): r for r in runs}
    found = out.fs.cat(list(paths), on_error="omit") if paths else {}
    if only is not None:
        runs = {r: None for p, r in paths.items() if p in found}
    for path, data in found.items():
        try:
            attrs = json.loads(data).get("attributes", {})
        except ValueError:  # a metadata write cut short
            continue
        if COMMIT_ATTR in attrs and "fmri_affine" in attrs:
            runs[paths[path]] = attrs
    return runs


def committed_attrs(out: Location, run: RunId) -> dict | None:
    """The run group's attributes if it is committed, else None (absent or half-written)."""
    return run_groups(out, [run]).get(run)


def list_runs(out: Location) -> list[tuple[str, int]]:
    """(subject, run) of every committed run in the cache, sorted."""
    return sorted((r.subject, r.run) for r, attrs in run_groups(out).items() if attrs is not None)


def is_cached(attrs: dict | None, files: RunFiles) -> bool:
    """True if the committed run (``attrs`` from ``run_groups``) is cached from these very files (size
    and ETag on S3, size and mtime locally). A run cached before affines were kept is decoded again."""
    return (attrs is not None and "fmri_affine" in attrs and "digests" in attrs
            and attrs.get(COMMIT_ATTR) == files.stamps)


def content_digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and values (equal arrays, equal digests), hashed in place
    from its memory (a transposed view is hashed through its C-contiguous transpose: no copy)."""
    import hashlib

    base = array if array.flags.c_contiguous else array.T if array.T.flags.c_contiguous else None
    if base is None:
        base = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}{base is not array}".encode())
    digest.update(memoryview(base).cast("B"))
    return digest.hexdigest()


def write_run(out: Location, files: RunFiles, meg: MegRun, fmri: FmriRun, story: StoryEvent,
              digests: dict[str, str], attempt: str = "") -> None:
    """Write one run's group at its final keys; its last attribute update (``sources``) commits it.
    An earlier, uncommitted or outdated group of the run is removed first. Each step is fenced by the
    ingest ``attempt`` (``pairs.fence``): a superseded attempt's task writes nothing more."""
    rel = group_path(files.id)
    fence(out, attempt, f"{out.url_of(rel)}")
    out.remove(rel)
    group = zarr.open_group(out.zarr_store(rel), mode="w")
    group.create_array("meg", data=meg.data, chunks=(meg.data.shape[0], 3000), compressors=COMPRESSOR)
    shape = fmri.volumes.shape
    lo, hi = fmri.value_range
    volumes = group.create_array("fmri", shape=shape, dtype=fmri.volumes.dtype,
                                 chunks=(VOLUMES_PER_WRITE, *shape[1:]), compressors=FMRI_COMPRESSOR,
                                 dimension_names=("t", "k", "j", "i"),
                                 attributes={"scale_factor": 1.0 / (hi - lo), "add_offset": -lo / (hi - lo),
                                             "long_name": "BOLD min-max normalised over the run"})
    for start in range(0, shape[0], VOLUMES_PER_WRITE):
        volumes[start:start + VOLUMES_PER_WRITE] = fmri.volumes[start:start + VOLUMES_PER_WRITE]
    group.create_array("fmri_slice_means", data=fmri.slice_means, compressors=None)
    attrs = {
        "subject": files.subject, "run": files.run, "ch_names": meg.ch_names,
        "meg_sfreq": MEG_SFREQ, "meg_story_onset_s": meg.story_onset, "meg_first_samp": meg.first_samp,
        "fmri_tr": fmri.tr, "fmri_story_onset_s": story.onset, "story_duration_s": story.duration,
        "fmri_value_range": list(fmri.value_range), "fmri_affine": fmri.affine.tolist(),
        "warnings": meg.warnings, "digests": digests,
    }
    group.attrs.update(attrs)
    fence(out, attempt, f"{out.url_of(rel)} commit")
    group.attrs.update({"attempt": attempt, COMMIT_ATTR: files.stamps})  # the commit point


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
        return RunId(self.subject, self.run).name

    def images(self, volumes: list[int], axial_slice: int) -> np.ndarray:
        """One axial slice of each of ``volumes``, normalised to [0, 1], float32 ``(n, y, x)``: one
        selection, whose chunks zarr fetches concurrently (one request each on S3, not in turn)."""
        if len(volumes) == 0:
            return np.zeros((0, *self.fmri.shape[2:]), np.float32)
        unique, inverse = np.unique(np.asarray(volumes, dtype=np.int64), return_inverse=True)
        packed = self.fmri.get_orthogonal_selection((unique, axial_slice)).astype(np.float32)
        scale, offset = self.fmri.attrs["scale_factor"], self.fmri.attrs["add_offset"]
        return (packed * np.float32(scale) + np.float32(offset))[inverse]

    def image(self, volume: int, axial_slice: int) -> np.ndarray:
        """One axial slice of one volume, normalised to [0, 1], float32 ``(y, x)``."""
        packed = self.fmri[volume, axial_slice].astype(np.float32)
        scale, offset = self.fmri.attrs["scale_factor"], self.fmri.attrs["add_offset"]
        return packed * np.float32(scale) + np.float32(offset)


def read_run(out: Location, subject: str, run: int) -> CachedRun:
    """A committed run of the cache under ``out`` (a folder or an ``s3://`` prefix)."""
    rel = group_path(RunId(subject, run))
    try:
        group = zarr.open_group(out.zarr_store(rel, read_only=True), mode="r")
        attrs = dict(group.attrs)
        if COMMIT_ATTR not in attrs:
            raise ValueError("the group was never committed (its task was killed)")
        return CachedRun(subject, run, group["meg"], group["fmri"], group["fmri_slice_means"][:], attrs)
    except (KeyError, FileNotFoundError, ValueError) as err:
        raise IntegrityError(f"{out.url_of(rel)}: incomplete or unreadable cache group ({err}); re-run "
                             "ingest without --from-cache (it is decoded again)") from None


def remove_partials(out: Location) -> list[str]:
    """Delete run groups a killed ingest left uncommitted (and the hidden folders of older versions);
    return what was removed."""
    removed = [group_path(r) for r, attrs in run_groups(out).items() if attrs is None]
    removed += [f"{CACHE_NAME}/{n}" for n in out.names(CACHE_NAME) if n.startswith(".sub-")]
    for rel in removed:
        out.remove(rel)
    return removed
