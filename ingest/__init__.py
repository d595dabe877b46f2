"""Ingest a ds004078-layout BIDS dataset (local or ``s3://``) into a Zarr cache and WebDataset shards.

``run_ingest(IngestConfig(...))`` is the entry point; ``synth`` (``meg2fmri.ingest.synth``) writes a
synthetic dataset to ingest.

The names below are imported on first use (PEP 562), so that a command's ``--help`` does not
import the heavy libraries behind them.
"""

from importlib import import_module

_HOME = {
    "IngestConfig": ".config",
    "IngestReport": ".driver",
    "run_ingest": ".driver",
    "PairingConfig": ".pairing",
    "RunOutcome": ".outcome",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
