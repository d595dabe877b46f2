"""Shared fixtures: small datasets written by our own ``synth`` generator, once per session."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from meg2fmri.ingest.synth import cli as synth_cli

# Ray reads this when imported: a local Ray then listens on loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

DATA = Path(__file__).parent / "data"

# Markers (pyproject registers them): `make test-quick` runs what has none of them.
# slow: writes a synth dataset or ingests one (session fixtures below, or the modules that do it
# themselves); s3: a moto server on loopback; ray: a Ray cluster; gpu: a CUDA device.
DATASET_FIXTURES = {"tiny_root", "long_root", "defects_root", "ingested", "volume_runs"}
SLOW_MODULES = {"test_ingest", "test_ingest_faults", "test_inputs", "test_s3_cluster", "test_study",
                "test_bench", "test_calibrate", "test_bids_validator", "test_synth_cli", "test_synth_layout"}
RAY_MODULES = {"test_ingest", "test_ingest_faults", "test_inputs", "test_s3_cluster", "test_study",
               "test_bench"}


# The whole suite writes about 7.5 GB under the temporary folder at its peak (measured 2026-12-07 with
# `du` every 10 s), removed when it passes (pyproject: tmp_path_retention_policy). A disk that fills
# half-way fails tests far from the cause (moto's put_object, a torchrun rank, synth's rename), so
# a run that needs the datasets stops before it starts and says why.
NEEDED_FREE_GB = float(os.environ.get("MEG2FMRI_TEST_FREE_GB", "9"))


def pytest_sessionstart(session):
    if "not slow" in (session.config.getoption("markexpr") or ""):
        return  # no dataset fixtures: megabytes, not gigabytes
    folder = Path(session.config.getoption("basetemp") or tempfile.gettempdir())
    while not folder.exists():  # a --basetemp that pytest has yet to make
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 1e9
    if free < NEEDED_FREE_GB:
        pytest.exit(f"{folder}: {free:.1f} GB free, and the tests write about 7.5 GB there at their peak "
                    f"(they need {NEEDED_FREE_GB:g}). Free space (old study-output/, bench-work/, "
                    "/tmp/pytest-of-*/), point TMPDIR elsewhere, or run `make test-quick`; "
                    "MEG2FMRI_TEST_FREE_GB lowers the bar.", returncode=3)


def pytest_collection_modifyitems(items):
    for item in items:
        names, module = set(item.fixturenames), item.module.__name__.rpartition(".")[2]
        if names & {"s3_server", "aws_env", "s3_shards"}:
            item.add_marker(pytest.mark.s3)
        if "ray_session" in names or module in RAY_MODULES:
            item.add_marker(pytest.mark.ray)
        if names & DATASET_FIXTURES or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        params = getattr(item, "callspec", None)
        if params is not None and "cuda" in str(params.params.get("device", "")):
            item.add_marker(pytest.mark.gpu)


def run_synth(out: Path, *args: str) -> Path:
    code = synth_cli.main(["--out", str(out), "--quiet", *args])
    assert code == 0, f"synth exited with {code}"
    return out


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The ``tiny`` preset: subjects 01-04, runs 1-3, 40 s stories, 24x24x18 voxels. Held out by
    default: sub-02 (F) and sub-04 (M), story 3."""
    return run_synth(tmp_path_factory.mktemp("synth") / "tiny", "--preset", "tiny", "--jobs", "2")


@pytest.fixture(scope="session")
def long_root(tmp_path_factory) -> Path:
    """One subject, two 150-s stories: long enough to see the coupling beyond the story block. A quiet
    scanner (thermal noise only, tSNR 70: the earlier default) so that the coupling itself is seen."""
    return run_synth(tmp_path_factory.mktemp("synth") / "long", "--preset", "tiny", "--subjects", "05",
                     "--runs", "1,2", "--duration", "150", "--jobs", "2", "--tsnr", "70",
                     "--physio-share", "0")


@pytest.fixture(scope="session")
def defects_root(tmp_path_factory) -> Path:
    """sub-08 and sub-09, runs 7 and 16, with the dataset's two faulty runs reproduced."""
    return run_synth(tmp_path_factory.mktemp("synth") / "defects", "--preset", "tiny",
                     "--subjects", "08,09", "--runs", "7,16", "--defects", "--shape", "12x12x9",
                     "--jobs", "2")


def truth_config(root: Path) -> dict:
    return json.loads((root / "derivatives/synth/synth_config.json").read_text())["config"]


def read_tsv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the in-process ingest tests (loopback only, 2 CPUs)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ingested(tiny_root: Path, tmp_path_factory, ray_session) -> Path:
    """``ingest`` of the tiny dataset with the defaults (windows, mean), 30 samples per shard."""
    from meg2fmri.ingest import cli as ingest_cli

    out = tmp_path_factory.mktemp("ingest") / "windows"
    args = ["--quiet", "--bids-root", str(tiny_root), "--out", str(out), "--shard-samples", "30"]
    code = ingest_cli.main(args)
    assert code == 0
    return out


@pytest.fixture(scope="session")
def paper_ingested(ingested: Path, tmp_path_factory) -> Path:
    """The tiny dataset re-paired as the paper does (one pair per run), from ``ingested``'s cache."""
    import shutil

    from meg2fmri.ingest import cli as ingest_cli

    out = tmp_path_factory.mktemp("ingest") / "paper"
    out.mkdir()
    shutil.copytree(ingested / "cache.zarr", out / "cache.zarr")
    assert ingest_cli.main(["--quiet", "--out", str(out), "--from-cache", "--pairing", "paper"]) == 0
    return out


def from_cache(ingested: Path, out: Path, *args: str) -> Path:
    """Re-pair ``ingested``'s cache into ``out`` with other options (no FIF or NIfTI is read)."""
    import shutil

    from meg2fmri.ingest import cli as ingest_cli

    out.mkdir(parents=True)
    shutil.copytree(ingested / "cache.zarr", out / "cache.zarr")
    assert ingest_cli.main(["--quiet", "--out", str(out), "--from-cache", *args]) == 0
    return out


@pytest.fixture(scope="session")
def volume_ingested(ingested: Path, tmp_path_factory) -> Path:
    """The tiny dataset with whole-brain targets, one sample per volume (stride = TR)."""
    return from_cache(ingested, tmp_path_factory.mktemp("ingest") / "volume", "--target", "volume",
                      "--stride", "0.71", "--shard-samples", "100")


@pytest.fixture(scope="session")
def volume_runs(volume_ingested: Path, tmp_path_factory) -> Path:
    """cgan and no_adversarial on ``volume_ingested`` (one epoch each: what is tested is the plumbing)."""
    from meg2fmri.model.train import TrainConfig, train

    runs = tmp_path_factory.mktemp("runs") / "volume"
    for variant in ("cgan", "no_adversarial"):
        train(TrainConfig(shards=str(volume_ingested), out=str(runs / variant), variant=variant, epochs=1,
                          batch_size=16, device="cpu"), progress=False)
    return runs


def start_moto():
    """A real S3-protocol server (moto) on a free loopback port, with its request log silenced."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def upload_folder(endpoint: str, folder: Path, bucket: str, prefix: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if path.is_file() and not any(p == "cache.zarr" or p.startswith(".") for p in relative):
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


@pytest.fixture(scope="session")
def aws_env():
    """Credentials for the loopback server, through the standard AWS variables (as users set them)."""
    values = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
              "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def s3_server(aws_env):
    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def s3_shards(s3_server, ingested) -> tuple[str, dict]:
    """The ``ingested`` shards uploaded to the loopback server: (URL, storage_options)."""
    url = upload_folder(s3_server, ingested, "meg2fmri-test", "tiny/windows")
    return url, {"endpoint_url": s3_server}
