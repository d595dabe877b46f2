"""What every ``meg2fmri`` verb shares: storage options, verbosity, exit codes, error reporting.

A verb's module parses its arguments with only this module and ``argparse`` imported (so that
``--help`` answers at once), then imports the library and calls one function inside ``run``:

    def main(argv=None):
        args = build_parser().parse_args(argv)
        return commands.run("meg2fmri train", args, lambda: train_from(args))

Exit codes, the same in every verb: ``0`` done, ``1`` some of the work failed (runs that did not
ingest, shards that did not verify, corrupt data), ``2`` bad input (an argument, an input file, an
output that may not be written; also argparse's own usage errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

OK, PARTIAL, BAD_INPUT = 0, 1, 2

log = logging.getLogger("meg2fmri")


def json_object(text: str) -> dict:
    """``--storage-options``: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--storage-options is not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--storage-options must be a JSON object, got {text!r}")
    return value


def add_storage_options(parser: argparse.ArgumentParser, what: str = "s3:// inputs and outputs") -> None:
    """``--endpoint-url``, ``--anon`` and ``--storage-options``, spelled alike in every verb."""
    group = parser.add_argument_group("object storage (s3://)")
    group.add_argument("--endpoint-url", default=None, metavar="URL",
                       help=f"S3 endpoint for {what} (MinIO, Ceph, a test server); default: "
                       "AWS_ENDPOINT_URL or AWS. Credentials and region come the standard AWS way "
                       "(environment, profile, role)")
    group.add_argument("--anon", action=argparse.BooleanOptionalAction, default=None,
                       help="anonymous (unsigned) reads, as for public buckets like OpenNeuro's (default: "
                       "signed, except where a verb says otherwise)")
    group.add_argument("--storage-options", type=json_object, default={}, metavar="JSON",
                       help='more s3fs options, e.g. \'{"client_kwargs": {"region_name": "us-east-1"}}\'')


def storage_options(args: argparse.Namespace, anon: bool = True) -> dict:
    """The s3fs options the three storage flags give (``anon`` only where the verb reads with it)."""
    options = dict(args.storage_options)
    if args.endpoint_url:
        options["endpoint_url"] = args.endpoint_url
    if anon and args.anon is not None:
        options["anon"] = args.anon
    return options


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``-v`` (debug messages) and ``-q`` (warnings and errors only, no progress bars)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="warnings and errors only; no progress bars")


class StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a message is logged (a test's capture,
    a redirected stream), not to the one it was created with."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(args: argparse.Namespace) -> None:
    """Messages to stderr (``-q``: warnings and errors only; ``-v``: debug too); results (tables,
    paths, a slice number) stay on stdout, where scripts read them."""
    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def run(prog: str, args: argparse.Namespace, work: Callable[[], int | None]) -> int:
    """Set up logging, call ``work``, and turn the project's errors into a message and an exit code
    (``2`` for bad input, ``1`` for the rest); ``work``'s own return value (``None`` = 0) otherwise."""
    from meg2fmri.shards.errors import Meg2fmriError, exit_status

    setup_logging(args)
    try:
        status = work()
    except Meg2fmriError as err:
        log.error(f"{prog}: error: {err}")
        return exit_status(err)
    return OK if status is None else status
