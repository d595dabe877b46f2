"""``bench``: throughput measured side by side against the alternatives a user would pick.

``bench kernels``, ``bench ingest``, ``bench loader`` and ``bench train``; ``bench study`` (``make study``)
runs the engine at scale for a learning curve.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PENDING: dict[str, int] = {}


def dataset_options(parser: argparse.ArgumentParser, work_help: str) -> None:
    """``--bids-root`` and ``--work``, shared by the benchmarks that need a dataset."""
    parser.add_argument("--bids-root", type=Path, default=None,
                        help="dataset to ingest (default: synth's demo preset, written into --work)")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help=work_help)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bench``."""
    p = argparse.ArgumentParser(
        prog="bench", description="Benchmarks. Each prints a table and, with --json FILE, writes "
        '{"machine": {...}, "rows": [{"name", "median_s", "throughput", "unit", ...}]}. Figures are '
        "medians of repeats measured side by side in one run; compare ratios, not absolute times.")
    sub = p.add_subparsers(dest="which", required=True)
    kernels = sub.add_parser("kernels", help="numba kernels vs numpy references vs memcpy",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    kernels.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    ingest = sub.add_parser("ingest", help="ingest 1 worker vs all cores vs the decode floor, local vs S3",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    dataset_options(ingest, "folder for the demo dataset and the ingest outputs")
    ingest.add_argument("--subjects", default=None, help="comma-separated subset, e.g. 01,02 (default: all)")
    ingest.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration")
    ingest.add_argument("--source", choices=["local", "s3"], default="local",
                        help="s3: also ingest from (and to) moto's S3 server on loopback, side by side")
    ingest.add_argument("--long-seconds", type=float, default=600.0,
                        help="story length of the one long run timed for the ds004078 projection (0: skip)")
    ingest.add_argument("--float-volumes", type=int, default=150,
                        help="volumes of the float32 MNI-shaped run whose peak memory is measured (0: skip)")
    loader = sub.add_parser("loader", help="our loader vs webdataset, MNE+nibabel, S3, Zarr, memcpy",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    dataset_options(loader, "folder for the demo dataset, its shards and the Zarr copy (reused if present)")
    loader.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median reported)")
    loader.add_argument("--min-seconds", type=float, default=0.3,
                        help="each repeat runs whole epochs until this much time has passed")
    loader.add_argument("--paper-samples", type=int, default=4, help="samples timed for paper_style")
    loader.add_argument("--target", choices=["slice", "volume"], default="slice",
                        help="samples' fMRI: the paper's 32x32 slice, or every voxel in the brain mask "
                             "(float16; the bench preset's 106x106x72 grid, ds004078's MNI in-mask size)")
    loader.add_argument("--peers", type=Path, default=None, metavar="PYTHON",
                        help="also measure LitData and MosaicML Streaming on the same samples, with this "
                        "Python (an environment with both and this package: make bench-peers builds "
                        ".venv-peers); our loader is measured again there, in the same run")
    loader.add_argument("--peer-epochs", type=int, default=4,
                        help="timed epochs per peer configuration (the first is the cold one)")
    loader.add_argument("--png", type=Path, default=None,
                        help="bar chart (default: beside --json, or WORK/bench-loader.png)")
    train = sub.add_parser("train", help="training samples/s: loader local vs S3 vs in-memory tensors",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    dataset_options(train, "folder for the demo dataset and its shards (shared with bench loader)")
    train.add_argument("--steps", type=int, default=200, help="training steps timed per configuration")
    train.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    train.add_argument("--target", choices=["slice", "volume"], default="slice",
                       help="slice (the paper's cGAN) or volume (low-rank head and vector critic)")
    study = sub.add_parser("study", help="an SMN4Lang-shaped experiment with a learning curve (make study)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           description="Synthesise, ingest, train and evaluate a study of 12 subjects: the "
                           "training subjects hear --train-stories stories, the held-out subjects the next "
                           "--test-stories; nested training sets of --sizes stories give a learning curve. "
                           "Resumable: a step that finished is not run again. Writes OUT/study.md, "
                           "OUT/study.json, OUT/learning_curve.png (docs/study.md).")
    study.add_argument("--out", type=Path, default=Path("study-output"),
                       help="study folder (resumed if present)")
    study.add_argument("--seed", type=int, default=0, help="synth and training seed")
    study.add_argument("--subjects", default="01-12",
                       help="subjects of the study, e.g. 01-12 or 01,02,03,04")
    study.add_argument("--held-out", default="09,10,11,12", help="held-out subjects (the rest train)")
    study.add_argument("--train-stories", type=int, default=16, help="stories 1..N for training")
    study.add_argument("--test-stories", type=int, default=6, help="the next M stories, for test")
    study.add_argument("--duration", type=float, default=270.0, help="seconds per story")
    study.add_argument("--shape", default="48x48x32", help="fMRI grid XxYxZ")
    study.add_argument("--meg-sfreq", type=float, default=200.0, choices=(200.0, 500.0, 1000.0),
                       help="MEG sampling rate of the FIF files (synth --meg-sfreq)")
    study.add_argument("--sizes", default="2,4,8,16", help="training stories per learning-curve size")
    study.add_argument("--epochs", type=int, default=4, help="cGAN epochs (slice targets), every size")
    study.add_argument("--lr-step", type=int, default=2, help="halve the cGAN learning rate every N epochs")
    study.add_argument("--volume-epochs", type=int, default=2, help="whole-brain cGAN epochs (largest size)")
    study.add_argument("--no-volume", action="store_true", help="slice targets only")
    study.add_argument("--bootstrap", type=int, default=2000, help="evaluate --bootstrap")
    study.add_argument("--null-draws", type=int, default=2000, help="evaluate --null-draws")
    study.add_argument("--jobs", type=int, default=2, help="synth processes")
    study.add_argument("--keep-data", action="store_true",
                       help="keep the raw MEG and every size's shards (default: each is deleted once no "
                       "later step reads it, which keeps the study under 40 GB)")
    study.add_argument("--delete-data", action="store_true",
                       help="once the report is written, delete the dataset and the Zarr caches (results, "
                       "shards and models stay)")
    for name, issue in PENDING.items():
        sub.add_parser(name, help=f"not implemented yet (issue #{issue})")
    for one in sub.choices.values():
        one.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    return p


def run_study(args: argparse.Namespace) -> int:
    """``bench study``: run (or resume) the study; 0 done, 1 a step failed, 2 bad input."""
    from meg2fmri.shards.split import run_list

    from .study import Study, StudyConfig

    try:
        config = StudyConfig(
            out=args.out, seed=args.seed, subjects=tuple(f"{i:02d}" for i in run_list(args.subjects)),
            held_out=tuple(s.strip().zfill(2) for s in args.held_out.split(",")),
            train_stories=args.train_stories, test_stories=args.test_stories, duration=args.duration,
            shape=args.shape, meg_sfreq=args.meg_sfreq,
            sizes=tuple(sorted({int(v) for v in args.sizes.split(",")})), epochs=args.epochs,
            lr_step=args.lr_step, volume_epochs=args.volume_epochs, volume=not args.no_volume,
            bootstrap=args.bootstrap, null_draws=args.null_draws, jobs=args.jobs,
            keep_data=not args.delete_data, prune=not args.keep_data)
    except ValueError as err:
        print(f"bench study: error: {err}", file=sys.stderr)
        return 2
    try:
        Study(config, log=lambda line: print(line, flush=True)).run()
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"bench study: results in {args.out}/study.md, {args.out}/learning_curve.png", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``bench``: parse ``argv``, run one benchmark; the exit code."""
    args = build_parser().parse_args(argv)
    if args.which in PENDING:
        print(f"bench {args.which}: not implemented yet (issue #{PENDING[args.which]})", file=sys.stderr)
        return 2
    if args.which == "study":
        return run_study(args)
    from .report import emit

    if args.which == "kernels":
        from .kernels import run

        rows, notes = run(args.repeats)
    elif args.which == "train":
        from .train_bench import run

        rows, notes = run(args.work, args.bids_root, args.steps, args.repeats, args.target)
    elif args.which == "loader":
        from .loader_bench import run

        png = args.png or (args.json.with_suffix(".png") if args.json else args.work / "bench-loader.png")
        rows, notes = run(args.work, args.bids_root, args.repeats, args.min_seconds, args.paper_samples, png,
                          args.target, peers=args.peers, peer_epochs=args.peer_epochs)
    else:
        from .ingest_bench import run

        subjects = None if args.subjects is None else tuple(s.zfill(2) for s in args.subjects.split(","))
        rows, notes = run(args.bids_root, args.work, subjects, args.repeats, args.source, args.long_seconds,
                          args.float_volumes)
    emit(rows, args.json, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
