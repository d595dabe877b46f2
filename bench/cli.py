"""``bench``: throughput measured side by side against the alternatives a user would pick.

Not implemented yet: ``bench kernels`` and ``bench ingest`` arrive with issue #3, ``bench loader``
with issue #4. The command answers ``--help`` now.
"""

from __future__ import annotations

import argparse
import sys

BENCHES = {"kernels": 3, "ingest": 3, "loader": 4, "train": 5}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench", description="Benchmarks; each writes a table and JSON ({'machine', 'rows'}).")
    sub = p.add_subparsers(dest="which", required=True)
    for name, issue in BENCHES.items():
        one = sub.add_parser(name, help=f"{name} benchmark (not implemented yet: issue #{issue})")
        one.add_argument("--json", help="write the results as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"bench {args.which}: not implemented yet (issue #{BENCHES[args.which]})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
