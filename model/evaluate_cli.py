"""``evaluate``: score the trained variants and baselines on the held-out subjects.

Example:
    evaluate --shards demo-output/ingest --runs demo-output/runs --out demo-output/eval --json results.json

Writes OUT/results.json, OUT/results.md (the table), OUT/pairs.png (real vs predicted held-out
slices), OUT/training_curves.png and OUT/slice_selection.png (the paper's Fig. 1 for one run), and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from meg2fmri.shards.errors import Meg2fmriError

from .evaluate import EvalConfig, evaluate, markdown


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard folder or index: a path, file:// or s3:// URL")
    p.add_argument("--runs", required=True,
                   help="folder with a run folder per variant: cgan/ (required), no_adversarial/, shuffled/")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and the figures")
    p.add_argument("--json", type=Path, default=None, help="also write the results JSON here")
    p.add_argument("--mask-fraction", type=float, default=0.2,
                   help="brain mask: mean training image above this fraction of its max (default: 0.2)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--oracle", default=None,
                   help="synthetic data: the .npz from `synth-oracle`, scored as the `oracle` row")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="score another run on the same held-out pairs as row NAME (repeatable), e.g. a cGAN "
                        "trained on --pairing paper shards with the same features")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = EvalConfig(shards=args.shards, runs=args.runs, out=args.out, mask_fraction=args.mask_fraction,
                        bootstrap=args.bootstrap, oracle=args.oracle,
                        extra=tuple(tuple(item.split("=", 1)) for item in args.extra),
                        storage_options={"endpoint_url": args.endpoint_url} if args.endpoint_url else None)
    try:
        result = evaluate(config)
    except Meg2fmriError as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 1
    print(markdown(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"evaluate: results and figures in {args.out} "
          "(results.md, results.json, pairs.png, changes.png, training_curves.png, slice_selection.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
