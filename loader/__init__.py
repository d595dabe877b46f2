"""Stream shards from a local folder or ``s3://`` into (GPU) batches, exactly once, resumably.

``ShardLoader`` is the entry point; ``plan`` holds the pure partitioning; ``decode`` the strided
shard views; ``storage`` the local and S3 stores; ``prefetch`` the device prefetcher;
``zarr_samples`` the map-style Zarr dataset.
"""

from .dataset import ShardDataset, StreamConfig
from .prefetch import DevicePrefetcher
from .storage import StoreConfig, open_store
from .stream import ShardLoader, resolve_world

__all__ = ["DevicePrefetcher", "ShardDataset", "ShardLoader", "StoreConfig", "StreamConfig", "open_store",
           "resolve_world"]
