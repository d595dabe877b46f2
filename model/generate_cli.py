"""``generate``: a new MEG recording in, a synthetic fMRI series out (see ``model/generate.py``).

Examples:
    generate --model demo-volume/runs/cgan --meg sub-12_task-RDR_run-6_meg.fif \\
        --events sub-12_task-RDR_run-6_events.tsv --out sub-12_task-RDR_run-6_desc-meg2fmri_bold.nii.gz
    generate --model runs/cgan --meg s3://bucket/sub-01/meg/sub-01_task-RDR_run-1_meg.fif \\
        --start 10 --stop 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meg2fmri.shards.errors import Meg2fmriError, exit_status

from .generate import GenerateConfig, generate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a `train --out` folder (or its checkpoint.pt)")
    p.add_argument("--meg", required=True, help="the recording: a FIF path or s3:// URL")
    p.add_argument("--events", type=Path, default=None,
                   help="the recording's BIDS events.tsv: the story runs from its Beg (value 1) to its End "
                        "(value 2) row, or is its first row with a duration (default: --start/--stop)")
    p.add_argument("--start", type=float, default=None, help="story onset, s from the file start (default 0)")
    p.add_argument("--stop", type=float, default=None,
                   help="story end, s from the file start (default: the end)")
    p.add_argument("--out", default=None, metavar="FILE.nii.gz|DIR",
                   help="output NIfTI (TSV for parcel targets), or a folder (or s3:// prefix): then a BIDS "
                   "derivatives tree DIR/derivatives/meg2fmri/sub-XX/func/..._desc-meg2fmri_bold.nii.gz with "
                   "its dataset_description.json; sidecar .json and montage .png beside the image "
                        "(default: the FIF's name with _desc-meg2fmri_bold.nii.gz, in this folder)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint for an s3:// FIF (default: AWS)")
    p.add_argument("--anon", action="store_true", help="anonymous S3 reads (public buckets, e.g. OpenNeuro)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options: dict = {}
    if args.endpoint_url:
        options["client_kwargs"] = {"endpoint_url": args.endpoint_url}
    if args.anon:
        options["anon"] = True
    try:
        config = GenerateConfig(model=args.model, meg=args.meg, out=args.out, events=args.events,
                                start=args.start, stop=args.stop, storage_options=options,
                                progress=not args.quiet)
        sidecar = generate(config)
    except Meg2fmriError as err:
        print(f"generate: error: {err}", file=sys.stderr)
        return exit_status(err)
    print(f"generate: {sidecar['Timing']['volumes']} volumes at TR {sidecar['RepetitionTime']} s -> "
          + ", ".join(sidecar["outputs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
