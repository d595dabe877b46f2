"""The per-run pairs between the task that makes them and the shard writer (``OUT/.work/``).

Each finished run's pairs are one ``.npz`` object (``meg``, ``fmri``, ``meta``, ``correlation``,
``storage_error``) under ``.work/pairs-<hash of the pairing>/``, put whole (so its existence is its
commit); other pairings' folders are dropped (cheap to recompute from the cache).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

from meg2fmri.shards.commit import Location
from meg2fmri.shards.format import RunId

from .fence import ATTEMPT, WORK, fence
from .pairing import PairingConfig


@dataclass
class RunPairs:
    """One run's pairs as stored between the task and the shard writer (``.npz`` under the work folder)."""
    meg: np.ndarray  # (samples, features) float32
    fmri: np.ndarray  # (samples, *target) in the target's stored dtype
    meta: list[dict]
    correlation: np.ndarray  # (slices,) the paper's slice correlation (NaN where undefined)
    storage_error: float  # max |stored - float32| of the targets


def pairs_folder(pairing: PairingConfig) -> str:
    """The work folder of one pairing's pairs, named by a hash of its options."""
    digest = hashlib.sha256(json.dumps(pairing.to_json(), sort_keys=True).encode()).hexdigest()
    return f"{WORK}/pairs-{digest[:12]}"


def pairs_path(pairing: PairingConfig, run: RunId) -> str:
    """The ``.npz`` of one run's pairs in that folder."""
    return f"{pairs_folder(pairing)}/{run.name}.npz"


def save_pairs(out: Location, pairing: PairingConfig, run: RunId, pairs: RunPairs, attempt: str = "") -> None:
    """Commit one run's pairs (fenced by ``attempt``: a superseded attempt writes nothing)."""
    buffer = io.BytesIO()
    np.savez(buffer, meg=pairs.meg, fmri=pairs.fmri, meta=json.dumps(pairs.meta),
             correlation=pairs.correlation, storage_error=pairs.storage_error)
    fence(out, attempt, f"{run} pairs")
    out.put(pairs_path(pairing, run), buffer.getvalue())


def load_pairs(out: Location, pairing: PairingConfig, run: RunId) -> RunPairs:
    """One run's committed pairs."""
    with np.load(io.BytesIO(out.read_bytes(pairs_path(pairing, run)))) as npz:
        return RunPairs(npz["meg"], npz["fmri"], json.loads(str(npz["meta"])), npz["correlation"],
                        float(npz["storage_error"]) if "storage_error" in npz else 0.0)


def paired_runs(out: Location, pairing: PairingConfig) -> set[RunId]:
    """Runs whose pairs for ``pairing`` exist."""
    return {r for n in out.names(pairs_folder(pairing)) if n.endswith(".npz")
            and (r := RunId.parse(n.removesuffix(".npz"))) is not None}


def reset_work(out: Location, pairing: PairingConfig) -> None:
    """Drop pairs of other pairing configurations."""
    keep = {pairs_folder(pairing).rsplit("/", 1)[-1], ATTEMPT.rsplit("/", 1)[-1]}
    for name in out.names(WORK):
        if name not in keep:
            out.remove(f"{WORK}/{name}")
