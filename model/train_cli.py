"""``train``: the paper's cGAN trained by streaming from shards.

Not implemented yet: tracked in issue #5. The command answers ``--help`` now.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train",
        description="Train the MEG->fMRI cGAN from local or s3:// shards. (Not implemented yet: issue #5.)")
    p.add_argument("--shards", help="shard index: local path, file:// or s3:// URL")
    p.add_argument("--out", help="run folder for checkpoints and logs")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("train: not implemented yet (issue #5)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
