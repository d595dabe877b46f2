"""``evaluate``: MSE, SSIM and baselines on the held-out subjects.

Not implemented yet: tracked in issue #5. The command answers ``--help`` now.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate",
        description="Score a trained model on the held-out subjects beside honest baselines. "
        "(Not implemented yet: issue #5.)")
    p.add_argument("--shards", help="shard index: local path, file:// or s3:// URL")
    p.add_argument("--out", help="run folder of the trained model")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("evaluate: not implemented yet (issue #5)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
