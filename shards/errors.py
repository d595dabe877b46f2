"""The project's error hierarchy.

It lives in ``shards`` because ``shards`` is the one package every other package may import
(it imports nothing of ours). Each class also inherits from the built-in it refines, so callers
can catch either ``BidsInputError`` or plain ``ValueError``.

A message names the file or value that was wrong, what was wrong, and what to do about it.
"""

from __future__ import annotations


class Meg2fmriError(Exception):
    """Base class of every error raised on purpose by meg2fmri."""


class InputError(Meg2fmriError, ValueError):
    """An input (argument, option, file content) is not acceptable."""


class BidsInputError(InputError):
    """A BIDS dataset is missing something or holds something we cannot read."""


class EmptySplitError(InputError):
    """A shard index has no samples in the split asked for (e.g. no ``seen_story`` runs were ingested)."""


class OutputExistsError(Meg2fmriError, FileExistsError):
    """An output location already holds data that we refuse to overwrite."""


class OutputNotWritableError(InputError):
    """An output location (``--out``) cannot be written: checked before any work starts."""


class StaleAttemptError(Meg2fmriError):
    """A task of an earlier, superseded ingest attempt tried to write (a straggler of a killed driver):
    the write is refused, so it can never be taken as committed."""


class IntegrityError(Meg2fmriError, OSError):
    """Data on disk is not what its index or header says (corrupt, truncated, wrong hash)."""


class ShardIntegrityError(IntegrityError):
    """A shard does not match its index entry."""


class ShardReadError(Meg2fmriError, OSError):
    """A shard could not be read from its storage, after retries (network, server, permissions)."""


def exit_status(err: Meg2fmriError) -> int:
    """A command's exit code for an error it reports: 2 for bad input (an argument, an input file, an
    output that cannot or may not be written), 1 for anything else (data found corrupt, a read that
    failed after retries)."""
    return 2 if isinstance(err, InputError | OutputExistsError) else 1
