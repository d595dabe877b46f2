"""What ``train``, ``evaluate`` and ``generate`` write, each object through the one commit rule.

Every output goes through ``shards.commit.Location`` (``put``: a temporary name and a rename locally, one
PUT on S3), so ``--out`` may be a folder or an ``s3://`` prefix, and a ``kill -9`` never leaves a
half-written file under its final name.

A training run folder (``train --out``) holds:

- ``checkpoint.pt``: everything a resume needs (``torch.save`` of one dict), replaced whole each time;
- ``log/NNNNNNNNN.jsonl``: the training log in parts, one per checkpoint, named by the step of the
  checkpoint that follows it (a part is written just before its checkpoint; a resume drops the parts
  after the checkpoint it resumes from, so no step is logged twice). ``read_log`` joins them (and
  reads the single ``log.jsonl`` of runs made before parts existed).
"""

from __future__ import annotations

import gzip
import io
import json

import numpy as np

from meg2fmri.shards.commit import Location

CHECKPOINT = "checkpoint.pt"
LOG_DIR = "log"
LEGACY_LOG = "log.jsonl"


def location(url: str, storage_options: dict | None = None) -> Location:
    """A folder or an ``s3://`` prefix (``file://`` accepted)."""
    return Location(str(url).removeprefix("file://"), storage_options or {})


def put_json(out: Location, rel: str, obj) -> None:
    """Put ``obj`` as indented JSON at ``rel``."""
    out.put(rel, (json.dumps(obj, indent=1) + "\n").encode())


def put_text(out: Location, rel: str, text: str) -> None:
    """Put ``text`` (UTF-8) at ``rel``."""
    out.put(rel, text.encode())


def put_figure(out: Location, rel: str, fig, **savefig) -> None:
    """A matplotlib figure (or nilearn display) rendered as PNG, then put whole."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig)
    out.put(rel, buffer.getvalue())


def put_npz(out: Location, rel: str, **arrays: np.ndarray) -> None:
    """Put ``arrays`` as one ``.npz`` at ``rel``."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    out.put(rel, buffer.getvalue())


def put_nifti(out: Location, rel: str, img) -> None:
    """A NIfTI image (gzipped when ``rel`` ends in ``.gz``; deterministic: no timestamp)."""
    data = img.to_bytes()
    out.put(rel, gzip.compress(data, compresslevel=6, mtime=0) if rel.endswith(".gz") else data)


def save_checkpoint(out: Location, state: dict) -> None:
    """Put a checkpoint's state (``torch.save``) as ``checkpoint.pt``, whole."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    out.put(CHECKPOINT, buffer.getvalue())


def checkpoint_of(model: str, storage_options: dict | None = None) -> tuple[Location, str]:
    """``(run folder, checkpoint name)`` of a ``train --out`` folder or prefix, or of its ``.pt`` file."""
    text = str(model).rstrip("/")
    if text.endswith(".pt"):
        parent, _, name = text.rpartition("/")
        return location(parent or ".", storage_options), name
    return location(text, storage_options), CHECKPOINT


def write_log_part(out: Location, step: int, records: list[dict]) -> None:
    """The log records since the previous checkpoint, as the part of the checkpoint at ``step`` (a
    second checkpoint at the same step, as at an epoch end that is also a ``--checkpoint-every`` step,
    adds its records to that part)."""
    if not records:
        return
    rel = f"{LOG_DIR}/{step:09d}.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in records)
    if out.exists(rel):
        text = out.read_text(rel) + text
    out.put(rel, text.encode())


def drop_log_after(out: Location, step: int) -> None:
    """Remove the log parts written after the checkpoint at ``step`` (a run killed between a part and
    its checkpoint): the resumed run logs those steps again."""
    for name in out.names(LOG_DIR):
        if name.endswith(".jsonl") and name[:-len(".jsonl")].isdigit() and int(name[:-len(".jsonl")]) > step:
            out.remove(f"{LOG_DIR}/{name}")


def read_log(out: Location) -> list[dict]:
    """Every log record of a run folder, in order (an empty list if it has none)."""
    texts = []
    if out.exists(LEGACY_LOG):
        texts.append(out.read_text(LEGACY_LOG))
    texts += [out.read_text(f"{LOG_DIR}/{name}") for name in out.names(LOG_DIR) if name.endswith(".jsonl")]
    return [json.loads(line) for text in texts for line in text.splitlines() if line.strip()]
