"""``synth-oracle``: the noise-free truth of a synthetic dataset's evaluation samples, for ``evaluate``.

For each sample of a split, the image the scanner would have recorded without thermal noise or
drift: ``baseline * (1 + bold_percent/100 * sum_k map_k * response_k(t))`` (the subject's HRF, every
BOLD source, the MEG-invisible ones included) at the sample's volume
and slice (at the slice's own acquisition time), from the ground truth in ``derivatives/synth``,
then normalised with the run's own value range from ingest's cache and resized exactly like the
shards. ``evaluate --oracle FILE`` scores it as the ceiling a perfect model of the MEG could reach.

    synth-oracle --bids-root demo-output/bids --ingest demo-output/ingest --out demo-output/oracle.npz
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from meg2fmri.ingest.cache import read_run
from meg2fmri.ingest.pairing import resize_bilinear
from meg2fmri.ingest.synth.config import FMRI_AUDIO_ONSET, TR
from meg2fmri.ingest.synth.fmri import slice_times
from meg2fmri.ingest.synth.sources import CANONICAL_PEAK, DRIVE_SFREQ, bold_response
from meg2fmri.ingest.synth.writer import CONFIG_NAME, TRUTH
from meg2fmri.ingest.targets import extractor_of_index
from meg2fmri.shards.commit import Location, write_atomic
from meg2fmri.shards.errors import InputError, Meg2fmriError, exit_status
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index
from meg2fmri.shards.split import EVALUATION_SETS, SPLITS


def subject_truth(truth: Path, subject: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Baseline image, BOLD source maps and HRF peak (s) of a subject (the peak file is new; older
    datasets used SPM's canonical 5 s)."""
    folder = truth / f"sub-{subject}"
    peak = folder / f"sub-{subject}_fmri_hrf_peak_s.npy"
    hrf_peak = float(np.load(peak)) if peak.is_file() else CANONICAL_PEAK
    return (np.load(folder / f"sub-{subject}_fmri_baseline.npy"),
            np.load(folder / f"sub-{subject}_fmri_maps.npy"), hrf_peak)


def oracle_images(bids_root: Path, ingest_out: Path,
                  splits: tuple[str, ...] = EVALUATION_SETS) -> tuple[list[str], np.ndarray]:
    """Sample keys of ``splits`` and their noise-free targets ``(n, *target shape)`` in [0, 1]
    (slices, in-mask voxels or parcel means, made exactly as ingest makes them)."""
    truth = Path(bids_root) / TRUTH
    try:
        coupling = json.loads((truth / CONFIG_NAME).read_text())["config"]["coupling"]
    except FileNotFoundError:
        raise InputError(f"{truth / CONFIG_NAME}: no synth ground truth; the oracle needs a `synth` "
                         "dataset") from None
    index = read_index(ingest_out)
    out = Location(ingest_out)
    by_run: dict[tuple[str, int], list] = {}
    for entry in (e for e in index.shards if e.split in splits):
        for sample in read_shard(Path(ingest_out) / entry.name):
            by_run.setdefault((sample.meta["subject"], sample.meta["run"]), []).append(sample)
    keys, images = [], []
    kind = index.target["kind"]
    for (subject, run), samples in sorted(by_run.items()):
        baseline, maps, peak = subject_truth(truth, subject)
        drive = np.load(truth / "stories" / f"story-{run}_bold-drive_{DRIVE_SFREQ:g}Hz.npy")
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
    truth = Path(bids_root) / TRUTH
    subjects = sorted(p.name.removeprefix("sub-") for p in truth.glob("sub-*") if p.is_dir())
    chosen = [s for s in subjects if s not in exclude]
    if not chosen:
        raise InputError(f"{truth}: no subject's ground truth left after excluding {list(exclude)}")
    mass = sum(np.load(truth / f"sub-{s}" / f"sub-{s}_fmri_maps.npy").sum(axis=(0, 1, 2)) for s in chosen)
    return int(np.argmax(mass))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="synth-oracle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bids-root", type=Path, required=True, help="the synth dataset (with derivatives/synth)")
    p.add_argument("--ingest", type=Path, help="ingest's --out: index.json, shards/, cache.zarr")
    p.add_argument("--out", type=Path, help="the .npz to write (keys, images)")
    p.add_argument("--peak-slice", action="store_true",
                   help="only print the axial slice with the most true BOLD-map mass of the subjects not in "
                        "--exclude (an a-priori slice for `ingest --slice`)")
    p.add_argument("--exclude", default="", metavar="09,10",
                   help="with --peak-slice: held-out subjects, whose truth is not looked at")
    p.add_argument("--split", action="append", choices=SPLITS, default=None,
                   help="set(s) to write, repeatable (default: every evaluation set: "
                        f"{', '.join(EVALUATION_SETS)})")
    args = p.parse_args(argv)
    if args.peak_slice:
        try:
            print(peak_slice(args.bids_root, tuple(x.strip().zfill(2) for x in args.exclude.split(",") if x)))
        except (Meg2fmriError, FileNotFoundError) as err:
            print(f"synth-oracle: error: {err}", file=sys.stderr)
            return 1
        return 0
    if args.ingest is None or args.out is None:
        p.error("--ingest and --out are required (unless --peak-slice)")
    try:
        Location(args.out.absolute().parent).check_writable("--out")
        splits = tuple(args.split or EVALUATION_SETS)
        keys, images = oracle_images(args.bids_root, args.ingest, splits)
    except (Meg2fmriError, FileNotFoundError, KeyError) as err:
        print(f"synth-oracle: error: {err}", file=sys.stderr)
        return exit_status(err) if isinstance(err, Meg2fmriError) else 2
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys), images=images)
    write_atomic(args.out, buffer.getvalue())
    print(f"synth-oracle: {len(keys)} samples of {', '.join(splits)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
