"""Reused batch buffers: at whole-brain sizes a fresh buffer costs more than the copy into it.

A freshly allocated buffer of tens of MB comes from ``mmap`` and faults in a zeroed page per 4 KB on
its first write: measured here, fresh 32-MB buffers were filled at 1.2 GB/s and reused ones at
8.5 GB/s. ``BufferPool`` hands out numpy arrays over blocks it keeps; a block goes back to the pool
only when nothing views it any more: each array's memory is owned by a small ``_Lease`` object
(numpy collapses every view's ``base`` to it, and ``torch.from_numpy`` keeps the array alive), and a
finalizer on the lease returns the block. A batch a caller keeps (a list of batches in
``evaluate``) keeps its block out of the pool, so reuse never overwrites data still in use.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch

KEEP_PER_SIZE = 4  # free blocks kept per size (more are released to the allocator)
KEEP_BYTES = 1 << 30  # and at most this much free memory in all, per pool


class _Lease:
    """Exposes a block's bytes to numpy; its lifetime is the lifetime of every view of them."""

    __slots__ = ("__array_interface__", "__weakref__", "block")

    def __init__(self, block: torch.Tensor):
        self.block = block
        self.__array_interface__ = {"data": (block.data_ptr(), False), "shape": (block.numel(),),
                                    "typestr": "|u1", "version": 3}


class BufferPool:
    """Blocks of host memory (pinned when asked), reused once every view of them is gone."""

    def __init__(self, pin: bool = False):
        self.pin = pin
        self.free: dict[int, list[torch.Tensor]] = {}
        self.kept = 0  # bytes in the free lists
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:  # a pool travels (spawned workers) empty, with a new lock
        return {"pin": self.pin}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["pin"])

    def take(self, nbytes: int) -> np.ndarray:
        """A ``uint8`` array of ``nbytes`` (contents undefined)."""
        with self.lock:
            blocks = self.free.get(nbytes)
            block = blocks.pop() if blocks else None
            self.kept -= 0 if block is None else nbytes
        if block is None:
            block = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
        lease = _Lease(block)
        weakref.finalize(lease, self._release, block)
        return np.asarray(lease)

    def _release(self, block: torch.Tensor) -> None:
        with self.lock:
            blocks = self.free.setdefault(block.numel(), [])
            if len(blocks) < KEEP_PER_SIZE and self.kept + block.numel() <= KEEP_BYTES:
                blocks.append(block)
                self.kept += block.numel()

    def array(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype`` from the pool."""
        dtype = np.dtype(dtype)
        return self.take(int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)
