"""Where ``synth`` keeps a dataset's ground truth, and the one way to read it.

``DATASET/derivatives/synth/`` holds:

- ``synth_config.json``: the resolved configuration and the sources;
- ``runs.tsv``: one row per run written (timing, triggers, defects);
- ``sub-XX/sub-XX_NAME.npy`` per subject, NAME one of ``meg_mixing``, ``meg_background_patterns``,
  ``fmri_maps``, ``fmri_baseline``, ``fmri_grey_weight``, ``fmri_brain_mask``, ``fmri_hrf_peak_s``;
- ``stories/story-N_NAME.npy`` per story, NAME one of ``envelope_100Hz``, ``slow_100Hz``,
  ``acoustic_100Hz``, ``bold-drive_{DRIVE_SFREQ}Hz``.

The writer (``writer.py``) and every reader (the oracle, the voxel maps, the benchmarks) name files
only through this module; the tests spell the paths out, to hold the layout itself. Light on
purpose: no MNE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from meg2fmri.shards.errors import InputError

TRUTH = Path("derivatives") / "synth"
CONFIG_NAME = "synth_config.json"


def subject_file(root: Path, subject: str, name: str) -> Path:
    """``root/derivatives/synth/sub-XX/sub-XX_NAME.npy``."""
    return Path(root) / TRUTH / f"sub-{subject}" / f"sub-{subject}_{name}.npy"


def story_file(root: Path, story: int, name: str) -> Path:
    """``root/derivatives/synth/stories/story-N_NAME.npy``."""
    return Path(root) / TRUTH / "stories" / f"story-{story}_{name}.npy"


def runs_file(root: Path) -> Path:
    """``runs.tsv``: one row per written run (timing, triggers, defects)."""
    return Path(root) / TRUTH / "runs.tsv"


def config_file(root: Path) -> Path:
    """``root/derivatives/synth/synth_config.json``."""
    return Path(root) / TRUTH / CONFIG_NAME


def is_synth(root: Path) -> bool:
    """Whether ``root`` is a synth dataset (it has the ground truth's configuration)."""
    return config_file(root).is_file()


def read_config(root: Path) -> dict:
    """The dataset's ``synth_config.json``, or an ``InputError`` if it is not a synth dataset."""
    try:
        return json.loads(config_file(root).read_text())
    except FileNotFoundError:
        raise InputError(f"{config_file(root)}: no synth ground truth here; this needs a dataset written by "
                         "`meg2fmri synth`") from None


def subjects(root: Path) -> list[str]:
    """The subjects with a ground-truth folder, sorted."""
    return sorted(p.name.removeprefix("sub-") for p in (Path(root) / TRUTH).glob("sub-*") if p.is_dir())


def read_subject(root: Path, subject: str, name: str) -> np.ndarray:
    """One of a subject's ground-truth arrays (see the module docstring for the names)."""
    return np.load(subject_file(root, subject, name))


def read_story(root: Path, story: int, name: str) -> np.ndarray:
    """One of a story's ground-truth series (see the module docstring for the names)."""
    return np.load(story_file(root, story, name))
