"""``meg2fmri oracle``: a synth dataset's noise-free truth for ``evaluate --oracle`` (``oracle.py``).

    meg2fmri oracle --bids-root demo-output/bids --ingest demo-output/ingest --out demo-output/oracle.npz
    meg2fmri oracle --peak-slice --bids-root demo-output/bids --exclude 09,10,11,12   # prints a slice
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path

from meg2fmri import commands
from meg2fmri.shards.errors import InputError
from meg2fmri.shards.split import EVALUATION_SETS, SPLITS

log = logging.getLogger("meg2fmri")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``meg2fmri oracle``."""
    p = argparse.ArgumentParser(prog="meg2fmri oracle", description=__doc__,
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
    commands.add_verbosity(p)
    return p


def write_oracle(args: argparse.Namespace) -> None:
    """Write the oracle's ``.npz`` for the sets asked for."""
    import numpy as np

    from meg2fmri.shards.commit import Location, write_atomic

    from .oracle import oracle_images

    Location(args.out.absolute().parent).check_writable("--out")
    splits = tuple(args.split or EVALUATION_SETS)
    try:
        keys, images = oracle_images(args.bids_root, args.ingest, splits)
    except (FileNotFoundError, KeyError) as err:
        raise InputError(f"--bids-root {args.bids_root} / --ingest {args.ingest}: {err}") from None
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys), images=images)
    write_atomic(args.out, buffer.getvalue())
    log.info(f"oracle: {len(keys)} samples of {', '.join(splits)} -> {args.out}")


def main(argv: list[str] | None = None) -> int:
    """``meg2fmri oracle``: parse ``argv``, print a slice or write the oracle; the exit code."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.peak_slice:
        def slice_number() -> None:
            from .oracle import peak_slice

            exclude = tuple(x.strip().zfill(2) for x in args.exclude.split(",") if x)
            try:
                print(peak_slice(args.bids_root, exclude))
            except FileNotFoundError as err:
                raise InputError(f"--bids-root {args.bids_root}: {err}") from None

        return commands.run("oracle", args, slice_number)
    if args.ingest is None or args.out is None:
        p.error("--ingest and --out are required (unless --peak-slice)")
    return commands.run("oracle", args, lambda: write_oracle(args))


if __name__ == "__main__":
    sys.exit(main())
