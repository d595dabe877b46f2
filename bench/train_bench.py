"""``bench train``: cGAN training samples/s fed by our loader (local, S3) vs an in-memory tensor dataset.

The in-memory row is the loader's upper bound: the same batches, already tensors, sliced from
memory. All three run the same update (critic then generator, ``model/train.py``) on the same
device, one after another in one run, each for ``steps`` steps after a warm-up epoch.

``--target volume``: whole-brain samples (the bench preset's in-mask voxels, float16 in the shards)
through the low-rank generator (``COMPONENTS`` components: the most ``train`` picks by default) and
the vector critic. Each row states the model's parameters and training memory (weights, gradients
and Adam's two moments, plus the head's fixed components), and notes project them to ds004078 in
MNI space (the in-mask voxel count of nilearn's 2-mm MNI152 brain mask) beside a dense output layer.
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

from .fixtures import ensure_shards, moto_process, upload_train_shards
from .report import row

COMPONENTS = 256  # TrainConfig.max_components


def random_head(values: int, k: int = COMPONENTS) -> dict:
    """Orthonormal components (the timing does not depend on which), unit scale, a mid-grey mean."""
    q, _ = torch.linalg.qr(torch.randn(values, k, generator=torch.Generator().manual_seed(0)))
    return {"components": q.T.contiguous(), "scale": torch.ones(k), "mean": torch.zeros(values)}


def model_memory(width: int, values: int, k: int | None) -> dict:
    """Parameters and training memory (MB, float32) of the generator and critic for ``values``
    outputs: the low-rank head with ``k`` components, or (k None) a dense output layer."""
    hidden = (512, 1024)
    trunk = width * hidden[0] + hidden[0] + hidden[0] * hidden[1] + hidden[1]
    generator = trunk + (hidden[1] * k + k if k else hidden[1] * values + values)
    critic = width * 256 + 256 + values * 256 + 256 + 512 * 256 + 256 + 257
    fixed = (k * values + k + values) if k else 0  # components, scale, mean: buffers, not trained
    params = generator + critic
    return {"params": params, "train_mb": round((4 * params + fixed) * 4 / 1e6, 1)}


def timed_steps(batches, steps: int, config: TrainConfig, width: int, target, device) -> tuple[float, float]:
    """(samples/s, data-wait share) of ``steps`` training steps over ``batches`` (an iterable,
    re-iterated as needed); the share is the fraction of the timed wall time the training loop spent
    waiting for its next batch."""
    torch.manual_seed(0)
    head = None if target.kind == "slice" else random_head(target.values)
    generator, critic = (m.to(device) for m in build_models(width, target, head=head))
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas)
    bce, mse = nn.BCEWithLogitsLoss(), nn.MSELoss()
    done = samples = 0
    start, waited = None, 0.0
    while done < steps:
        iterator = iter(batches)
        while True:
            asked = time.perf_counter()
            batch = next(iterator, None)
            if batch is None:
                break
            if start is not None:
                waited += time.perf_counter() - asked
            if start is None and done == 5:  # warm-up steps excluded
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, samples = time.perf_counter(), 0
            real = to_tanh(batch["fmri"].float())
            update(generator, critic, opt_g, opt_d, batch["meg"], real, bce, mse, config)
            done += 1
            samples += len(batch["meg"])
            if done >= steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return samples / elapsed, waited / elapsed


def in_memory(loader: ShardLoader) -> list[dict]:
    """One epoch of the loader's batches kept as in-memory tensors (the upper bound a loader is measured
    against)."""
    return [{"meg": b["meg"], "fmri": b["fmri"]} for b in loader]


def run(work: Path, bids_root: Path | None, steps: int = 200, repeats: int = 3,
        target_kind: str = "slice") -> tuple[list[dict], list[str]]:
    """``bench train``: the cGAN fed by the loader against in-memory tensors, local and S3."""
    work.mkdir(parents=True, exist_ok=True)
    _, shards = ensure_shards(work, bids_root, target_kind)
    config = TrainConfig(shards=str(shards), out="")
    local = ShardLoader(shards, "train", StreamConfig(batch_size=config.batch_size), device="auto")
    device, width, target = local.device, local.index.features["width"], local.index.target_layout
    memory = in_memory(local)
    server, endpoint = moto_process()
    try:
        url = upload_train_shards(endpoint, shards, [e for e in local.index.shards if e.split == "train"],
                                  "meg2fmri-train", local.index.target.get("mask"))
        remote = ShardLoader(url, "train", StreamConfig(batch_size=config.batch_size),
                             StoreConfig(storage_options={"endpoint_url": endpoint}), device="auto")
        results = {"in_memory": [], "local": [], "s3": []}
        for _ in range(repeats):  # interleaved, so drifting machine load hits all three alike
            results["in_memory"].append(timed_steps(memory, steps, config, width, target, device))
            results["local"].append(timed_steps(local, steps, config, width, target, device))
            results["s3"].append(timed_steps(remote, steps, config, width, target, device))
    finally:
        server.terminate()
        server.wait()
    rows = []
    volume = target.kind != "slice"
    memory_use = model_memory(width, target.values, COMPONENTS) if volume else {}
    waits = {name: statistics.median(w for _, w in v) for name, v in results.items()}
    results = {name: [r for r, _ in v] for name, v in results.items()}
    for name, values in results.items():
        value = statistics.median(values)
        rows.append(row(f"train_{name}", 1 / value, value, "samples/s", device=str(device),
                        data_wait_share=round(waits[name], 4),
                        batch_size=config.batch_size, step_ms=round(1000 * config.batch_size / value, 1),
                        target=f"{target.kind} {list(target.shape)}", **memory_use))
    medians = {name: statistics.median(v) for name, v in results.items()}
    notes = [f"local / in-memory = {medians['local'] / medians['in_memory']:.0%} (target >= "
             f"{95 if volume else 90}%)",
             f"s3 / in-memory = {medians['s3'] / medians['in_memory']:.0%}",
             "share of a step's wall time spent waiting for data: "
             + ", ".join(f"{name} {share:.1%}" for name, share in waits.items())]
    if volume:
        from nilearn import datasets

        mni = int((datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0).sum())
        low, dense = model_memory(width, mni, COMPONENTS), model_memory(width, mni, None)
        notes += [f"this model: {memory_use['params']:,} parameters, {memory_use['train_mb']} MB to train "
                  f"({target.values:,} voxels, k = {COMPONENTS}); step "
                  f"{1000 * config.batch_size / medians['local']:.0f} ms "
                  f"at batch {config.batch_size} on {device}",
                  f"ds004078 in MNI space ({mni:,} in-mask voxels at 2 mm): low-rank {low['params']:,} "
                  f"parameters, {low['train_mb']} MB; a dense output layer {dense['params']:,}, "
                  f"{dense['train_mb']} MB (the critic's input layer is in both)"]
    return rows, notes
