"""``meg2fmri train``: the paper's cGAN (or a control variant), streamed from local or s3:// shards.

Examples:
    meg2fmri train --shards demo-output/ingest --out runs/cgan
    meg2fmri train --shards s3://bucket/shards --endpoint-url http://127.0.0.1:9000 --out runs/cgan --resume
    torchrun --nproc-per-node 2 -m meg2fmri.model.train_cli --shards ... --out ...   # DDP
"""

from __future__ import annotations

import argparse
import logging
import sys

from meg2fmri import commands

from .configs import VARIANTS, TrainConfig

log = logging.getLogger("meg2fmri")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``meg2fmri train``."""
    d = TrainConfig(shards="", out="")
    p = argparse.ArgumentParser(prog="meg2fmri train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard folder or index: a path, file:// or s3:// URL")
    p.add_argument("--out", required=True,
                   help="run folder or s3:// prefix: checkpoint.pt, log/ (each written whole)")
    p.add_argument("--variant", choices=VARIANTS, default=d.variant,
                   help="cgan; no_adversarial (the generator with MSE only); shuffled (MEG vectors permuted "
                        f"within each batch: does the MEG carry information?) (default: {d.variant})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (paper: 125; default: {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"(paper: 32; default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr,
                   help=f"Adam learning rate (paper: 1e-4; default: {d.lr})")
    p.add_argument("--lr-step-epochs", type=int, default=d.lr_step_epochs,
                   help=f"halve the learning rate every N epochs (paper: 20; default: {d.lr_step_epochs})")
    p.add_argument("--recon-weight", type=float, default=d.recon_weight,
                   help="weight of the MSE term against the adversarial BCE (paper's code: 1; default "
                        f"{d.recon_weight}, as pix2pix, so reconstruction is not drowned by BCE)")
    p.add_argument("--target", choices=["deviation", "image"], default=d.target,
                   help="deviation: each training run's mean image replaced by the mean training image, so "
                        "the model learns what the MEG changes, not which subject it is; image: the raw "
                        f"slices, as the paper (default: {d.target})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"L2 penalty on the generator's weights (paper: none; default: {d.weight_decay})")
    p.add_argument("--smooth", type=float, default=d.smooth, metavar="SIGMA",
                   help="Gaussian filter (sigma in pixels) of the generated change from the mean image: BOLD "
                        f"changes are spatially smooth, pixel noise is not; 0 = none, as the paper (default: "
                        f"{d.smooth})")
    head = p.add_argument_group("voxel and parcel targets: the low-rank head (docs/guide/whole-brain.md)")
    head.add_argument("--components", type=int, default=d.components, metavar="K",
                      help="principal components of the training changes the generator predicts; 0 = the "
                           f"fewest explaining --explained of their variance (default: {d.components})")
    head.add_argument("--explained", type=float, default=d.explained,
                      help=f"with --components 0: variance fraction to explain (default: {d.explained})")
    head.add_argument("--max-components", type=int, default=d.max_components,
                      help=f"with --components 0: at most this many (default: {d.max_components})")
    head.add_argument("--pca-samples", type=int, default=d.pca_samples,
                      help="evenly spaced training samples the components are computed from "
                           f"(memory: samples x voxels x 4 bytes; default: {d.pca_samples})")
    p.add_argument("--meg-only", action="store_true", help="use the 306 MEG channels' features only")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed for weights and data order (default: {d.seed})")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=f"steps between checkpoints, besides each epoch end (default: {d.checkpoint_every})")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps (with a checkpoint)")
    p.add_argument("--workers", type=int, default=d.num_workers,
                   help="DataLoader workers (default: 0, a thread)")
    p.add_argument("--device", default=d.device, help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    commands.add_storage_options(p, "s3:// --shards and --out")
    commands.add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``meg2fmri train``: parse ``argv``, train; the exit code."""
    args = build_parser().parse_args(argv)

    def work() -> None:
        config = TrainConfig(shards=args.shards, out=args.out, variant=args.variant, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, lr_step_epochs=args.lr_step_epochs,
                             recon_weight=args.recon_weight, weight_decay=args.weight_decay,
                             target=args.target,
                             meg_only=args.meg_only, seed=args.seed, smooth=args.smooth,
                             components=args.components, explained=args.explained,
                             max_components=args.max_components, pca_samples=args.pca_samples,
                             checkpoint_every=args.checkpoint_every, max_steps=args.max_steps,
                             num_workers=args.workers, device=args.device, resume=args.resume,
                             storage_options=commands.storage_options(args))
        from .train import train  # torch, once the arguments are good

        path = train(config, progress=not args.quiet)
        log.info(f"train: checkpoint {path}")

    return commands.run("train", args, work)


if __name__ == "__main__":
    sys.exit(main())
