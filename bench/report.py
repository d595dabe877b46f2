"""Shared benchmark plumbing: machine facts, medians of repeated timings, table and JSON output.

Every bench writes ``{"machine": {...}, "rows": [{"name", "median_s", "throughput", "unit", ...}]}``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path


def machine() -> dict:
    """This machine: CPU, cores, memory, Python, platform, library versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        memory_gb = None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gb": memory_gb,
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": {p: version(p) for p in ("numpy", "numba", "mne", "nibabel", "zarr", "ray")}}


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def row(name: str, median_s: float, throughput: float, unit: str, **extra: object) -> dict:
    """One benchmark row."""
    return {"name": name, "median_s": median_s, "throughput": throughput, "unit": unit, **extra}


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    extra_keys = [k for k in dict.fromkeys(k for r in rows for k in r)
                  if k not in ("name", "median_s", "throughput", "unit", "times_s")]
    header = ["name", "median_s", "throughput", "unit", *extra_keys]
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)
    cells = [header] + [[fmt(r.get(k)) for k in header] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(header))) for c in cells)


def emit(rows: list[dict], json_path: Path | None, notes: list[str]) -> None:
    """Print the rows and notes; write them as JSON too when asked."""
    print(table(rows))
    for note in notes:
        print(note)
    if json_path is not None:
        Path(json_path).write_text(json.dumps({"machine": machine(), "rows": rows, "notes": notes},
                                              indent=1) + "\n")
        print(f"wrote {json_path}")


def merge(folder: Path) -> dict:
    """Every bench JSON in ``folder`` under its file name, and the CUDA tests' pytest JUnit summary
    (``cuda-tests.xml``), as one report (``make bench-gpu``)."""
    import xml.etree.ElementTree as ET

    out: dict = {"machine": machine(), "benches": {}}
    for path in sorted(Path(folder).glob("*.json")):
        if path.name != "gpu.json":
            out["benches"][path.stem] = json.loads(path.read_text())
    junit = Path(folder) / "cuda-tests.xml"
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        out["cuda_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    try:
        import torch

        if torch.cuda.is_available():
            out["machine"]["gpu"] = torch.cuda.get_device_name()
            out["machine"]["torch"] = torch.__version__
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m meg2fmri.bench.report --merge DIR --out FILE``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m meg2fmri.bench.report",
                                     description="merge a folder of bench JSON files into one report")
    parser.add_argument("--merge", type=Path, required=True, help="folder of bench JSON (and cuda-tests.xml)")
    parser.add_argument("--out", type=Path, required=True, help="the merged JSON")
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(merge(args.merge), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
