"""``ingest``: decode a ds004078-layout BIDS dataset once into a Zarr cache and WebDataset shards."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from meg2fmri import commands
from meg2fmri.shards.split import run_list


def id_list(text: str) -> tuple[str, ...] | None:
    """``--subjects``: ``all`` (None) or sorted two-digit subject ids."""
    if text == "all":
        return None
    return tuple(sorted({s.strip().removeprefix("sub-").zfill(2) for s in text.split(",") if s.strip()}))


def story_list(text: str) -> tuple[int, ...]:
    """``none`` (hold out no story: split by subject only) or story numbers as for ``--runs``."""
    if text == "none":
        return ()
    stories = run_list(text)
    if stories is None:
        raise argparse.ArgumentTypeError("--held-out-stories cannot be 'all': training needs a story")
    return stories


def location(text: str) -> str:
    """A folder (made absolute) or an s3:// URL, as given."""
    if text.startswith("s3://"):
        if len(text) <= len("s3://") or text[len("s3://")] == "/":
            raise argparse.ArgumentTypeError(f"{text!r}: an S3 URL needs a bucket, e.g. s3://my-bucket/prefix")
        return text.rstrip("/")
    if "://" in text and not text.startswith("file://"):
        raise argparse.ArgumentTypeError(f"{text!r}: only local folders and s3:// URLs are supported")
    return str(Path(text.removeprefix("file://")).absolute())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ingest``."""
    p = argparse.ArgumentParser(
        prog="ingest",
        description="Preprocess the MEG (FIF) and fMRI (NIfTI) runs of a ds004078-layout BIDS dataset "
        "(the real SMN4Lang or `synth` output) as the paper does, once: continuous signals into a Zarr "
        "cache (OUT/cache.zarr), paired samples into WebDataset shards (OUT/shards/) with an index "
        "(OUT/index.json: counts, sizes, sha256, split). One Ray task per (subject, run). Interrupted "
        "runs resume: finished runs are not redone.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bids-root", type=location, metavar="DIR|s3://BUCKET/PREFIX",
                   help="root of the BIDS dataset: a folder or an S3 prefix, e.g. "
                   "s3://openneuro.org/ds004078 (OpenNeuro's public bucket; not needed with --from-cache)")
    p.add_argument("--out", type=location, required=True, metavar="DIR|s3://BUCKET/PREFIX",
                   help="output folder or S3 prefix (cache, shards, index)")
    p.add_argument("--subjects", type=id_list, default=None, metavar="all|01,02,...",
                   help="subjects to ingest (default: all)")
    p.add_argument("--runs", type=run_list, default=None, metavar="all|1,2|1-10",
                   help="runs (= stories) to ingest (default: all)")
    p.add_argument("--preprocessed", action="store_true",
                   help="read derivatives/preprocessed_data (MEG after tSSS+ICA, bold in MNI space) "
                   "instead of the raw files; events and sidecars still come from the raw tree")
    p.add_argument("--from-cache", action="store_true",
                   help="re-pair from OUT/cache.zarr without touching any FIF or NIfTI file")
    pairing = p.add_argument_group("pairing (docs/guide/ingest.md)")
    pairing.add_argument("--pairing", choices=["windows", "paper"], default="windows",
                         help="paper: one pair per run, exactly as the paper's text; windows: an epoch "
                         "every --stride s of the story paired with the volume --lag s later")
    pairing.add_argument("--features", choices=["mean", "bandpower"], default="mean",
                         help="mean: the paper's 328-d time-mean vector (z-scored across channels); "
                         "bandpower: log power per channel in delta/theta/alpha/beta/gamma over the "
                         "epoch (328x5), z-scored over the run's epochs")
    pairing.add_argument("--power", choices=["log", "linear"], default="log",
                         help="bandpower: log band power, or band power itself (linear)")
    pairing.add_argument("--fir-lags", type=int, default=0, metavar="N",
                         help="bandpower, windows: 0 = the band power of one --epoch; N = the band power of "
                         "each of the N one-second bins before the paired volume (lags 0..N-1 s: the field's "
                         "FIR encoding-model input; N=15 covers 0-15 s; width 328 x 5 x N)")
    pairing.add_argument("--size", type=int, default=32, help="output slice size in pixels (bilinear)")
    pairing.add_argument("--stride", type=float, default=2.0, help="windows: seconds between epochs")
    pairing.add_argument("--lag", type=float, default=5.0, help="windows: hemodynamic lag in seconds")
    pairing.add_argument("--epoch", type=float, default=0.64,
                         help="windows: seconds of MEG per sample (the paper's epoch: 0.64)")
    pairing.add_argument("--slice", type=int, default=None,
                         help="fixed axial slice (0-based) for every run; default: the slice whose mean "
                         "best follows the MEG profile, averaged over the training runs only")
    pairing.add_argument("--target", choices=["slice", "volume", "parcels"], default="slice",
                         help="what each sample's fMRI is: slice (one axial slice at --size, the paper's), "
                         "volume (every voxel in the brain mask, built from training runs and written as "
                         "OUT/mask.nii.gz; float16), parcels (the mean over each label of --atlas)")
    pairing.add_argument("--atlas", type=str, default=None, metavar="FILE.nii.gz",
                         help="parcels: an integer label image (e.g. a Schaefer or Harvard-Oxford atlas "
                         "you downloaded), resampled to each run's grid; nothing is downloaded")
    split = p.add_argument_group("split (train / test / seen_story / seen_subject; docs/guide/ingest.md)")
    split.add_argument("--held-out", "--held-out-subjects", dest="held_out", type=id_list, default=None,
                       metavar="01,02",
                       help="held-out subjects (default: the highest-numbered female and male)")
    split.add_argument("--held-out-stories", type=story_list, default=None, metavar="6,12|none",
                       help="held-out stories (= runs): default every sixth story ingested (6, 12, ...; "
                       "if none is ingested, the highest-numbered); 'none' splits by subject only")
    p.add_argument("--shard-samples", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=None,
                   help="local Ray worker CPUs (default: all cores)")
    p.add_argument("--ray-address", default=None,
                   help="address of an existing Ray cluster (e.g. ray://head:10001 or auto); with no shared "
                   "disk, give s3:// for --bids-root and --out (every node reads and writes S3 itself)")
    commands.add_storage_options(p, "both --bids-root and --out (--anon: reads of an s3:// --bids-root "
                                 "only; default: anonymous when no AWS credentials are found; --out always "
                                 "signs)")
    p.add_argument("--on-duplicate", choices=["warn", "skip", "raise"], default="warn",
                   help="runs whose decoded MEG or BOLD is identical to another run's (ds004078: the MEG of "
                   "sub-05 and sub-06, runs 58-60): warn and keep all, skip all but the first, or stop")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the shards and index of an --out made with other options (or from another "
                   "dataset): new shards are written beside the old ones and the new index replaces the old "
                   "in one step, so a reader never sees a mix; without it such an --out is refused, naming "
                   "the options that differ")
    commands.add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``ingest``: parse ``argv``, run the ingest; 0 done, 1 some runs failed, 2 bad input."""
    args = build_parser().parse_args(argv)
    # A local Ray must listen on loopback only; read by Ray when it is imported.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from .config import IngestConfig
    from .driver import run_ingest, summary_table
    from .pairing import PairingConfig

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def work() -> int:
        config = IngestConfig(
            bids_root=args.bids_root, out=args.out, subjects=args.subjects, runs=args.runs,
            pairing=PairingConfig(pairing=args.pairing, features=args.features, size=args.size,
                                  stride=args.stride, lag=args.lag, slice=args.slice, epoch=args.epoch,
                                  target=args.target, power=args.power, fir_lags=args.fir_lags,
                                  atlas=None if args.atlas is None else str(Path(args.atlas).resolve())),
            preprocessed=args.preprocessed, from_cache=args.from_cache, held_out=args.held_out,
            held_out_stories=args.held_out_stories, shard_samples=args.shard_samples, workers=args.workers,
            ray_address=args.ray_address, anon=args.anon, on_duplicate=args.on_duplicate,
            overwrite=args.overwrite, storage_options=commands.storage_options(args, anon=False))
        report = run_ingest(config, progress=not args.quiet)
        print(summary_table(report))
        if report.index is not None:
            print(f"index: {config.output().url_of('index.json')}")
        return commands.PARTIAL if report.failed or report.index is None else commands.OK

    return commands.run("ingest", args, work)


if __name__ == "__main__":
    sys.exit(main())
