"""Keep batches in flight ahead of the consumer, and on the device before it asks.

``background`` runs any iterator in a thread, a few items ahead, so that reading and gathering
(numba, without the GIL) overlap the training step. ``DevicePrefetcher`` takes any iterable of batch
dicts. On CUDA, up to ``depth`` batches are copied to the GPU from pinned host memory with
``non_blocking=True`` on a separate CUDA stream, so host-to-device copies overlap compute; the
consuming stream waits on a per-batch event, and ``record_stream`` keeps the caching allocator from
reusing a tensor's memory early. Without CUDA the same code runs with the copies as no-ops on the CPU.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator

import torch

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def background(iterable: Iterable, depth: int) -> Iterator:
    """Iterate ``iterable`` in a daemon thread, ``depth`` items ahead; errors re-raised here."""
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_END)
        except BaseException as err:  # handed to the consumer, never lost
            items.put(_Failure(err))

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                items.get(timeout=0.05)
        thread.join()


class DevicePrefetcher:
    """Yield batches already on ``device``, ``depth`` batches ahead (see the module docstring)."""

    def __init__(self, batches: Iterable[dict], device: torch.device | str = "cpu", depth: int = 2):
        self.batches, self.device, self.depth = batches, torch.device(device), depth
        self.cuda = self.device.type == "cuda"

    def __iter__(self) -> Iterator[dict]:
        source = iter(self.batches)
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        in_flight: deque = deque()
        try:
            for batch in source:
                in_flight.append(self._copy(batch, stream))
                if len(in_flight) > self.depth:
                    yield self._ready(*in_flight.popleft())
            while in_flight:
                yield self._ready(*in_flight.popleft())
        finally:
            if hasattr(source, "close"):
                source.close()

    def _copy(self, batch: dict, stream) -> tuple[dict, dict, object]:
        context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        out, host = {}, {}
        with context:
            for name, value in batch.items():
                if isinstance(value, torch.Tensor):
                    if self.cuda and not value.is_pinned():
                        value = value.pin_memory()
                    host[name] = value  # kept alive until the copy is waited on
                    out[name] = value.to(self.device, non_blocking=True)
                else:
                    out[name] = value
        event = None
        if stream is not None:
            event = torch.cuda.Event()
            event.record(stream)
        return out, host, event

    def _ready(self, out: dict, host: dict, event) -> dict:
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for value in out.values():
                if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                    value.record_stream(current)
        return out
