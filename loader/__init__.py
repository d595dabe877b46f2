"""Stream shards from a local folder or ``s3://`` into (GPU) batches, exactly once, resumably.

``ShardLoader`` is the entry point; ``plan`` holds the pure partitioning; ``decode`` the strided
shard views; ``storage`` the local and S3 stores; ``prefetch`` the device prefetcher;
``zarr_samples`` the map-style Zarr dataset.

The names below are imported on first use (PEP 562), so that ``meg2fmri shards --help`` does not
import torch.
"""

from importlib import import_module

__all__ = ["DevicePrefetcher", "ShardDataset", "ShardLoader", "StoreConfig", "StreamConfig", "open_store",
           "resolve_world"]
_HOME = {"ShardDataset": ".dataset", "StreamConfig": ".dataset", "DevicePrefetcher": ".prefetch",
         "StoreConfig": ".storage", "open_store": ".storage", "ShardLoader": ".stream",
         "resolve_world": ".stream"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
