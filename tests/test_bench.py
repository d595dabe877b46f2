"""The benchmarks run and write the agreed JSON shape (speed itself is not asserted in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meg2fmri.bench import cli as bench_cli


def check_shape(path: Path, names: list[str]) -> list[dict]:
    report = json.loads(path.read_text())
    assert report["machine"]["cores"] >= 1
    rows = report["rows"]
    assert [r["name"] for r in rows] == names
    for r in rows:
        assert r["median_s"] > 0 and r["throughput"] > 0 and r["unit"]
    return rows


def test_bench_kernels_json(tmp_path: Path):
    out = tmp_path / "kernels.json"
    assert bench_cli.main(["kernels", "--repeats", "1", "--json", str(out)]) == 0
    rows = check_shape(out, ["memcpy", "zscore_numba", "zscore_numpy", "slicecorr_numba", "slicecorr_numpy",
                             "decimate_numba", "decimate_numpy"])
    assert all("speedup_vs_numpy" in r for r in rows if r["name"].endswith("_numba"))


def run_bench(which: str, tiny_root: Path, tmp_path: Path, *args: str) -> tuple[Path, str]:
    """``bench WHICH`` on the tiny dataset in a subprocess (Ray and moto start there); (JSON path, stdout)."""
    out = tmp_path / f"{which}.json"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [sys.executable, "-m", "meg2fmri.bench.cli", which, "--bids-root", str(tiny_root),
           "--work", str(tmp_path / "work"), "--repeats", "1", "--json", str(out), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


def test_bench_ingest_json(tiny_root: Path, tmp_path: Path):
    """Local and S3 rows side by side, a short 'long run' and a small float BOLD run."""
    out, stdout = run_bench("ingest", tiny_root, tmp_path, "--subjects", "01", "--source", "s3",
                            "--long-seconds", "20", "--float-volumes", "4")
    names = ["decode_floor", "ingest_1worker", "write_floor", "write_floor_committed", "ingest_all",
             "decode_floor_s3", "fif_s3_memory", "fif_s3_tempfile", "ingest_1worker_s3",
             "ingest_1worker_s3_to_s3", "long_run_1worker", "float_bold"]
    rows = check_shape(out, names)
    assert rows[1]["runs"] == 3 and rows[1]["peak_task_mb"] > 0 and rows[8]["runs"] == 3
    ingested = tmp_path / "work" / "ingest-1"  # the floor writes exactly what ingest wrote
    assert rows[2]["output_files"] == sum(1 for p in ingested.rglob("*") if p.is_file())
    written = sum(p.stat().st_size for p in ingested.rglob("*") if p.is_file())
    assert abs(rows[2]["output_mb"] * 1e6 - written) <= 1e-6 * written
    assert 0 < rows[-1]["peak_vs_decoded"] < 10
    assert "ingest (1 worker) / (decode floor + write floor)" in stdout and "projection, ds004078" in stdout
    assert "write floor as ingest commits" in stdout


@pytest.mark.parametrize("committed", [False, True])
def test_write_floor_writes_exactly_the_given_files(tmp_path: Path, committed: bool):
    """The floor's files are the given bytes under the given names; committed leaves no temporaries."""
    from meg2fmri.bench.ingest_bench import write_floor

    files = {"cache.zarr/sub-01_run-1/meg/c/0/0": b"\x01" * 100, "shards/train-000000.tar": b"tar" * 50,
             "index.json": b"{}"}
    write_floor(files, tmp_path / "floor", committed=committed)
    found = {p.relative_to(tmp_path / "floor").as_posix(): p.read_bytes()
             for p in (tmp_path / "floor").rglob("*") if p.is_file()}
    assert found == files


def test_bench_train_json(tiny_root: Path, tmp_path: Path):
    out, stdout = run_bench("train", tiny_root, tmp_path, "--steps", "8")
    rows = check_shape(out, ["train_in_memory", "train_local", "train_s3"])
    assert all(0 <= r["data_wait_share"] < 1 for r in rows)
    assert rows[0]["data_wait_share"] < 0.5  # in-memory batches: the loop hardly waits
    assert "local / in-memory" in stdout


def test_bench_loader_json_and_chart(tiny_root: Path, tmp_path: Path):
    out, stdout = run_bench("loader", tiny_root, tmp_path, "--min-seconds", "0.01", "--paper-samples", "1")
    rows = check_shape(out, ["paper_style", "webdataset_plain", "loader_local", "loader_local_b256",
                             "loader_s3", "loader_s3_b256", "s3_raw", "zarr_map", "memcpy"])
    assert all(r["mb_per_s"] > 0 for r in rows)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "loader_s3 / s3_raw" in stdout
