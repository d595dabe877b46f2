"""The checkpoint ``train`` writes and ``train --resume``, ``evaluate`` and ``generate`` read.

``checkpoint.pt`` (``torch.save`` of one dict, replaced whole through the commit rule) holds:

- ``card``: the ``ModelCard`` below as a plain dict: what a reader needs to use the model without
  the shards it was trained on (features, target layout, head, pairing, TR, smoothing, mean target,
  where its output sits in the brain, versions);
- ``generator``, ``critic``: the networks' weights;
- ``opt_g``, ``opt_d``, ``sched_g``, ``sched_d``, ``loader``, ``rng``, ``shuffler``, ``step``: what a
  resume needs to go on bit for bit;
- ``config`` (the ``TrainConfig`` as a dict, storage options dropped), ``index_dataset``,
  ``missing_runs``.

Checkpoints written before the card existed kept it as ``model`` with fewer keys; ``ModelCard.from_dict``
upgrades them once, here, so no reader checks a key itself.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np

from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import TargetLayout

from .outputs import CHECKPOINT, checkpoint_of

# ds004078's repetition time, the only TR a checkpoint could have been trained on before the card
# recorded it (every run the engine ingested until then was SMN4Lang's or synth's, TR 0.71 s)
LEGACY_TR = 0.71
CARD_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What a trained model is: its inputs, its outputs and how they were made."""

    width: int  # features the generator reads (len(feature_index))
    target: TargetLayout  # what it predicts: a (size, size) slice, or a vector of voxels or parcels
    head: str  # "dense" (the paper's generator) or "lowrank" (principal components of the changes)
    features: str  # feature kind of the shards: "mean" or "bandpower"
    feature_names: tuple[str, ...]  # every feature of the shards, in order
    feature_index: tuple[int, ...]  # which of them the generator reads
    pairing: dict  # ingest's pairing options it was trained on (pairing, stride, lag, epoch, ...)
    tr: float  # s: the fMRI repetition time of its training targets; generate's output sampling
    smooth: float = 0.0  # px: Gaussian sigma of the generated change (slice targets)
    head_choice: dict | None = None  # how many components and why (low-rank head)
    mean_target: np.ndarray | None = None  # (*target shape) mean training target in [0, 1]
    placement: dict = field(default_factory=dict)  # the index's target entry: grid, affine, mask bits
    versions: dict = field(default_factory=dict)  # meg2fmri and torch that trained it

    def __post_init__(self):
        if self.width != len(self.feature_index):
            raise InputError(f"model card: width {self.width} but {len(self.feature_index)} feature indices")
        if self.head not in ("dense", "lowrank"):
            raise InputError(f"model card: head {self.head!r} is neither 'dense' nor 'lowrank'")
        if not self.tr > 0:
            raise InputError(f"model card: TR must be > 0 s, got {self.tr}")

    def to_dict(self) -> dict:
        out = asdict(self)
        t = self.target
        out["target"] = {"kind": t.kind, "shape": list(t.shape), "dtype": t.dtype}
        out["feature_names"], out["feature_index"] = list(self.feature_names), list(self.feature_index)
        return {"card_version": CARD_VERSION, **out}

    @classmethod
    def from_dict(cls, obj: dict) -> ModelCard:
        """A card from ``to_dict``'s output, or from an older checkpoint's ``model`` entry (upgraded)."""
        obj = dict(obj)
        obj.pop("card_version", None)
        if "target" not in obj:  # before voxel targets: a square slice of ``size``
            obj["target"] = {"kind": "slice", "shape": [obj["size"]] * 2, "dtype": "float32"}
        obj.pop("size", None)
        obj.setdefault("head", "dense")
        obj.setdefault("tr", LEGACY_TR)
        obj.setdefault("feature_names", [])
        obj.setdefault("feature_index", list(range(obj["width"])))
        obj.setdefault("pairing", {})
        obj.setdefault("features", obj["pairing"].get("features", "mean"))
        mean = obj.get("mean_target")
        if mean is not None and not isinstance(mean, np.ndarray):
            mean = mean.numpy() if hasattr(mean, "numpy") else np.asarray(mean)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in obj.items() if k in known} | {
            "target": TargetLayout.from_json(obj["target"]), "mean_target": mean,
            "feature_names": tuple(obj["feature_names"]), "feature_index": tuple(obj["feature_index"])})

    def check_resumable(self, path: str, width: int, target: TargetLayout, smooth: float) -> None:
        """Refuse to resume this model on other shards or with another ``--smooth``."""
        if self.width != width or tuple(self.target.shape) != tuple(target.shape):
            raise InputError(f"{path}: checkpoint is for {self.width} features x {self.target.kind} "
                             f"{list(self.target.shape)}, these shards give {width} x {target.kind} "
                             f"{list(target.shape)}; use the shards it was trained on, or a new --out")
        if self.smooth != smooth:
            raise InputError(f"{path}: checkpoint was trained with --smooth {self.smooth}, not {smooth}; "
                             "resume with its value, or use a new --out")


def load_checkpoint(model: str, storage_options: dict | None = None, option: str = "--model",
                    digest: list | None = None) -> tuple[dict, ModelCard]:
    """``(state, card)`` of a ``train --out`` folder, its ``.pt`` file, or an ``s3://`` prefix; an
    ``InputError`` naming ``option`` if there is none or it is not ours. The file's sha256 is
    appended to ``digest`` when one is given."""
    import hashlib

    import torch

    folder, name = checkpoint_of(model, storage_options)
    try:
        data = folder.read_bytes(name)
    except FileNotFoundError:
        raise InputError(f"{option} {model}: no {CHECKPOINT} there; pass a `train --out` folder") from None
    if digest is not None:
        digest.append(hashlib.sha256(data).hexdigest())
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        card = ModelCard.from_dict(state["card"] if "card" in state else state["model"])
    except InputError:
        raise
    except Exception as err:  # a file that is not a meg2fmri checkpoint
        raise InputError(f"{option} {folder.url_of(name)}: not a meg2fmri checkpoint ({type(err).__name__}: "
                         f"{err})") from None
    return state, card


def versions() -> dict:
    """The versions that trained a model (recorded on its card)."""
    import torch

    from meg2fmri import __version__

    return {"meg2fmri": __version__, "torch": torch.__version__}
