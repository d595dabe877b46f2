"""The on-disk contracts between ingest and the loader: the sample format, the index, the split,
the commit rule and the error classes. Imports nothing else of ours.

The names below are imported on first use (PEP 562), so that a command's ``--help`` does not
import the heavy libraries behind them.
"""

from importlib import import_module

_HOME = {
    "TargetLayout": ".format",
    "RunId": ".format",
    "ShardIndex": ".index",
    "ShardEntry": ".index",
    "FeatureSpec": ".index",
    "PairingSpec": ".index",
    "read_index": ".index",
    "Location": ".commit",
    "Meg2fmriError": ".errors",
    "InputError": ".errors",
    "IntegrityError": ".errors",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
