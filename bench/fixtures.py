"""What every benchmark stands on, in one place: the bench dataset and its shards, a local Ray on
loopback, and moto's S3 server in its own process (with uploads of BIDS trees and shards)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from meg2fmri.ingest.synth.config import SynthConfig
from meg2fmri.ingest.synth.truth import is_synth
from meg2fmri.ingest.synth.writer import write_dataset


@contextmanager
def local_ray(cpus: int | None = None):
    """A local Ray listening on loopback only, shut down afterwards."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # as ingest's start_ray: on, without the notice
    import ray

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def demo_dataset(work: Path) -> Path:
    """The bench preset's synth dataset in ``work`` (written once)."""
    root = work / "demo-bids"
    if not is_synth(root):
        write_dataset(SynthConfig.from_preset("bench", root), jobs=len(os.sched_getaffinity(0)))
    return root


SHARD_SAMPLES = 100  # several shards per epoch, as any real dataset has, so reads can overlap


def ensure_shards(work: Path, bids_root: Path | None, target: str = "slice") -> tuple[Path, Path]:
    """(BIDS root, shard folder): the bench preset and its ingest (slice or whole-brain targets),
    made once in ``work``."""
    root = bids_root or demo_dataset(work)
    shards = work / ("loader-demo-shards" if bids_root is None else "loader-shards")
    if target != "slice":
        shards = shards.with_name(f"{shards.name}-{target}")
    if not (shards / "index.json").is_file():
        from meg2fmri.ingest.config import IngestConfig
        from meg2fmri.ingest.driver import run_ingest
        from meg2fmri.ingest.pairing import PairingConfig

        with local_ray():
            config = IngestConfig(bids_root=root, out=shards, shard_samples=SHARD_SAMPLES,
                                  pairing=PairingConfig(target=target))
            report = run_ingest(config, progress=False)
        if report.failed:
            raise RuntimeError(f"bench loader: ingest failed for {report.failed}")
    return root, shards


def upload_train_shards(endpoint: str, shards: Path, entries: list, bucket: str,
                        mask: str | None = None) -> str:
    """Copy the index (and the mask of volume targets) and the training shards to
    ``s3://bucket/demo``; return that URL."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(shards / "index.json"), bucket, "demo/index.json")
    if mask is not None:
        client.upload_file(str(shards / mask), bucket, f"demo/{mask}")
    for entry in entries:
        client.upload_file(str(shards / entry.name), bucket, f"demo/{entry.name}")
    return f"s3://{bucket}/demo"


def moto_process():
    """moto's S3 server in its own process on a free loopback port (a real S3 server does not share
    the client's interpreter; moto in a thread of this process would take the client's GIL), with
    throwaway credentials in the standard AWS variables unless some are set."""
    import socket
    import subprocess
    import sys

    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    for _ in range(300):
        try:
            client.list_buckets()
            return server, endpoint
        except Exception:  # not listening yet
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("bench loader: moto's S3 server did not start in 30 s")


def upload_tree(endpoint: str, root: Path, bucket: str, prefix: str, public: bool = True) -> str:
    """A local folder (a BIDS dataset) as objects under ``s3://bucket/prefix``, public-read as on
    OpenNeuro's bucket; return the URL."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    acl = {"ACL": "public-read"} if public else {}
    client.create_bucket(Bucket=bucket, **acl)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}",
                               ExtraArgs=acl or None)
    return f"s3://{bucket}/{prefix}"
