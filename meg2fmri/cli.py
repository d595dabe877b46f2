"""``meg2fmri <verb>``: the one command.

Each verb is a module with ``main(argv) -> int``, imported only when it is called, so that
``meg2fmri --help`` and ``meg2fmri <verb> --help`` answer without importing torch, MNE or Ray.
``ingest`` and ``bench`` are also commands of their own (the design card's ``ingest --subjects all``
and ``bench loader``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

VERBS = {
    "synth": ("meg2fmri.ingest.synth.cli", "write an SMN4Lang-like synthetic BIDS dataset"),
    "ingest": ("meg2fmri.ingest.cli", "BIDS (local or s3://) -> Zarr cache + WebDataset shards"),
    "shards": ("meg2fmri.loader.cli", "verify, describe or convert ingest's shards"),
    "train": ("meg2fmri.model.train_cli", "train the cGAN (or a control) streaming from shards"),
    "evaluate": ("meg2fmri.model.eval.evaluate_cli", "score models and baselines on held-out sets"),
    "generate": ("meg2fmri.model.generate_cli", "a MEG recording (FIF) in, a BOLD NIfTI out"),
    "oracle": ("meg2fmri.model.eval.oracle_cli", "a synth dataset's noise-free truth for evaluate --oracle"),
    "bench": ("meg2fmri.bench.cli", "throughput against the alternatives; bench study: the learning curve"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``--version`` and the verb."""
    p = argparse.ArgumentParser(
        prog="meg2fmri", description="MEG recordings into synthetic fMRI: a data engine and a cGAN. "
        "`meg2fmri VERB --help` for each verb's options. Exit codes: 0 done, 1 some of the work failed, "
        "2 bad input.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {name:<9} {text}" for name, (_, text) in VERBS.items()))
    p.add_argument("--version", action="version", version=f"meg2fmri {__version__}")
    p.add_argument("verb", choices=VERBS, metavar="VERB", help="one of: " + ", ".join(VERBS))
    return p


def main(argv: list[str] | None = None) -> int:
    """``meg2fmri VERB ARGS``: hand ``ARGS`` to the verb's ``main``; its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # --help, --version, or a usage error
        parser.print_usage(sys.stderr)
        return 2
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(VERBS[args.verb][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
