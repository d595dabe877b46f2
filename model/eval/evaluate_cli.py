"""``meg2fmri evaluate``: score the trained variants and baselines on every evaluation set.

Examples:
    meg2fmri evaluate --shards demo-output/ingest --runs demo-output/runs --out demo-output/eval \
        --bids-root demo-output/bids --oracle demo-output/oracle.npz
    meg2fmri evaluate --protocol paper --shards demo-output/paper/ingest --runs demo-output/paper/runs \
        --out ...

Sets: test (held-out subjects x held-out stories), seen_story, seen_subject. Writes OUT/results.json,
OUT/results.md (a table per set with run-level intervals and circular-shift p-values),
OUT/predictions/SET/METHOD.npz (keys, targets, predictions), OUT/pairs.png, OUT/changes.png,
OUT/training_curves.png and OUT/slice_selection.png, and prints the tables. With --protocol paper:
OUT/paper_protocol.{md,json}, the paper's MSE and scikit-image SSIM beside its 0.046 / 0.622.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from meg2fmri import commands

from ..configs import EvalConfig

log = logging.getLogger("meg2fmri")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``meg2fmri evaluate``."""
    p = argparse.ArgumentParser(prog="meg2fmri evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard folder or index: a path, file:// or s3:// URL")
    p.add_argument("--runs", default=None,
                   help="folder with a run folder per variant: cgan/ (required there), no_adversarial/, "
                   "shuffled/; without it only the baselines are scored (mean image, ridge, stimulus, "
                   "story clock, oracle)")
    p.add_argument("--out", required=True,
                   help="folder or s3:// prefix for results.json, results.md and the figures (each "
                   "written whole)")
    p.add_argument("--json", type=Path, default=None, help="also write the results JSON here")
    p.add_argument("--mask-fraction", type=float, default=0.2,
                   help="brain mask: mean training image above this fraction of its max (default: 0.2)")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="bootstrap resamples of whole runs (default: 2000)")
    p.add_argument("--null-draws", type=int, default=2000,
                   help="circular-shift null draws for voxelwise r (default: 2000)")
    p.add_argument("--min-shift", type=float, default=15.0, metavar="SECONDS",
                   help="smallest time shift of a run's predictions against its targets in the null "
                        "(not circular; default: 15 s, ~2 HRFs)")
    p.add_argument("--bids-root", default=None,
                   help="the BIDS dataset (for stimuli/audio/story_N.wav): adds the `stimulus` baseline")
    p.add_argument("--protocol", choices=["standard", "paper"], default="standard",
                   help="paper: only the paper's MSE and scikit-image SSIM (7x7, per-image range) of every "
                        "run and the mean image, beside the paper's 0.046 / 0.622 (default: standard)")
    p.add_argument("--oracle", default=None,
                   help="synthetic data: the .npz from `meg2fmri oracle`, scored as the `oracle` row")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="score another run on the same held-out pairs as row NAME (repeatable), e.g. a cGAN "
                        "trained on --pairing paper shards with the same features")
    p.add_argument("--roi", default=None, metavar="ROI.npz",
                   help="score the ROI of this roi.npz (written by an evaluation of the same target, e.g. "
                   "on a larger training set: a learning curve's sizes share one ROI) instead of choosing "
                   "one from these shards' training split")
    commands.add_storage_options(p, "s3:// --shards, --runs and --out")
    commands.add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``meg2fmri evaluate``: parse ``argv``, evaluate, print the tables; the exit code."""
    args = build_parser().parse_args(argv)

    def work() -> None:
        from meg2fmri.shards.commit import Location, write_atomic

        config = EvalConfig(shards=args.shards, runs=args.runs, out=args.out,
                            mask_fraction=args.mask_fraction,
                            bootstrap=args.bootstrap, null_draws=args.null_draws, min_shift_s=args.min_shift,
                            oracle=args.oracle, bids_root=args.bids_root, roi=args.roi,
                            extra=tuple(tuple(item.split("=", 1)) for item in args.extra),
                            storage_options=commands.storage_options(args) or None)
        if args.json is not None:
            Location(args.json.absolute().parent).check_writable("--json")
        from .evaluate import evaluate  # torch, once the arguments are good
        from .paper import paper_markdown, paper_protocol
        from .report import markdown

        if args.protocol == "paper":
            print(paper_markdown(paper_protocol(config)))
            log.info(f"evaluate: {args.out}/paper_protocol.md and paper_protocol.json")
            return
        result = evaluate(config)
        print(markdown(result))
        if args.json is not None:
            write_atomic(args.json, (json.dumps(result, indent=1) + "\n").encode())
        volume = "maps" in next(iter(result["sets"].values()))
        made = ("maps/SET/METHOD_r.nii.gz, _r2.nii.gz, _r.png" if volume
                else "pairs.png, changes.png, training_curves.png, slice_selection.png")
        log.info(f"evaluate: results and figures in {args.out} (results.md, results.json, predictions/, "
                 f"{made})")

    return commands.run("evaluate", args, work)


if __name__ == "__main__":
    sys.exit(main())
