"""The configs of ``train``, ``evaluate`` and ``generate``: frozen, keyword-only, checked on creation.

They live apart from the code that runs them so that a command can build its parser (defaults
included) and check its arguments before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from meg2fmri.shards.errors import InputError

VARIANTS = ("cgan", "no_adversarial", "shuffled")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run: shards, output, variant, schedule, target, head and resume."""
    shards: str
    out: str
    variant: str = "cgan"  # cgan | no_adversarial (MSE only) | shuffled (MEG permuted within batches)
    epochs: int = 125
    batch_size: int = 32
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_step_epochs: int = 20
    lr_gamma: float = 0.5
    # The paper's code weighs MSE 1:1 with BCE. On [-1, 1] images the MSE is ~0.05-0.3 while BCE sits
    # near 0.7, so the adversarial term dominates and the generator drifts from the data; pix2pix's
    # lambda = 100 (for its L1) puts reconstruction first, which is what MSE/SSIM then measure.
    recon_weight: float = 100.0
    meg_only: bool = False  # use the 306 MEG channels' features, not all 328
    weight_decay: float = 0.0  # L2 on the generator's weights (Adam's coupled decay); the paper: none
    # "deviation": each training run's own mean image is replaced by the mean training image in the
    # targets, so the models learn what the MEG changes over time, not which subject it came from (a
    # held-out subject's anatomy cannot be predicted from its MEG); "image": the raw slices, as the paper.
    target: str = "deviation"
    smooth: float = 0.0  # px: Gaussian filter of the generator's change from the mean image; 0 = none (paper)
    # Voxel and parcel targets: a low-rank head on the training deviations' principal components.
    # components = 0: the fewest that explain ``explained`` of their variance, at most max_components.
    components: int = 0
    explained: float = 0.5
    max_components: int = 256
    pca_samples: int = 4096  # training samples (evenly spaced) the components are computed from
    seed: int = 0
    checkpoint_every: int = 200  # steps
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in all: for tests
    num_workers: int = 0
    device: str = "auto"
    storage_options: dict = field(default_factory=dict)
    resume: bool = False

    def __post_init__(self):
        for option, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                   ("--lr-step-epochs", self.lr_step_epochs, 1),
                                   ("--checkpoint-every", self.checkpoint_every, 1),
                                   ("--pca-samples", self.pca_samples, 1),
                                   ("--workers", self.num_workers, 0)):
            if value < low:
                raise InputError(f"{option} must be at least {low}, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"--max-steps must be at least 1 (or left out), got {self.max_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.recon_weight < 0 or self.weight_decay < 0:
            raise InputError(f"--recon-weight and --weight-decay must be >= 0, got {self.recon_weight}, "
                             f"{self.weight_decay}")
        if self.variant not in VARIANTS:
            raise InputError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        if self.target not in ("deviation", "image"):
            raise InputError(f"target must be 'deviation' or 'image', not {self.target!r}")
        if self.smooth < 0:
            raise InputError(f"smooth is a Gaussian sigma in pixels, >= 0 (0 = no filter), not {self.smooth}")
        if self.components < 0 or not 0 < self.explained <= 1 or self.max_components < 1:
            raise InputError(f"need --components >= 0 (0 = by --explained), 0 < --explained <= 1 and "
                             f"--max-components >= 1, got {self.components}, {self.explained}, "
                             f"{self.max_components}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """One evaluation: shards, trained runs, output, statistics, oracle, stimulus and ROI."""
    shards: str
    runs: str | None  # folder holding one run folder per variant (cgan/, ...); None: baselines only
    out: str
    mask_fraction: float = 0.2
    bootstrap: int = 2000
    null_draws: int = 2000
    min_shift_s: float = 15.0  # circular shifts of at least this many seconds (about 2 HRF lengths)
    seed: int = 0
    storage_options: dict | None = None
    oracle: str | None = None  # .npz from `meg2fmri oracle` (synthetic data): the noise-free truth
    bids_root: str | None = None  # for the stimulus baseline (stimuli/audio/story_N.wav)
    extra: tuple[tuple[str, str], ...] = ()  # (row name, run folder): more models on the same pairs
    roi: str | None = None  # an roi.npz written by evaluate (of more training data): the ROI, not chosen here

    def __post_init__(self):
        if not 0 < self.mask_fraction < 1:
            raise InputError(f"--mask-fraction must be between 0 and 1, got {self.mask_fraction}")
        if self.bootstrap < 1 or self.null_draws < 1:
            raise InputError(f"--bootstrap and --null-draws must be at least 1, got {self.bootstrap}, "
                             f"{self.null_draws}")
        if not self.min_shift_s >= 0:
            raise InputError(f"--min-shift must be >= 0 s, got {self.min_shift_s}")
        for item in self.extra:
            if len(item) != 2 or not item[0] or not item[1]:
                raise InputError(f"--extra {'='.join(item)}: expected NAME=RUN_DIR")

    def output(self):
        from .outputs import location

        return location(self.out, self.storage_options)


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """One generation: a trained model, a recording, where its story runs, and the output."""
    model: str  # a train --out folder (or its checkpoint.pt)
    meg: str  # a FIF path or s3:// URL
    # FILE.nii.gz (or .tsv for parcels), or a folder (or s3:// prefix) for a BIDS derivatives tree;
    # default: the FIF's name with desc-meg2fmri_bold.nii.gz, here
    out: str | None = None
    events: Path | None = None  # BIDS events.tsv of the recording (Beg/End rows, or onset + duration)
    start: float | None = None  # s from the file start
    stop: float | None = None
    storage_options: dict = field(default_factory=dict)
    batch_size: int = 256
    progress: bool = True

    def __post_init__(self):
        if self.start is not None and self.start < 0:
            raise InputError(f"--start must be >= 0 s (from the file start), got {self.start}")
        if self.stop is not None and self.stop <= (self.start or 0.0):
            raise InputError(f"--stop {self.stop} must be after --start {self.start or 0.0}")
