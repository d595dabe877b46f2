"""What a task costs: resident memory of this process (Linux ``/proc``), and the memory Ray is asked
for before a task starts."""

from __future__ import annotations

import resource
from pathlib import Path

# Measured with `bench ingest` (docs/notes/benchmarks.md): a task's peak resident memory above its start
# is at most about this many times its two input files' bytes (MNE decodes the FIF to float64; the
# BOLD is gunzipped); the base covers the worker's own libraries and buffers.
MEMORY_PER_INPUT_BYTE = 2.0  # measured at most 1.18 (bench preset runs) and 1.04 (a 600-s story)
MEMORY_BASE_BYTES = 512 * 2**20


def task_memory(input_bytes: int) -> int:
    """Bytes to ask Ray for a task whose FIF and NIfTI hold ``input_bytes`` together."""
    return int(MEMORY_BASE_BYTES + MEMORY_PER_INPUT_BYTE * input_bytes)


def resident_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its high-water mark (``VmHWM``), MB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def reset_peak_memory() -> None:
    """Restart the high-water mark at the current RSS (Linux; elsewhere a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
