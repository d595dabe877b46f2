"""``meg2fmri oracle``: the noise-free truth of a synthetic dataset's evaluation samples, for ``evaluate``.

For each sample of a split, the image the scanner would have recorded without thermal noise or
drift: ``baseline * (1 + bold_percent/100 * sum_k map_k * response_k(t))`` (the subject's HRF, every
BOLD source, the MEG-invisible ones included) at the sample's volume
and slice (at the slice's own acquisition time), from the ground truth in ``derivatives/synth``,
then normalised with the run's own value range from ingest's cache and resized exactly like the
shards. ``evaluate --oracle FILE`` scores it as the ceiling a perfect model of the MEG could reach.

    meg2fmri oracle --bids-root demo-output/bids --ingest demo-output/ingest --out demo-output/oracle.npz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meg2fmri.ingest.cache import read_run
from meg2fmri.ingest.pairing import resize_bilinear
from meg2fmri.ingest.synth import truth as synth_truth
from meg2fmri.ingest.synth.config import FMRI_AUDIO_ONSET, TR
from meg2fmri.ingest.synth.fmri import slice_times
from meg2fmri.ingest.synth.sources import CANONICAL_PEAK, DRIVE_SFREQ, bold_response
from meg2fmri.ingest.targets import extractor_of_index
from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index
from meg2fmri.shards.split import EVALUATION_SETS


def subject_truth(root: Path, subject: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Baseline image, BOLD source maps and HRF peak (s) of a subject (the peak file is new; older
    datasets used SPM's canonical 5 s)."""
    peak = synth_truth.subject_file(root, subject, "fmri_hrf_peak_s")
    hrf_peak = float(np.load(peak)) if peak.is_file() else CANONICAL_PEAK
    return (synth_truth.read_subject(root, subject, "fmri_baseline"),
            synth_truth.read_subject(root, subject, "fmri_maps"), hrf_peak)


def oracle_images(bids_root: Path, ingest_out: Path,
                  splits: tuple[str, ...] = EVALUATION_SETS) -> tuple[list[str], np.ndarray]:
    """Sample keys of ``splits`` and their noise-free targets ``(n, *target shape)`` in [0, 1]
    (slices, in-mask voxels or parcel means, made exactly as ingest makes them)."""
    coupling = synth_truth.read_config(bids_root)["config"]["coupling"]
    index = read_index(ingest_out)
    out = Location(ingest_out)
    by_run: dict[tuple[str, int], list] = {}
    for entry in (e for e in index.shards if e.split in splits):
        for sample in read_shard(Path(ingest_out) / entry.name):
            by_run.setdefault((sample.meta["subject"], sample.meta["run"]), []).append(sample)
    keys, images = [], []
    kind = index.target["kind"]
    for (subject, run), samples in sorted(by_run.items()):
        baseline, maps, peak = subject_truth(bids_root, subject)
        drive = synth_truth.read_story(bids_root, run, f"bold-drive_{DRIVE_SFREQ:g}Hz")
        cached = read_run(out, subject, run)
        lo, hi = cached.attrs["fmri_value_range"]
        scale = coupling["bold_percent"] / 100
        volumes = np.array([m.meta["fmri_volume"] for m in samples])
        if kind == "slice":
            z = samples[0].meta["slice"]
            times = volumes * TR + slice_times(baseline.shape[2])[z]
            response = bold_response(drive.astype(np.float64), FMRI_AUDIO_ONSET, times, peak)  # (k, n)
            for sample, r in zip(samples, response.T, strict=True):
                clean = baseline[:, :, z] * (1 + scale * np.tensordot(r, maps[:, :, :, z], axes=1))
                image = resize_bilinear(((clean - lo) / (hi - lo)).T.astype(np.float32), index.image_size)
                keys.append(sample.key)
                images.append(np.clip(image, 0, 1))
            continue
        # whole volumes: every slice at its own acquisition time, then the ingest's own extraction
        times = volumes[None, :] * TR + slice_times(baseline.shape[2])[:, None]  # (slices, n)
        response = bold_response(drive.astype(np.float64), FMRI_AUDIO_ONSET, times.ravel(), peak).reshape(
            maps.shape[0], baseline.shape[2], len(samples))
        extract = extractor_of_index(out, index.target, cached)
        for start in range(0, len(samples), 16):
            part = slice(start, start + 16)
            change = np.einsum("kijz,kzn->nijz", maps, response[:, :, part])
            clean = baseline[None] * (1 + scale * change)
            values = extract.from_volumes(np.clip((clean - lo) / (hi - lo), 0, 1).astype(np.float32))
            keys += [m.key for m in samples[part]]
            images += list(values)
    if not keys:
        raise InputError(f"{ingest_out}: the index has no samples in {list(splits)}")
    return keys, np.stack(images).astype(np.float32)


def peak_slice(bids_root: Path, exclude: tuple[str, ...]) -> int:
    """The axial slice holding the most true BOLD-map mass of the subjects not in ``exclude`` (the
    held-out ones): a slice fixed a priori from the simulator's ground truth, as a user of real data
    would fix one from anatomy (say, through auditory cortex), never from held-out recordings."""
    chosen = [s for s in synth_truth.subjects(bids_root) if s not in exclude]
    if not chosen:
        raise InputError(f"{Path(bids_root) / synth_truth.TRUTH}: no subject's ground truth left after "
                         f"excluding {list(exclude)}")
    mass = sum(synth_truth.read_subject(bids_root, s, "fmri_maps").sum(axis=(0, 1, 2)) for s in chosen)
    return int(np.argmax(mass))
