"""The training loop: stream batches from the loader, update D then G (pix2pix order), checkpoint, log.

Read top to bottom: ``train(config)`` sets up (device, DDP, loader, models, optimisers, resume),
then loops epochs and steps. Checkpoints hold everything a resume needs (models, optimisers,
schedulers, loader position, RNG states) and are written atomically every ``checkpoint_every``
steps and at each epoch end. On CPU with a fixed seed, a stopped and resumed run ends with the same
weights as an uninterrupted one (tested).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from meg2fmri.loader import ShardLoader, StoreConfig, StreamConfig
from meg2fmri.loader.storage import read_mask
from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError
from meg2fmri.shards.format import RunId, TargetLayout

from .checkpoint import ModelCard, load_checkpoint, versions
from .configs import TrainConfig
from .nets import Discriminator, Generator, LowRankGenerator, VectorDiscriminator, to_tanh
from .outputs import (
    CHECKPOINT,
    drop_log_after,
    location,
    save_checkpoint,
    write_log_part,
)

logger = logging.getLogger("meg2fmri")


def feature_mask(names: list[str], meg_only: bool) -> list[int]:
    """Indices of the features the model reads (all, or those of MEG channels only)."""
    if not meg_only:
        return list(range(len(names)))
    keep = [i for i, name in enumerate(names) if name.startswith("MEG")]
    if not keep:
        raise InputError("--meg-only: the shard index names no MEG channel features")
    return keep


def build_models(width: int, target: TargetLayout, smooth: float = 0.0,
                 head: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """The paper's generator and PatchGAN for slices; for voxels and parcels the low-rank generator
    (``head``: components, scale, mean in Tanh units) and the vector critic."""
    if target.kind == "slice":
        return Generator(width, target.shape[0], smooth=smooth), Discriminator(width, target.shape[0])
    if smooth:
        raise InputError("--smooth filters slice images; it has no meaning for voxel or parcel targets")
    return (LowRankGenerator(width, head["components"], head["scale"], head["mean"]),
            VectorDiscriminator(width, target.values))


def generator_from_checkpoint(state: dict, card: ModelCard) -> nn.Module:
    """The trained generator of a checkpoint, in eval mode (on the CPU)."""
    if card.target.kind == "slice":
        generator = Generator(card.width, card.target.shape[0], smooth=card.smooth)
    else:
        g = state["generator"]
        generator = LowRankGenerator(card.width, g["components"], g["scale"], g["mean"])
    generator.load_state_dict(state["generator"])
    return generator.eval()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and fix MKL's code paths (bit-for-bit resumes)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may draw from the global generator
    torch.manual_seed(seed)
    # MKL's CPU matrix products take code paths that depend on how each buffer happens to be aligned,
    # so two fresh processes could differ in the 7th digit from step 1 (seen: 1 run in 6, which broke
    # the kill -9 + resume equality). Its conditional numerical reproducibility mode fixes the path; MKL
    # reads the variable at its first call, so this must run before any training compute (it costs
    # nothing measurable: the demo's shards, 60 steps of 32, 3.8-4.1 s either way). A user's own
    # MKL_CBWR wins.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def rng_state() -> dict:
    """Every generator's state, for a checkpoint."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore the generators' states of a checkpoint."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_state(out: Location, width: int, target: TargetLayout, smooth: float) -> dict:
    """The checkpoint in ``out`` to resume, checked against these shards and options."""
    path = out.url_of(CHECKPOINT)
    if not out.exists(CHECKPOINT):
        raise InputError(f"{path}: no checkpoint to resume from; drop --resume to start afresh")
    state, card = load_checkpoint(out.url, out.storage_options, option="--resume:")
    card.check_resumable(path, width, target, smooth)
    return state


@dataclass(frozen=True)
class TrainingMeans:
    """The training set's mean target, each run's offset from it, and changes for the components."""
    image: torch.Tensor  # (*target shape) mean training target in [0, 1]
    run_offsets: torch.Tensor  # (runs, *target shape): the mean training target minus each run's mean
    run_of: torch.Tensor  # (n_train,) int64: the run of each training sample id
    # vector targets: evenly spaced training samples' changes (their target minus their run's mean
    # for deviation targets, minus the mean target for image targets), for the principal components
    changes: torch.Tensor | None = None

    def offsets(self, index: torch.Tensor) -> torch.Tensor:
        """``(B, *target shape)``: what turns samples ``index`` into deviation targets (added)."""
        return self.run_offsets[self.run_of[index]]

    def to(self, device: torch.device) -> TrainingMeans:
        return TrainingMeans(self.image.to(device), self.run_offsets.to(device), self.run_of.to(device))


def training_means(config: TrainConfig, target: TargetLayout) -> TrainingMeans:
    """One unshuffled pass over the training split: the mean target and each run's mean, as running
    sums (memory grows with the number of runs, not of samples), and for vector targets up to
    ``pca_samples`` evenly spaced samples. Every rank reads the whole split (rank 0 of 1), so that
    every rank has the same means."""
    loader = ShardLoader(config.shards, "train", StreamConfig(batch_size=1024, shuffle=False, meta=True),
                         StoreConfig(storage_options=config.storage_options), device="cpu",
                         rank=0, world_size=1)
    shape, vector = target.shape, target.kind != "slice"
    run_of = torch.full((loader.samples,), -1, dtype=torch.int64)
    step = max(1, -(-loader.samples // config.pca_samples))
    kept: list[tuple[int, torch.Tensor]] = []
    runs: dict[tuple, int] = {}
    sums, counts = [], []
    for batch in loader:
        images = batch["fmri"].float() if vector else batch["fmri"][:, 0]
        for i, meta, image in zip(batch["index"].tolist(), batch["meta"], images, strict=True):
            r = runs.setdefault((meta["subject"], meta["run"]), len(runs))
            if r == len(sums):
                sums.append(torch.zeros(shape, dtype=torch.float64))
                counts.append(0)
            sums[r] += image
            counts[r] += 1
            run_of[i] = r
            if vector and i % step == 0:
                kept.append((i, image.clone()))
    if (run_of < 0).any():
        raise InputError(f"{config.shards}: the training split yielded {int((run_of >= 0).sum())} of "
                         f"{loader.samples} samples")
    if config.target == "deviation" and min(counts) < 2:
        single = [RunId(s, r).name for (s, r), i in runs.items() if counts[i] < 2]
        raise InputError(f"{config.shards}: {len(single)} training run(s) have one sample (e.g. "
                         f"{single[0]}), so --target deviation would replace every target by the mean "
                         "training image and leave nothing to learn; use --target image (as the paper does "
                         "for --pairing paper)")
    sums = torch.stack(sums)
    run_means = sums / torch.tensor(counts, dtype=torch.float64).reshape(-1, *[1] * len(shape))
    mean = sums.sum(dim=0) / sum(counts)
    changes = None
    if vector:
        ids = torch.tensor([i for i, _ in kept])
        base = run_means[run_of[ids]] if config.target == "deviation" else mean[None]
        changes = (torch.stack([x for _, x in kept]).double() - base).float()
    return TrainingMeans(mean.float(), (mean - run_means).float(), run_of, changes)


def principal_components(changes: torch.Tensor, config: TrainConfig) -> tuple[dict, dict]:
    """The low-rank head from training changes ``(m, values)`` in [0, 1] units: components, scale and
    how k was chosen (``components``, else the fewest explaining ``explained``, at most
    ``max_components``), all in Tanh units (twice the [0, 1] values)."""
    x = changes.double() * 2
    x = x - x.mean(dim=0)
    q = min(config.components or config.max_components, *x.shape)
    generator = torch.Generator().manual_seed(config.seed)  # svd_lowrank draws a random projection
    state = torch.get_rng_state()
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    _, s, v = torch.svd_lowrank(x, q=min(q + 8, *x.shape), niter=6)
    torch.set_rng_state(state)
    explained = (s**2 / (x**2).sum()).cumsum(0)
    if config.components:
        k = q
    else:
        k = min(int((explained < config.explained).sum()) + 1, q)
    head = {"components": v[:, :k].T.float().contiguous(),
            "scale": (s[:k] / math.sqrt(max(len(x) - 1, 1))).float()}
    how = {"components": k, "explained_variance": float(explained[k - 1]), "from_samples": len(x),
           "rule": f"--components {config.components}" if config.components else
           f"fewest explaining >= {config.explained} of the training changes' variance (at most "
           f"{config.max_components})"}
    return head, how


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def start_distributed() -> tuple[bool, int]:
    """``(distributed, rank)``: join the process group ``torchrun`` set up (NCCL on GPUs, gloo else)."""
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    if distributed and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return distributed, rank


@dataclass
class Networks:
    """The generator and critic with their optimisers, schedules and the shuffled control's generator:
    everything of a run's state but the loader and the step."""

    generator: nn.Module
    critic: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler
    shuffler: torch.Generator

    def state_dict(self) -> dict:
        return {"generator": unwrap(self.generator).state_dict(), "critic": unwrap(self.critic).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                "shuffler": self.shuffler.get_state()}


def build_networks(config: TrainConfig, width: int, target: TargetLayout, means: TrainingMeans, device,
                   state: dict | None) -> tuple[Networks, dict | None, dict | None]:
    """The networks (restored from ``state`` when resuming) and the low-rank head and how it was chosen
    (None for slices). The order of random draws is fixed: a resumed run goes on bit for bit."""
    head, head_choice = None, None
    if target.kind != "slice":
        head, head_choice = principal_components(means.changes, config)
        head["mean"] = to_tanh(means.image)
    generator, critic = (m.to(device) for m in build_models(width, target, config.smooth, head))
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas,
                             weight_decay=config.weight_decay)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas)
    nets = Networks(generator, critic, opt_g, opt_d,
                    torch.optim.lr_scheduler.StepLR(opt_g, config.lr_step_epochs, config.lr_gamma),
                    torch.optim.lr_scheduler.StepLR(opt_d, config.lr_step_epochs, config.lr_gamma),
                    torch.Generator())
    if state is not None:
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        for obj, key in ((opt_g, "opt_g"), (opt_d, "opt_d"), (nets.sched_g, "sched_g"),
                         (nets.sched_d, "sched_d")):
            obj.load_state_dict(state[key])
        set_rng_state(state["rng"])
    elif target.kind == "slice":
        generator.start_from(means.image)
    return nets, head, head_choice


def model_card(config: TrainConfig, loader: ShardLoader, keep: torch.Tensor, means: TrainingMeans,
               head: dict | None, head_choice: dict | None) -> ModelCard:
    """The card of the model being trained: what it reads, predicts and was trained on."""
    index = loader.index
    placement = dict(index.target)  # what `generate` needs to write NIfTI: grid, affine, mask
    if index.target_layout.kind == "volume":
        placement["mask_bits"] = np.packbits(np.asarray(read_mask(loader.store, index).dataobj) > 0)
    features = index.feature_spec
    return ModelCard(
        width=len(keep), target=index.target_layout, head="dense" if head is None else "lowrank",
        head_choice=head_choice, features=features.kind, feature_names=features.names,
        feature_index=tuple(keep.tolist()), smooth=config.smooth, pairing=index.pairing.to_dict(),
        tr=index.tr, mean_target=means.image.cpu().numpy(), placement=placement, versions=versions())


def train(config: TrainConfig, progress: bool = True) -> str:
    """Train one variant; return the checkpoint path. Resumes from ``out/checkpoint.pt`` if asked."""
    distributed, rank = start_distributed()
    out = location(config.out, config.storage_options)
    if rank == 0:
        out.check_writable()
        out.remove_temporaries()  # a checkpoint or log part that a kill -9 cut short
    seed_everything(config.seed)
    loader = ShardLoader(config.shards, "train", StreamConfig(batch_size=config.batch_size, seed=config.seed),
                         StoreConfig(storage_options=config.storage_options), num_workers=config.num_workers,
                         device=config.device)
    device, index = loader.device, loader.index
    keep = torch.tensor(feature_mask(index.features["names"], config.meg_only), device=device)
    target = index.target_layout
    if not config.resume and out.exists(CHECKPOINT):
        raise InputError(f"{out.url_of(CHECKPOINT)}: a run is already here; pass --resume to continue it, or "
                         "another --out")
    missing = index.missing_runs()
    if missing and rank == 0:  # a partial dataset is said, not silently trained on
        logger.warning(f"train: warning: {len(missing)} run(s) of the dataset are not in these shards "
                       "(ingest could not use them):\n" + "\n".join(f"  {line}" for line in missing))
    state = resume_state(out, len(keep), target, config.smooth) if config.resume else None
    if state is not None:
        loader.load_state_dict(state["loader"])  # checks the shards are the ones it was trained on
    means = training_means(config, target)  # after the checks above: bad inputs fail before any pass
    nets, head, head_choice = build_networks(config, len(keep), target, means, device, state)
    step = state["step"] if state is not None else 0
    deviations = means.to(device) if config.target == "deviation" else None
    if distributed:
        nets.generator = nn.parallel.DistributedDataParallel(nets.generator)
        nets.critic = nn.parallel.DistributedDataParallel(nets.critic)
    nets.shuffler.manual_seed(config.seed + 1)
    if state is not None and "shuffler" in state:
        nets.shuffler.set_state(state["shuffler"])
    if config.resume and rank == 0:
        drop_log_after(out, step)
    log: list[dict] | None = [] if rank == 0 else None  # records since the last checkpoint
    card = model_card(config, loader, keep, means, head, head_choice)

    def checkpoint() -> None:
        if rank != 0:
            return
        write_log_part(out, step, log)
        log.clear()
        save_checkpoint(out, {**nets.state_dict(), "loader": loader.state_dict(), "rng": rng_state(),
                              "step": step, "card": card.to_dict(),
                              "config": {**asdict(config), "storage_options": {}},
                              "index_dataset": index.dataset, "missing_runs": missing})

    bce, mse = nn.BCEWithLogitsLoss(), nn.MSELoss()
    for epoch in range(loader.epoch, config.epochs):
        loader.set_epoch(epoch)
        wait = busy = 0.0
        bar = tqdm(total=len(loader), initial=loader.position, desc=f"{config.variant} epoch {epoch + 1}",
                   disable=not progress or rank != 0, unit="batch")
        batches = iter(loader)
        stopped = False
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            if batch is None:
                break
            meg, real = training_pair(batch, keep, deviations, target, config, nets.shuffler)
            losses = update(nets.generator, nets.critic, nets.opt_g, nets.opt_d, meg, real, bce, mse, config)
            step += 1
            t2 = time.perf_counter()
            wait, busy = wait + (t1 - t0), busy + (t2 - t0)
            if log is not None:
                log.append({"step": step, "epoch": epoch, **losses, "lr": nets.opt_g.param_groups[0]["lr"],
                            "samples_per_s": len(meg) / (t2 - t0), "data_wait": (t1 - t0) / (t2 - t0)})
            bar.update(1)
            if step % config.checkpoint_every == 0:
                checkpoint()
            if config.max_steps is not None and step >= config.max_steps:
                stopped = True
                break
        bar.close()
        if stopped:
            batches.close()
            checkpoint()
            break
        nets.sched_g.step()
        if config.variant != "no_adversarial":  # its critic never steps
            nets.sched_d.step()
        if log is not None:
            log.append({"epoch_end": epoch, "step": step, "data_wait_fraction": wait / max(busy, 1e-9),
                        "lr": nets.opt_g.param_groups[0]["lr"], "seconds": busy})
        checkpoint()
    loader.close()  # its worker processes (--workers) live across epochs, not beyond the run
    return out.url_of(CHECKPOINT)


def training_pair(batch: dict, keep: torch.Tensor, deviations: TrainingMeans | None, target: TargetLayout,
                  config: TrainConfig, shuffler: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as the model trains on it: the features it reads, and the targets in Tanh units
    (deviation targets: each run's mean replaced by the training mean; ``shuffled``: the MEG
    vectors permuted within the batch)."""
    meg, image = batch["meg"][:, keep], batch["fmri"].float()
    if deviations is not None:
        offsets = deviations.offsets(batch["index"])
        image = image + (offsets[:, None] if target.kind == "slice" else offsets)
    if config.variant == "shuffled":
        meg = meg[torch.randperm(len(meg), generator=shuffler).to(meg.device)]
    return meg, to_tanh(image)


def update(generator, critic, opt_g, opt_d, meg, real, bce, mse, config: TrainConfig) -> dict:
    """One step: the critic on real and detached fake pairs, then the generator with the critic frozen."""
    fake = generator(meg)
    losses = {}
    if config.variant != "no_adversarial":
        critic.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        real_logits, fake_logits = critic(meg, real), critic(meg, fake.detach())
        loss_d = 0.5 * (bce(real_logits, torch.ones_like(real_logits))
                        + bce(fake_logits, torch.zeros_like(fake_logits)))
        loss_d.backward()
        opt_d.step()
        critic.requires_grad_(False)
        fake_logits = critic(meg, fake)
        adversarial = bce(fake_logits, torch.ones_like(fake_logits))
        losses["loss_d"] = loss_d.item()
    else:
        adversarial = torch.zeros((), device=meg.device)
    opt_g.zero_grad(set_to_none=True)
    reconstruction = mse(fake, real)
    loss_g = adversarial + config.recon_weight * reconstruction
    loss_g.backward()
    opt_g.step()
    losses.update(loss_g_adv=adversarial.item(), loss_g_mse=reconstruction.item())
    return losses
