"""``meg2fmri generate``: a new MEG recording in, a synthetic fMRI series out (see ``model/generate.py``).

Examples:
    meg2fmri generate --model demo-volume/runs/cgan --meg sub-12_task-RDR_run-6_meg.fif \\
        --events sub-12_task-RDR_run-6_events.tsv --out sub-12_task-RDR_run-6_desc-meg2fmri_bold.nii.gz
    meg2fmri generate --model runs/cgan --meg s3://bucket/sub-01/meg/sub-01_task-RDR_run-1_meg.fif \\
        --start 10 --stop 300
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from meg2fmri import commands

from .configs import GenerateConfig

log = logging.getLogger("meg2fmri")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``meg2fmri generate``."""
    p = argparse.ArgumentParser(prog="meg2fmri generate", description=__doc__,
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
    commands.add_storage_options(p, "an s3:// --model, --meg or --out (--anon: reads only; outputs are "
                                 "signed)")
    commands.add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``meg2fmri generate``: parse ``argv``, generate; the exit code."""
    args = build_parser().parse_args(argv)

    def work() -> None:
        config = GenerateConfig(model=args.model, meg=args.meg, out=args.out, events=args.events,
                                start=args.start, stop=args.stop, progress=not args.quiet,
                                storage_options=commands.storage_options(args))
        from .generate import generate  # torch and MNE, once the arguments are good

        sidecar = generate(config)
        log.info(f"generate: {sidecar['Timing']['volumes']} volumes at TR {sidecar['RepetitionTime']} s -> "
                 + ", ".join(sidecar["outputs"]))

    return commands.run("generate", args, work)


if __name__ == "__main__":
    sys.exit(main())
