"""``meg2fmri shards``: check, describe and convert the shards ``ingest`` wrote (local, file://, s3://).

    meg2fmri shards verify demo-output/ingest    # sha256 + layout of every shard; exit 1 if any is bad
    meg2fmri shards info s3://bucket/shards --endpoint-url http://127.0.0.1:9000
    meg2fmri shards to-zarr demo-output/ingest demo-output/samples.zarr
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meg2fmri import commands


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments of ``meg2fmri shards``."""
    parser = argparse.ArgumentParser(prog="meg2fmri shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("source", help="shard folder or index.json: a path, file:// or s3://bucket/prefix URL")
        commands.add_storage_options(p, "an s3:// SOURCE")
        commands.add_verbosity(p)

    common(sub.add_parser("verify", help="check each shard's size, sha256 and layout against the index"))
    common(sub.add_parser("info", help="print the index summary: counts, split, features, shards"))
    to_zarr = sub.add_parser("to-zarr", help="write the samples as a random-access Zarr group")
    common(to_zarr)
    to_zarr.add_argument("out", help="local folder for the Zarr group")
    to_zarr.add_argument("--rows-per-chunk", type=int, default=64, help="samples per chunk (default: 64)")
    to_zarr.add_argument("--overwrite", action="store_true", help="replace an existing folder at OUT")
    return parser.parse_args(argv)


def verify(source: str, config, progress: bool) -> int:
    """Check every shard against the index; 0 if all are whole, 1 otherwise."""
    from tqdm import tqdm

    from meg2fmri.shards.errors import Meg2fmriError

    from .decode import SampleLayout, shard_arrays
    from .storage import open_store

    store = open_store(source, config)
    index = store.read_index()
    layout = SampleLayout.from_index(index)
    bad = []
    for entry in tqdm(index.shards, desc="verify", unit="shard", disable=not progress):
        try:
            shard_arrays(store.shard(entry), entry, layout)
        except Meg2fmriError as err:
            bad.append((entry, err))
    for entry, err in bad:
        print(f"BAD  {entry.name} ({entry.count} samples): {err}")
    good = sum(e.count for e in index.shards) - sum(e.count for e, _ in bad)
    print(f"{len(index.shards) - len(bad)} of {len(index.shards)} shards ok ({good} samples); "
          f"{len(bad)} bad ({sum(e.count for e, _ in bad)} samples)")
    return 1 if bad else 0


def info(source: str, config) -> int:
    """Print the index's summary: dataset, features, target, split, counts, failed runs."""
    from meg2fmri.shards.split import SPLITS

    from .storage import open_store

    index = open_store(source, config).read_index()
    print(f"dataset   {index.dataset.get('name', '?')} ({index.dataset.get('fingerprint', '')[:12]})")
    target = index.target
    print(f"features  {index.features['kind']} x {index.features['width']}")
    print(f"target    {target['kind']} {'x'.join(map(str, target['shape']))} {target['dtype']}")
    print(f"held out  subjects {', '.join(index.held_out('subjects'))}; stories "
          f"{', '.join(map(str, index.held_out('stories'))) or 'none'}")
    for split in SPLITS:
        n = sum(1 for e in index.shards if e.split == split)
        print(f"{split:12s} {index.count(split)} samples in {n} shards")
    if index.failed:
        print(f"failed    {len(index.failed)} runs: " + ", ".join(f"sub-{f['subject']} run-{f['run']}"
                                                            for f in index.failed))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``meg2fmri shards``: parse ``argv``, run the subcommand; the exit code."""
    args = parse_args(argv)

    def work() -> int:
        from meg2fmri.shards.commit import Location

        from .storage import StoreConfig

        config = StoreConfig(storage_options=commands.storage_options(args))
        if args.command == "verify":
            return verify(args.source, config, not args.quiet)
        if args.command == "info":
            return info(args.source, config)
        from .zarr_samples import export_zarr

        Location(Path(args.out).absolute().parent).check_writable("OUT")
        out = export_zarr(args.source, args.out, store=config, rows_per_chunk=args.rows_per_chunk,
                          progress=not args.quiet, overwrite=args.overwrite)
        print(f"zarr samples: {out}")
        return commands.OK

    return commands.run("shards", args, work)


if __name__ == "__main__":
    sys.exit(main())
