"""What a sample's fMRI target is, given a cached run and its paired volumes (``--target``).

- ``slice``: one axial slice, resized to ``size x size`` (the paper's target; ``pairing.py``).
- ``volume``: every voxel inside the brain mask, float16, in the C order of the NIfTI ``(i, j, k)``
  array. The mask is nilearn's ``compute_epi_mask`` of the mean over the *training* runs of each
  run's mean normalised volume (a held-out run never shapes it), written once as ``mask.nii.gz``
  beside the index. Every run must share one grid (shape and affine): raw-space grids differ in
  anatomy between subjects and visits, so for real data use ``--preprocessed`` (MNI, 2 mm).
- ``parcels``: the mean over each label of a user-supplied atlas (``--atlas``, an integer label
  image, resampled to the run's grid with nearest-neighbour interpolation by nilearn), float32.

Values are the run's min-max normalised BOLD in [0, 1], as for slices. float16 keeps 11
significant bits: the largest error against float32 is half a unit in the last place, 2**-12 =
0.00024 near 1 (measured per ingest and stored in the index as ``float16_max_abs_error``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import TargetLayout

from .cache import CachedRun
from .pairing import PairingConfig, resize_bilinear

VOLUMES_PER_READ = 16  # the cache's shard of volumes


def grid_of(run: CachedRun) -> tuple[tuple[int, int, int], np.ndarray]:
    """The run's NIfTI grid: shape ``(i, j, k)`` and 4x4 affine (from the cache)."""
    affine = run.attrs.get("fmri_affine")
    if affine is None:
        raise InputError(f"{run.name}: the cache predates volume targets (no affine); re-run ingest "
                         "without --from-cache")
    t, k, j, i = run.fmri.shape
    return (i, j, k), np.array(affine, dtype=np.float64)


def normalised_volumes(run: CachedRun, volumes: list[int]) -> np.ndarray:
    """``volumes`` of the run as ``(n, i, j, k)`` float32 in [0, 1] (read a cache shard at a time)."""
    scale, offset = np.float32(run.fmri.attrs["scale_factor"]), np.float32(run.fmri.attrs["add_offset"])
    wanted = np.asarray(volumes)
    out = np.empty((len(wanted), *grid_of(run)[0]), dtype=np.float32)
    for start in range(0, len(wanted), VOLUMES_PER_READ):
        rows = wanted[start:start + VOLUMES_PER_READ]
        packed = run.fmri.get_orthogonal_selection((rows,))  # (n, k, j, i)
        out[start:start + len(rows)] = packed.transpose(0, 3, 2, 1).astype(np.float32) * scale + offset
    return np.clip(out, 0, 1)


def mean_volume(run: CachedRun) -> np.ndarray:
    """The run's mean normalised volume ``(i, j, k)`` float32 (input of the training-data mask)."""
    total = np.zeros(grid_of(run)[0], dtype=np.float64)
    n = run.fmri.shape[0]
    for start in range(0, n, VOLUMES_PER_READ):
        total += normalised_volumes(run, list(range(start, min(start + VOLUMES_PER_READ, n)))).sum(axis=0)
    return (total / n).astype(np.float32)


def training_mask(means: list[np.ndarray], affine: np.ndarray) -> nib.Nifti1Image:
    """nilearn's EPI mask (histogram cut, largest connected component) of the mean of ``means``."""
    from nilearn.masking import compute_epi_mask

    mean = nib.Nifti1Image(np.mean(means, axis=0).astype(np.float32), affine)
    mask = compute_epi_mask(mean)
    return nib.Nifti1Image(np.asarray(mask.get_fdata() > 0, dtype=np.uint8), affine)


def file_digest(path: Path) -> str:
    """The sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_MASKS: dict[tuple[str, str], np.ndarray] = {}


def load_mask(out: Location, rel: str, digest: str) -> np.ndarray:
    """The mask file ``rel`` under ``out`` as a bool ``(i, j, k)`` array, checked against the digest
    the driver wrote (kept per process: every task of an ingest reads the same mask)."""
    key = (out.url_of(rel), digest)
    if key not in _MASKS:
        try:
            data = out.read_bytes(rel)
        except FileNotFoundError:
            raise InputError(f"{out.url_of(rel)}: the brain mask is missing; run ingest again") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise InputError(f"{out.url_of(rel)}: the mask changed during ingest; run ingest again")
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        if len(_MASKS) >= 4:
            _MASKS.clear()
        _MASKS[key] = np.asarray(nib.Nifti1Image.from_bytes(raw).dataobj) > 0
    return _MASKS[key]


def check_atlas(path: Path) -> list[int]:
    """The atlas's labels (nonzero integers), or an error naming the file and what is wrong."""
    try:
        img = nib.load(path)
    except (FileNotFoundError, nib.filebasedimages.ImageFileError, OSError) as err:
        raise InputError(f"--atlas {path}: cannot read it as NIfTI ({err})") from None
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"--atlas {path}: a label atlas is one 3D image of integer labels, got shape "
                         f"{data.shape} (a 4D probabilistic atlas needs thresholding into labels first)")
    if not np.array_equal(data, np.round(data)):
        raise InputError(f"--atlas {path}: labels must be integers (0 = background); this looks like a "
                         "probabilistic or continuous image")
    labels = sorted(int(v) for v in np.unique(data) if v != 0)
    if not labels:
        raise InputError(f"--atlas {path}: no nonzero label")
    return labels


@functools.lru_cache(maxsize=4)
def atlas_on_grid(path: str, shape: tuple[int, int, int], affine: tuple) -> np.ndarray:
    """The atlas's labels resampled (nearest) to the grid ``shape``/``affine``, int32 ``(i, j, k)``."""
    from nilearn.image import resample_img

    img = nib.load(path)
    if img.ndim == 4:
        img = nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine)
    resampled = resample_img(img, target_affine=np.array(affine).reshape(4, 4), target_shape=shape,
                             interpolation="nearest", force_resample=True, copy_header=True)
    return np.rint(resampled.get_fdata()).astype(np.int32)


@dataclass(frozen=True)
class TargetExtractor:
    """Turns a run's paired volumes into targets of one ``TargetLayout``."""

    layout: TargetLayout
    mask: np.ndarray | None = None  # volume: bool (i, j, k)
    labels: tuple[int, ...] = ()  # parcels
    label_image: np.ndarray | None = None  # parcels: int32 (i, j, k) on the run's grid

    def __call__(self, run: CachedRun, volumes: list[int], axial_slice: int, size: int) -> np.ndarray:
        if self.layout.kind == "slice":
            images = [resize_bilinear(image, size) for image in run.images(volumes, axial_slice)]
            return np.clip(np.stack(images), 0, 1)
        return self.from_volumes(normalised_volumes(run, volumes))

    def from_volumes(self, data: np.ndarray) -> np.ndarray:
        """Voxel or parcel targets of normalised volumes ``(n, i, j, k)``, ``(n, values)`` float32."""
        if self.layout.kind == "volume":
            return data[:, self.mask]  # float32 here; stored as float16
        flat = self.label_image.ravel()
        index = np.searchsorted(self.labels, flat)
        inside = (flat != 0) & (index < len(self.labels))
        inside[inside] = np.asarray(self.labels)[index[inside]] == flat[inside]
        counts = np.bincount(index[inside], minlength=len(self.labels))
        rows = data.reshape(len(data), -1)[:, inside]
        sums = np.stack([np.bincount(index[inside], weights=row, minlength=len(self.labels)) for row in rows])
        return (sums / counts).astype(np.float32)


def extractor_of_index(out: Location | Path, target: dict, run: CachedRun) -> TargetExtractor:
    """The extractor an ingest used, rebuilt from its index's ``target`` (mask beside the index)."""
    layout = TargetLayout.from_json(target)
    if layout.kind == "volume":
        out = out if isinstance(out, Location) else Location(out)
        return TargetExtractor(layout, mask=load_mask(out, target["mask"], target["mask_sha256"]))
    if layout.kind == "parcels":
        shape, affine = grid_of(run)
        return TargetExtractor(layout, labels=tuple(target["labels"]),
                               label_image=atlas_on_grid(target["atlas"], shape, tuple(affine.ravel())))
    return TargetExtractor(layout)


def extractor(run: CachedRun, config: PairingConfig, out: Location) -> TargetExtractor:
    """The extractor of ``config.target`` for this run (the mask, beside the index under ``out``, or
    the atlas, checked against its grid)."""
    if config.target == "slice":
        return TargetExtractor(TargetLayout.slice_of(config.size))
    shape, affine = grid_of(run)
    if config.target == "volume":
        if config.mask is None:
            raise InputError(f"{run.name}: volume targets need the training mask; the driver builds it")
        mask = load_mask(out, *config.mask)
        if mask.shape != shape:
            raise InputError(f"{run.name}: grid {shape} differs from the mask's {mask.shape}; raw-space "
                             "grids differ between subjects: use --preprocessed (MNI)")
        return TargetExtractor(TargetLayout("volume", (int(mask.sum()),), "float16"), mask=mask)
    labels = tuple(check_atlas(Path(config.atlas)))
    image = atlas_on_grid(config.atlas, shape, tuple(affine.ravel()))
    present = set(np.unique(image).tolist())
    lost = [label for label in labels if label not in present]
    if lost:
        raise InputError(f"--atlas {config.atlas}: label(s) {lost[:5]} cover no voxel of {run.name}'s "
                         f"{'x'.join(map(str, shape))} grid; use a coarser atlas or finer data")
    return TargetExtractor(TargetLayout("parcels", (len(labels),), "float32"), labels=labels,
                           label_image=image)
