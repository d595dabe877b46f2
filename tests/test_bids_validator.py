"""The official BIDS validator (bids-validator-deno, runs offline) reports no errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def validator() -> str:
    local = Path(sys.executable).parent / "bids-validator-deno"
    return str(local) if local.exists() else shutil.which("bids-validator-deno")


def test_tiny_dataset_has_no_validator_errors(tiny_root: Path):
    result = subprocess.run([validator(), str(tiny_root), "--format", "json"],
                            capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [], errors[:3]
    assert sorted(report["summary"]["subjects"]) == ["01", "02", "03", "04"]
    assert set(report["summary"]["modalities"]) >= {"MEG", "MRI"}


def test_validator_catches_a_broken_dataset(tiny_root: Path, tmp_path: Path):
    """The check above can fail: a dataset missing a required file is reported."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_root, broken, ignore=shutil.ignore_patterns("*.fif", "*.nii.gz", "*.wav"))
    (broken / "dataset_description.json").unlink()
    result = subprocess.run([validator(), str(broken), "--format", "json"],
                            capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout)
    assert any(i["severity"] == "error" for i in report["issues"]["issues"])
