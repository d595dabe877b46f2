"""``synth-oracle``: the noise-free truth of a synthetic dataset's held-out samples, for ``evaluate``.

For each sample of a split, the image the scanner would have recorded without thermal noise or
drift: ``baseline * (1 + bold_percent/100 * sum_k map_k * response_k(t))`` at the sample's volume
and slice (at the slice's own acquisition time), from the ground truth in ``derivatives/synth``,
then normalised with the run's own value range from ingest's cache and resized exactly like the
shards. ``evaluate --oracle FILE`` scores it as the ceiling a perfect model of the MEG could reach.

    synth-oracle --bids-root demo-output/bids --ingest demo-output/ingest --out demo-output/oracle.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import zarr

from meg2fmri.shards.errors import InputError, Meg2fmriError
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index

from ..pairing import resize_bilinear
from .config import FMRI_AUDIO_ONSET, TR
from .fmri import slice_times
from .sources import DRIVE_SFREQ, bold_response
from .writer import CONFIG_NAME, TRUTH


def oracle_images(bids_root: Path, ingest_out: Path, split: str = "held_out") -> tuple[list[str], np.ndarray]:
    """Sample keys of ``split`` and their noise-free images ``(n, S, S)`` in [0, 1]."""
    truth = Path(bids_root) / TRUTH
    try:
        coupling = json.loads((truth / CONFIG_NAME).read_text())["config"]["coupling"]
    except FileNotFoundError:
        raise InputError(f"{truth / CONFIG_NAME}: no synth ground truth; the oracle needs a `synth` "
                         "dataset") from None
    index = read_index(ingest_out)
    cache = zarr.open_group(Path(ingest_out) / "cache.zarr", mode="r")
    keys, images, subjects, drives = [], [], {}, {}
    for entry in (e for e in index.shards if e.split == split):
        for sample in read_shard(Path(ingest_out) / entry.name):
            m = sample.meta
            subject, run, volume, z = m["subject"], m["run"], m["fmri_volume"], m["slice"]
            if subject not in subjects:
                folder = truth / f"sub-{subject}"
                subjects[subject] = (np.load(folder / f"sub-{subject}_fmri_baseline.npy"),
                                     np.load(folder / f"sub-{subject}_fmri_maps.npy"))
            if run not in drives:
                drives[run] = np.load(truth / "stories" / f"story-{run}_bold-drive_{DRIVE_SFREQ:g}Hz.npy")
            baseline, maps = subjects[subject]
            time = volume * TR + slice_times(baseline.shape[2])[z]
            response = bold_response(drives[run].astype(np.float64), FMRI_AUDIO_ONSET, np.array([time]))[:, 0]
            clean = baseline[:, :, z] * (1 + coupling["bold_percent"] / 100
                                         * np.tensordot(response, maps[:, :, :, z], axes=1))
            lo, hi = cache[f"sub-{subject}_run-{run}"].attrs["fmri_value_range"]
            image = resize_bilinear(((clean - lo) / (hi - lo)).T.astype(np.float32), index.image_size)
            keys.append(sample.key)
            images.append(np.clip(image, 0, 1))
    return keys, np.stack(images).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="synth-oracle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bids-root", type=Path, required=True, help="the synth dataset (with derivatives/synth)")
    p.add_argument("--ingest", type=Path, required=True,
                   help="ingest's --out: index.json, shards/, cache.zarr")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write (keys, images)")
    p.add_argument("--split", default="held_out", choices=["train", "held_out"], help="(default: held_out)")
    args = p.parse_args(argv)
    try:
        keys, images = oracle_images(args.bids_root, args.ingest, args.split)
    except (Meg2fmriError, FileNotFoundError, KeyError) as err:
        print(f"synth-oracle: error: {err}", file=sys.stderr)
        return 1
    np.savez(args.out, keys=np.array(keys), images=images)
    print(f"synth-oracle: {len(keys)} {args.split} samples -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
