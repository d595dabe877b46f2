"""``synth``: write an SMN4Lang-like BIDS dataset with a known MEG<->fMRI coupling."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from meg2fmri import commands
from meg2fmri.shards.split import run_list

from .config import (
    MAP_KINDS,
    MEG_SFREQS,
    N_STORIES,
    PHYSIO_KINDS,
    PRESETS,
    SUBJECT_IDS,
    WORLDS,
    Coupling,
    SynthConfig,
    estimated_bytes,
    world_coupling,
)

log = logging.getLogger("meg2fmri")


def parse_subjects(text: str) -> tuple[str, ...]:
    """``--subjects``: ``all`` or two-digit ids."""
    if text == "all":
        return SUBJECT_IDS
    return tuple(s.strip().removeprefix("sub-").zfill(2) for s in text.split(",") if s.strip())


def parse_runs(text: str) -> tuple[int, ...]:
    """``all``, ``1,2,5`` or ranges like ``1-10``."""
    runs = run_list(text)
    return tuple(range(1, N_STORIES + 1)) if runs is None else runs


def parse_block(text: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``SUBJECTS:RUNS``, each a list or range: ``01-08:1-16``."""
    subjects, sep, runs = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"--block must look like 01-08:1-16 (SUBJECTS:RUNS), got {text!r}")
    ids = (SUBJECT_IDS if subjects == "all"
           else tuple(f"{i:02d}" for i in run_list(subjects.replace("sub-", ""))))
    return ids, parse_runs(runs)


def parse_shape(text: str) -> tuple[int, int, int]:
    """``--shape``: ``XxYxZ`` voxels."""
    try:
        nx, ny, nz = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must look like 106x106x72, got {text!r}") from None
    return nx, ny, nz


def parse_range(text: str) -> tuple[float, float]:
    """``LOW,HIGH``: two numbers, low first."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in seconds (e.g. 4,6), got {text!r}") from None
    return low, high


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones that mean 'the preset's'."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``meg2fmri synth``."""
    defaults = Coupling()
    p = argparse.ArgumentParser(
        prog="meg2fmri synth",
        description="Write a synthetic dataset in the exact layout of SMN4Lang (OpenNeuro ds004078): "
        "Neuromag FIF MEG (328 channels, STI101 triggers) and int16 BOLD NIfTI, sharing latent "
        "story sources, with the ground truth under derivatives/synth/. The output appears only "
        "when complete.",
        formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="tiny: 4 subjects x 3 runs of 40 s, 24x24x18 voxels (tests, seconds); demo: "
                   "12 subjects x stories 1,2,3,6,12 of 60 s at 48x48x32 (2 minutes, ~6 GB); bench: 12 x 3 "
                   "runs of 60 s at 106x106x72 (benchmarks, ~7.5 GB); full: 12 x 60 runs at the real story "
                   "lengths (benchmarks only; about 660 GB, see --dry-run)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: ./synth-PRESET); refused if it exists and is not empty")
    p.add_argument("--calibrate", type=Path, default=None, metavar="DATASET",
                   help="write nothing: measure an existing synth dataset as published studies measure real "
                   "story-listening data (inter-subject correlation, tSNR, MEG envelope tracking, ...; "
                   "ingest/synth/calibrate.py), print the table beside the published ranges, and exit 1 if "
                   "a figure is out of range")
    p.add_argument("--subjects", type=parse_subjects, default=None,
                   help="comma-separated subject ids 01..12, or 'all' (default: the preset's)")
    p.add_argument("--runs", type=parse_runs, default=None,
                   help="story runs 1..60: e.g. 1,2,5 or 1-10 or all (default: the preset's)")
    p.add_argument("--duration", type=float, default=None,
                   help="story length in seconds for every run (default: the preset's; the full "
                   "preset uses the real lengths from ds004078)")
    p.add_argument("--shape", type=parse_shape, default=None,
                   help="fMRI volume size XxYxZ (default: the preset's; real data is 106x106x72)")
    p.add_argument("--block", type=parse_block, action="append", default=None, metavar="SUBJECTS:RUNS",
                   help="write only these subjects x runs (repeatable), e.g. --block 01-08:1-16 --block "
                   "09-12:17-22: training subjects x training stories and held-out subjects x held-out "
                   "stories, nothing in between (default: every --subjects x every --runs; without "
                   "--subjects/--runs, the blocks' union)")
    p.add_argument("--meg-sfreq", type=float, default=1000.0, choices=MEG_SFREQS,
                   help="MEG sampling rate of the FIF files (Hz): 1000 as ds004078; 500 or 200 write "
                   "2-5x less, as a system recording at that rate would (anti-alias low-pass at a third "
                   "of it, the same noise density below); the sources and the BOLD are those of 1000 Hz")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    p.add_argument("--defects", action="store_true",
                   help="reproduce the dataset's two faulty runs (sub-08 run-16, sub-09 run-7: story-"
                   "begin trigger not recorded, a spurious Beg ~6-7 s late); they must be selected")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing synth dataset at --out (only after the new one is complete)")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                   help="runs written in parallel processes")
    p.add_argument("--dry-run", action="store_true", help="print the plan and disk size; write nothing")
    commands.add_verbosity(p)
    model = p.add_argument_group(
        "generative model (docs/guide/synth.md); each option's default is the --world's")
    model.add_argument("--world", choices=sorted(WORLDS), default="calibrated",
                       help="calibrated: the defaults, held to published ranges (synth --calibrate); "
                       "2026-12: the defaults before calibration (4-30 Hz power coupling, blob maps, local "
                       "AR(1) physiological noise, no sound-following sources); easy: the first world "
                       "(2026-12 without hidden or MEG-only sources, tSNR 70 thermal noise, one HRF)")

    def knob(flag: str, field: str, kind=float, text: str = "", **kw) -> None:
        shown = getattr(defaults, field)
        shown = ",".join(f"{v:g}" for v in shown) if isinstance(shown, tuple) else shown
        model.add_argument(flag, type=kind, default=None, dest=field,
                           help=f"{text} (calibrated world: {shown})", **kw)

    knob("--snr", "snr", text="MEG: stimulus-driven RMS / noise RMS on the best channel of each sensor type")
    knob("--n-sources", "n_sources", int, "latent stimulus-driven sources per story, seen by MEG and BOLD")
    knob("--power-weight", "power_weight", text="share of the BOLD drive carried by the sources' band power "
         "(the rest by their signed slow field)")
    knob("--carrier-band", "carrier_band", parse_range, "band (Hz) of the stimulus-driven power the MEG "
         "sees (BOLD follows it)", metavar="LOW,HIGH")
    knob("--bold-percent", "bold_percent", text="BOLD signal change (%% of baseline) of a sustained unit "
         "drive at a map's peak")
    knob("--tsnr", "tsnr", text="fMRI temporal SNR of the raw series: mean brain intensity / noise std "
         "(thermal + physiological; raw 2-mm multiband EPI at 3T: about 20-40)")
    knob("--physio-share", "physio_share", text="share of the BOLD noise variance that is physiological "
         "(proportional to the signal); the rest is white thermal noise")
    knob("--physio", "physio", str, "cardiorespiratory: cardiac and respiratory noise at their aliased "
         "frequencies, a global slow part and a local part; local: 16 smooth AR(1) patterns (5 s)",
         choices=PHYSIO_KINDS)
    knob("--maps", "maps", str, "networks: graded maps along auditory cortex, STG/STS, the language and "
         "default-mode networks; blobs: one bilateral grey-matter blob per source", choices=MAP_KINDS)
    knob("--auditory-sources", "auditory_sources", int, "shared sources that follow the story's sound "
         "directly (auditory cortex); 0: the sound follows the mean of every source's envelope")
    knob("--syllable-depth", "syllable_depth", text="log-std of the sound's syllable-rate (1-8 Hz) "
         "loudness fluctuations")
    knob("--evoked-weight", "evoked_weight", text="MEG: std of the auditory sources' phase-locked "
         "envelope-following response (0.5-8 Hz, 100 ms), relative to a source's slow field")
    knob("--alpha-weight", "alpha_weight", text="MEG: std of each source's alpha rhythm (8-12 Hz), "
         "relative to its slow field")
    knob("--alpha-suppression", "alpha_suppression", text="alpha amplitude ~ envelope ** -this "
         "(alpha falls with activity)")
    knob("--hidden-sources", "hidden_sources", int, "latent sources that drive BOLD but reach no MEG "
         "sensor (deep or radial)")
    knob("--meg-only-sources", "meg_only_sources", int, "latent sources that the MEG sees and that drive "
         "no BOLD")
    knob("--hrf-peak", "hrf_peak", parse_range, "range (s) of the per-subject HRF peak latency (SPM's "
         "canonical: 5,5)", metavar="LOW,HIGH")
    knob("--subject-variability", "subject_variability", text="per-subject perturbation of sensor mixing "
         "and spatial maps, relative to the group pattern (0 = identical subjects)")
    knob("--background-share", "background_share", text="share of MEG noise variance from spatially "
         "correlated brain background")
    knob("--line-freq", "line_freq", text="mains frequency, Hz")
    return p


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The ``SynthConfig`` the arguments ask for."""
    fields = [f.name for f in dataclasses.fields(Coupling)]
    coupling = world_coupling(args.world, **{f: getattr(args, f) for f in fields if hasattr(args, f)})
    out = args.out if args.out is not None else Path(f"synth-{args.preset}")
    blocks = tuple(args.block or ())
    subjects, runs = args.subjects, args.runs
    if blocks and subjects is None:
        subjects = tuple(sorted({s for block, _ in blocks for s in block}))
    if blocks and runs is None:
        runs = tuple(sorted({r for _, block in blocks for r in block}))
    return SynthConfig.from_preset(
        args.preset, out, subjects=subjects, runs=runs, story_duration=args.duration,
        volume_shape=args.shape, seed=args.seed, defects=args.defects, coupling=coupling,
        meg_sfreq=args.meg_sfreq, blocks=blocks)


def run_calibration(root: Path) -> int:
    """``--calibrate DATASET``: print the table; 0 if every figure is in range, else 1."""
    from .calibrate import calibrate, table

    result = calibrate(root)
    print(table(result))
    return commands.OK if result["in_range"] else commands.PARTIAL


def write(args: argparse.Namespace) -> int:
    """Write the dataset the arguments ask for (``--dry-run``: only say how big it would be)."""
    from .writer import write_dataset  # heavy imports (MNE) only once the arguments are good

    config = config_from_args(args)
    plans = config.plan()
    size = estimated_bytes(config)
    log.info(f"synth: {len(config.subjects)} subjects x {len(config.runs)} runs"
             f"{' in ' + str(len(config.blocks)) + ' blocks' if config.blocks else ''} = {len(plans)} runs, "
             f"about {size / 1e9:.2f} GB -> {config.out}")
    if args.dry_run:
        return commands.OK
    write_dataset(config, overwrite=args.overwrite, jobs=args.jobs, progress=not args.quiet)
    log.info(f"synth: wrote {config.out}")
    return commands.OK


def main(argv: list[str] | None = None) -> int:
    """``meg2fmri synth``: parse ``argv``, write or calibrate; the exit code."""
    args = build_parser().parse_args(argv)
    # SIGTERM (e.g. from a job scheduler) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.calibrate is not None:
        return commands.run("synth", args, lambda: run_calibration(args.calibrate))
    return commands.run("synth", args, lambda: write(args))


if __name__ == "__main__":
    sys.exit(main())
