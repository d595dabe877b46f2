"""The cGAN and its jobs: ``train`` (``meg2fmri.model.train.train``), ``evaluate``
(``meg2fmri.model.eval.evaluate.evaluate``), ``generate`` (``meg2fmri.model.generate.generate``), and the
configs and model card they share.

The names below are imported on first use (PEP 562), so that a command's ``--help`` does not
import the heavy libraries behind them.
"""

from importlib import import_module

_HOME = {
    "TrainConfig": ".configs",
    "EvalConfig": ".configs",
    "GenerateConfig": ".configs",
    "ModelCard": ".checkpoint",
    "load_checkpoint": ".checkpoint",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
