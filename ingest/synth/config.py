"""Configuration of the synthetic SMN4Lang generator: presets, coupling knobs, run plan.

Everything the generator does is decided here, in two frozen dataclasses, so that the resolved
configuration can be written beside the dataset (``derivatives/synth/synth_config.json``) and a
run of ``synth`` can be repeated exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from meg2fmri.shards.errors import InputError

# ds004078 constants (see ../shared/reference/paper.md and the reference sidecars).
MEG_SFREQ = 1000.0  # Hz, Elekta TRIUX acquisition rate
MEG_SFREQS = (1000.0, 500.0, 200.0)  # synth --meg-sfreq: whole steps of 1000 Hz, multiples of 100
TR = 0.71  # s, fMRI repetition time
FMRI_AUDIO_ONSET = 10.65  # s after scan start at which the story audio starts (volume 15)
HURRYUP_DELAY = 8.0  # s from story end to the "hurry up" image in fMRI events.tsv
HURRYUP_DURATION = 2.0  # s
FMRI_TAIL = 18.87  # s scanned after the story ends (median over ds004078-runs.tsv)
SUBJECT_IDS = tuple(f"{i:02d}" for i in range(1, 13))
N_STORIES = 60
# The two runs whose story-begin trigger was not recorded (dataset README, usage notes).
# Values from their real events.tsv files: where the story truly started relative to the MEG
# file start (End - story duration) and where the spurious "Beg" trigger sits.
DEFECT_RUNS = {
    ("08", 16): {"true_start_s": 296.335 - 294.496, "spurious_beg_s": 7.888},
    ("09", 7): {"true_start_s": 279.987 - 280.000, "spurious_beg_s": 7.486},
}


def data_file(name: str) -> Path:
    """Path of a reference file shipped with the package (copied from ds004078, CC0)."""
    return Path(str(resources.files("meg2fmri.ingest.synth") / "data" / name))


def read_tsv(name: str) -> list[dict[str, str]]:
    """Rows of a shipped TSV file; a UTF-8 byte-order mark (as in the real files) is accepted."""
    with open(data_file(name), encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


MAP_KINDS = ("networks", "blobs")
PHYSIO_KINDS = ("cardiorespiratory", "local")


@dataclass(frozen=True)
class Coupling:
    """The generative MEG<->fMRI model's knobs (defaults are realistic, not tuned for learning).

    Latent sources per story (shared by every subject and by both modalities):
    ``source = envelope * carrier + slow``; the carrier is band-limited noise in ``carrier_band``,
    the envelope a positive log-normal modulation with time scales ``envelope_timescale`` and 4x
    that, the slow
    part a signed field with time scale ``slow_timescale``.  BOLD follows
    ``power_weight * envelope**2 + (1 - power_weight) * slow``, convolved with a double-gamma HRF
    whose peak latency is drawn per subject from ``hrf_peak`` (s).

    Three kinds of source: ``n_sources`` that both the MEG and BOLD see; ``hidden_sources`` that
    drive BOLD but no MEG sensor (deep, or radially oriented in a gyral crown: no field outside the
    head); ``meg_only_sources`` that the MEG sees and that drive no BOLD. BOLD noise is thermal
    (white) plus physiological (``physio_share`` of the noise variance: proportional to the signal,
    spatially smooth and temporally correlated, as Krueger & Glover 2001 model it); ``tsnr`` is the
    temporal SNR of the raw series from both.

    Defaults and their sources: tSNR 30 (raw 2-mm multiband EPI at 3T measures about 20-40;
    earlier versions used 70 from thermal noise alone); physiological share 0.6 (with 32-channel and
    larger head coils physiological noise dominates even at small voxels: Triantafyllou et al. 2011,
    NeuroImage 55:597); HRF peak 4-6 s per subject (Handwerker et al. 2004, NeuroImage 21:1639:
    peak latency varies by about 2 s between subjects; SPM's canonical HRF peaks at 5 s).

    The calibrated world (the defaults; ``WORLDS`` names the earlier ones, docs/results/calibration.md):
    the story has a sound whose loudness ``auditory_sources`` follow directly (auditory cortex), the
    MEG sees their phase-locked 0.5-8 Hz envelope following (``evoked_weight``), stimulus-driven
    power sits in the gamma band (``carrier_band`` 30-45 Hz: BOLD follows gamma-band power, Niessing
    et al. 2005, Science 309:948) and an alpha rhythm falls with activity (``alpha_weight``,
    ``alpha_suppression``: Goldman et al. 2002, NeuroReport 13:2487; Scheeringa et al. 2011,
    NeuroImage 54:1023); response maps are graded networks (``maps="networks"``: auditory cortex,
    STG/STS and the left-lateralised language network, the default-mode network); physiological noise
    is cardiac and respiratory at their aliased frequencies, a global slow part and a smaller local
    part (``physio="cardiorespiratory"``).
    """

    n_sources: int = 6
    hidden_sources: int = 2  # drive BOLD, invisible to the MEG sensors
    meg_only_sources: int = 2  # seen by the MEG, drive no BOLD
    carrier_band: tuple[float, float] = (30.0, 45.0)  # Hz, the stimulus-driven power (was 4-30)
    envelope_timescale: float = 2.0  # s
    envelope_log_std: float = 0.4  # std of log(envelope)
    slow_timescale: float = 1.0  # s
    power_weight: float = 0.8  # share of the BOLD drive carried by band power
    snr: float = 0.5  # MEG: stimulus RMS / noise RMS on the best channel of each sensor type
    background_share: float = 0.5  # share of MEG noise variance from correlated brain background
    n_background: int = 30  # number of background (non-stimulus) brain sources
    line_freq: float = 50.0  # Hz, mains in Beijing
    line_share: float = 0.3  # line-noise RMS relative to the sensor noise RMS (magnetometers)
    bold_percent: float = 2.0  # % signal change of a sustained unit drive at a map's peak
    tsnr: float = 30.0  # fMRI temporal SNR: baseline / noise std (thermal + physiological) in the brain
    physio_share: float = 0.6  # share of the BOLD noise variance that is physiological
    hrf_peak: tuple[float, float] = (4.0, 6.0)  # s, range of the per-subject HRF peak latency
    drift_percent: float = 0.5  # % of baseline per 5 min of scan, slow scanner drift (std over voxels)
    subject_variability: float = 0.3  # per-subject perturbation of mixing and maps (relative)
    auditory_sources: int = 2  # shared sources that follow the story's sound (auditory cortex)
    syllable_depth: float = 0.5  # log-std of the sound's syllable-rate (1-8 Hz) loudness fluctuation
    evoked_weight: float = 0.2  # MEG: std of the envelope-following response (unit: a slow field's)
    alpha_weight: float = 1.0  # MEG: std of each source's alpha rhythm (same unit)
    alpha_suppression: float = 0.7  # alpha amplitude ~ envelope ** -alpha_suppression
    maps: str = "networks"  # "networks" (graded, calibrated) | "blobs" (one bilateral blob per source)
    physio: str = "cardiorespiratory"  # | "local" (16 smooth AR(1) patterns, the earlier worlds)

    def __post_init__(self) -> None:
        checks = {
            "n_sources": self.n_sources >= 1,
            "hidden_sources": self.hidden_sources >= 0,
            "meg_only_sources": self.meg_only_sources >= 0,
            "physio_share": 0.0 <= self.physio_share < 1.0,
            "hrf_peak": 3.0 <= self.hrf_peak[0] <= self.hrf_peak[1] <= 9.0,
            "snr": self.snr >= 0,
            "power_weight": 0.0 <= self.power_weight <= 1.0,
            "background_share": 0.0 <= self.background_share < 1.0,
            "bold_percent": self.bold_percent >= 0,
            "tsnr": self.tsnr > 0,
            "subject_variability": self.subject_variability >= 0,
            "carrier_band": 0 < self.carrier_band[0] < self.carrier_band[1] < MEG_SFREQ / 2,
            "auditory_sources": 0 <= self.auditory_sources <= self.n_sources,
            "syllable_depth": self.syllable_depth >= 0,
            "evoked_weight": self.evoked_weight >= 0,
            "alpha_weight": self.alpha_weight >= 0,
            "alpha_suppression": self.alpha_suppression >= 0,
            "maps": self.maps in MAP_KINDS,
            "physio": self.physio in PHYSIO_KINDS,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if not bad and self.n_sources + self.hidden_sources + self.meg_only_sources > 64:
            bad = ["n_sources + hidden_sources + meg_only_sources <= 64"]
        if bad:
            raise InputError(f"invalid coupling option(s) {bad}: {self}")


    @property
    def n_latent(self) -> int:
        """Latent sources per story: shared, then hidden (BOLD only), then MEG-only."""
        return self.n_sources + self.hidden_sources + self.meg_only_sources

    @property
    def n_bold(self) -> int:
        """The first ``n_bold`` latent sources drive BOLD (shared + hidden)."""
        return self.n_sources + self.hidden_sources

    def meg_rows(self) -> list[int]:
        """Latent sources the MEG sees (shared + MEG-only)."""
        return list(range(self.n_sources)) + list(range(self.n_bold, self.n_latent))


# The earlier worlds, reachable by name (``synth --world NAME``; any option given beside it wins).
# "2026-12": the defaults before calibration (issue #18's "simulator now" column); "easy": the first
# world (no hidden or MEG-only sources, thermal noise only at tSNR 70, one canonical HRF).
PRE_CALIBRATION = {"carrier_band": (4.0, 30.0), "auditory_sources": 0, "syllable_depth": 0.0,
                   "evoked_weight": 0.0, "alpha_weight": 0.0, "alpha_suppression": 0.0, "maps": "blobs",
                   "physio": "local"}
WORLDS: dict[str, dict[str, object]] = {
    "calibrated": {},
    "2026-12": PRE_CALIBRATION,
    "easy": {**PRE_CALIBRATION, "hidden_sources": 0, "meg_only_sources": 0, "physio_share": 0.0,
             "hrf_peak": (5.0, 5.0), "tsnr": 70.0},
}


def world_coupling(world: str, **overrides: object) -> Coupling:
    """The coupling of a named world, with any field overridden (``None`` values are ignored)."""
    if world not in WORLDS:
        raise InputError(f"unknown --world {world!r}: choose one of {sorted(WORLDS)}")
    fields = {**WORLDS[world], **{k: v for k, v in overrides.items() if v is not None}}
    return Coupling(**fields)


@dataclass(frozen=True)
class Preset:
    """A named dataset size: subjects, runs, story length, volume grid."""
    subjects: tuple[str, ...]
    runs: tuple[int, ...]
    story_duration: float | None  # s; None = the real story lengths of ds004078
    volume_shape: tuple[int, int, int]
    meg_tail: tuple[float, float]  # s recorded after the End trigger (uniform range)


PRESETS: dict[str, Preset] = {
    # Tests: seconds to write, every code path present (4 subjects: 1 female, 3 male; story 3 held out).
    "tiny": Preset(SUBJECT_IDS[:4], (1, 2, 3), 40.0, (24, 24, 18), (2.0, 4.0)),
    # Demo (`make demo`: 10 minutes, 8 GB): all 12 subjects; training stories 1-3 and the stories
    # the every-sixth rule holds out, 6 and 12; 60-s stories (28 samples a run: room for circular
    # shifts of 15 s and more); a 48x48x32 grid of the same head shape (the header keeps 2-mm
    # voxels), as the 60 FIF files (96 MB each) take most of the disk budget. With four held-out
    # subjects (Makefile) `test` has 8 runs.
    "demo": Preset(SUBJECT_IDS, (1, 2, 3, 6, 12), 60.0, (48, 48, 32), (2.0, 4.0)),
    # Benchmarks of ingest and loader: 12 subjects x 3 stories of 60 s at the real spatial size.
    "bench": Preset(SUBJECT_IDS, (1, 2, 3), 60.0, (106, 106, 72), (2.0, 4.0)),
    # Full: the real dataset's size (12 x 60 runs, real durations); benchmarks only.
    "full": Preset(SUBJECT_IDS, tuple(range(1, N_STORIES + 1)), None, (106, 106, 72), (20.0, 30.0)),
}


@dataclass(frozen=True)
class RunPlan:
    """One (subject, run) to write; times are seconds, ``n_vols`` is a volume count."""

    subject: str
    run: int
    story_duration: float
    n_vols: int
    defect: bool


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """Everything ``synth`` needs to write a dataset, resolved from a preset and options."""
    out: Path
    preset: str = "demo"
    subjects: tuple[str, ...] = PRESETS["demo"].subjects
    runs: tuple[int, ...] = PRESETS["demo"].runs
    story_duration: float | None = PRESETS["demo"].story_duration
    volume_shape: tuple[int, int, int] = PRESETS["demo"].volume_shape
    meg_tail: tuple[float, float] = PRESETS["demo"].meg_tail
    seed: int = 0
    defects: bool = False
    coupling: Coupling = field(default_factory=Coupling)
    meg_sfreq: float = MEG_SFREQ  # Hz of the FIF files (the sources are made at 1000 Hz whatever this is)
    # (subjects, runs) blocks to write; empty: every subject x every run
    blocks: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.meg_sfreq not in MEG_SFREQS:
            raise InputError(f"--meg-sfreq must be one of {', '.join(f'{r:g}' for r in MEG_SFREQS)} Hz "
                             f"(whole steps of the sources' 1000 Hz that ingest's 100 Hz divides), got "
                             f"{self.meg_sfreq:g}")
        if self.coupling.carrier_band[1] >= min(330.0, self.meg_sfreq / 3):
            raise InputError(f"--carrier-band {self.coupling.carrier_band[1]:g} Hz is above the anti-alias "
                             f"low-pass of --meg-sfreq {self.meg_sfreq:g} ({self.meg_sfreq / 3:.1f} Hz): "
                             "raise --meg-sfreq or lower the band")
        for subjects, runs in self.blocks:
            if not set(subjects) <= set(self.subjects) or not set(runs) <= set(self.runs):
                raise InputError(f"--block {','.join(subjects)}:{','.join(map(str, runs))} is not within "
                                 "--subjects x --runs")
        unknown = sorted(set(self.subjects) - set(SUBJECT_IDS))
        if unknown or not self.subjects:
            raise InputError(
                f"unknown subject id(s) {unknown or 'none given'}: ds004078 has subjects "
                f"{SUBJECT_IDS[0]}..{SUBJECT_IDS[-1]} (use e.g. --subjects 01,02 or all)"
            )
        if not self.runs or any(not 1 <= r <= N_STORIES for r in self.runs):
            raise InputError(f"runs must be stories 1..{N_STORIES}, got {list(self.runs)}")
        if self.story_duration is not None and self.story_duration < 10:
            raise InputError(f"--duration must be at least 10 s, got {self.story_duration}")
        if len(self.volume_shape) != 3 or min(self.volume_shape) < 8:
            raise InputError(f"--shape needs three sizes >= 8 (e.g. 106x106x72), got {self.volume_shape}")
        if self.defects and not self.defect_runs():
            raise InputError(
                "--defects reproduces sub-08 run-16 and sub-09 run-7, but neither is selected: "
                "add e.g. --subjects 08,09 --runs 7,16"
            )

    @classmethod
    def from_preset(cls, name: str, out: Path, **overrides: object) -> SynthConfig:
        """A config from a preset, with any field overridden (``None`` values are ignored)."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
        fields = dataclasses.asdict(PRESETS[name])
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(out=Path(out), preset=name, **fields)

    def defect_runs(self) -> list[tuple[str, int]]:
        return [key for key in DEFECT_RUNS if key[0] in self.subjects and key[1] in self.runs]

    def plan(self) -> list[RunPlan]:
        """Every (subject, run) to write, with its story length and volume count."""
        real = {int(row["run"]): row for row in read_tsv("ds004078-runs.tsv")}
        plans = []
        for subject in self.subjects:
            for run in self.runs:
                if self.blocks and not any(subject in s and run in r for s, r in self.blocks):
                    continue
                if self.story_duration is None:
                    duration = float(real[run]["audio_dur_s"])
                    n_vols = int(real[run]["n_vols"])
                else:
                    duration = float(self.story_duration)
                    n_vols = math.ceil((FMRI_AUDIO_ONSET + duration + FMRI_TAIL) / TR)
                defect = self.defects and (subject, run) in DEFECT_RUNS
                plans.append(RunPlan(subject, run, duration, n_vols, defect))
        return plans

    def to_json(self) -> dict:
        """The resolved configuration, without ``out``: where a dataset lies is not its content."""
        resolved = dataclasses.asdict(self)
        del resolved["out"]
        return resolved


def estimated_bytes(config: SynthConfig) -> int:
    """Approximate disk size of the dataset (FIF float32; gzip NIfTI at about 60% of int16)."""
    n_voxels = math.prod(config.volume_shape)
    total = 0
    for plan in config.plan():
        meg_seconds = 14.0 + plan.story_duration + config.meg_tail[1]
        total += int(meg_seconds * config.meg_sfreq * 328 * 4)
        total += int(plan.n_vols * n_voxels * 2 * 0.6)
    return total
