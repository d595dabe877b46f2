"""Megatron-Energon's view of our shards (``bench/peers.py``): the sample type its ``dataset.yaml``
names. Energon reads our WebDataset shards as they are; only its ``.nv-meta`` description is added.
Imported only in the peers' environment (it imports Energon)."""

from __future__ import annotations

import numpy as np
from megatron.energon import Sample
from megatron.energon.edataclass import edataclass


@edataclass
class EnergonSample(Sample):
    """One of our samples: the MEG features and the target, as stored (``meg.npy``, ``fmri.npy``)."""

    meg: np.ndarray
    fmri: np.ndarray
