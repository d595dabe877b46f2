"""``ingest``: decode ds004078 (or synth) once into a Zarr cache and WebDataset shards.

Not implemented yet: tracked in issue #3. The command answers ``--help`` so that the install
and the console entry points can be checked now.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ingest",
        description="Preprocess MEG (FIF) and fMRI (NIfTI) runs of a ds004078-layout BIDS dataset "
        "into a Zarr cache and WebDataset shards. (Not implemented yet: issue #3.)")
    p.add_argument("--bids-root", help="root of the BIDS dataset (real ds004078 or synth output)")
    p.add_argument("--out", help="output folder for the Zarr cache, shards and index")
    p.add_argument("--subjects", default="all", help="'all' or comma-separated ids, e.g. 01,02")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("ingest: not implemented yet (issue #3)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
