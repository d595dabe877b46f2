"""``bench train``: cGAN training samples/s fed by our loader (local, S3) vs an in-memory tensor dataset.

The in-memory row is the loader's upper bound: the same batches, already tensors, sliced from
memory. All three run the same update (critic then generator, ``model/train.py``) on the same
device, one after another in one run, each for ``steps`` steps after a warm-up epoch.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from meg2fmri.loader import ShardLoader, StoreConfig, StreamConfig
from meg2fmri.model.nets import to_tanh
from meg2fmri.model.train import TrainConfig, build_models, update

from .loader_bench import ensure_shards, moto_process, upload_train_shards
from .report import row


def timed_steps(batches, steps: int, config: TrainConfig, width: int, size: int, device) -> float:
    """Samples/s of ``steps`` training steps over ``batches`` (an iterable, re-iterated as needed)."""
    torch.manual_seed(0)
    generator, critic = (m.to(device) for m in build_models(width, size))
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas)
    bce, mse = nn.BCEWithLogitsLoss(), nn.MSELoss()
    done = samples = 0
    start = None
    while done < steps:
        for batch in batches:
            if start is None and done == 5:  # warm-up steps excluded
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, samples = time.perf_counter(), 0
            update(generator, critic, opt_g, opt_d, batch["meg"], to_tanh(batch["fmri"]), bce, mse, config)
            done += 1
            samples += len(batch["meg"])
            if done >= steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return samples / (time.perf_counter() - start)


def in_memory(loader: ShardLoader) -> list[dict]:
    return [{"meg": b["meg"], "fmri": b["fmri"]} for b in loader]


def run(work: Path, bids_root: Path | None, steps: int = 200,
        repeats: int = 3) -> tuple[list[dict], list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    _, shards = ensure_shards(work, bids_root)
    config = TrainConfig(shards=str(shards), out="")
    local = ShardLoader(shards, "train", StreamConfig(batch_size=config.batch_size), device="auto")
    device, width, size = local.device, local.index.features["width"], local.index.image_size
    memory = in_memory(local)
    server, endpoint = moto_process()
    try:
        url = upload_train_shards(endpoint, shards, [e for e in local.index.shards if e.split == "train"],
                                  "meg2fmri-train")
        remote = ShardLoader(url, "train", StreamConfig(batch_size=config.batch_size),
                             StoreConfig(storage_options={"endpoint_url": endpoint}), device="auto")
        results = {"in_memory": [], "local": [], "s3": []}
        for _ in range(repeats):  # interleaved, so drifting machine load hits all three alike
            results["in_memory"].append(timed_steps(memory, steps, config, width, size, device))
            results["local"].append(timed_steps(local, steps, config, width, size, device))
            results["s3"].append(timed_steps(remote, steps, config, width, size, device))
    finally:
        server.terminate()
        server.wait()
    rows = []
    for name, values in results.items():
        value = statistics.median(values)
        rows.append(row(f"train_{name}", 1 / value, value, "samples/s", device=str(device),
                        batch_size=config.batch_size))
    medians = {name: statistics.median(v) for name, v in results.items()}
    notes = [f"local / in-memory = {medians['local'] / medians['in_memory']:.0%} (good when >= 90%)",
             f"s3 / in-memory = {medians['s3'] / medians['in_memory']:.0%}"]
    return rows, notes
