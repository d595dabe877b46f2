"""``synth``: an SMN4Lang-like BIDS dataset with a known MEG <-> BOLD coupling and its ground truth.

``write_dataset(SynthConfig.from_preset(...))`` writes one; ``truth`` reads its ground truth.

The names below are imported on first use (PEP 562), so that a command's ``--help`` does not
import the heavy libraries behind them.
"""

from importlib import import_module

_HOME = {
    "SynthConfig": ".config",
    "write_dataset": ".writer",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
