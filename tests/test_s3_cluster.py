"""Ingest from S3 to S3 on a three-node Ray cluster with no shared disk (moto on loopback).

The dataset is uploaded public-read and read anonymously; the output is written with credentials.
Every Python process of the test (the drivers, every Ray worker of every node) runs an audit hook
that records any connection or name lookup that would leave loopback, and the test fails on any.
The driver is killed with SIGKILL mid-ingest and run again: the shards equal a local ingest's byte
for byte, and the bucket holds nothing but the committed outputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest

from meg2fmri.shards.index import ShardIndex

HOOK = textwrap.dedent('''
    import os, socket, sys
    _LOG = os.environ.get("MEG2FMRI_NET_LOG")
    _LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "", None}

    def _note(line):
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {' '.join(sys.argv[:2])[:120]}: {line}\\n")

    def _local(host):
        host = host.decode() if isinstance(host, bytes) else host
        return host in _LOCAL or str(host).startswith("127.") or host == socket.gethostname()

    def _hook(event, args):
        if event == "socket.connect" and isinstance(args[1], tuple) and not _local(args[1][0]):
            _note(f"connect {args[1]!r}")
        elif event == "socket.getaddrinfo" and not _local(args[0]):
            _note(f"getaddrinfo {args[0]!r}")

    if _LOG:
        with open(_LOG + ".active", "a") as f:
            f.write(f"{os.getpid()} {os.environ.get('TMPDIR')}\\n")
        sys.addaudithook(_hook)
''')

SOURCE_BUCKET, OUT_BUCKET = "meg2fmri-bids", "meg2fmri-out"


def upload_public(client, root: Path, bucket: str, prefix: str) -> None:
    """The BIDS tree as public-read objects in a public-read bucket (as OpenNeuro's)."""
    client.create_bucket(Bucket=bucket, ACL="public-read")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}",
                               ExtraArgs={"ACL": "public-read"})


def listing(client, bucket: str, prefix: str) -> dict[str, int]:
    keys: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        keys |= {o["Key"][len(prefix) + 1:]: o["Size"] for o in page.get("Contents", [])}
    return keys


def committed_runs(client, keys: dict[str, int]) -> list[str]:
    """Cache groups whose metadata carries the commit attribute."""
    runs = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "cache.zarr" and parts[2] == "zarr.json":
            body = client.get_object(Bucket=OUT_BUCKET, Key=f"tiny/{key}")["Body"].read()
            if "sources" in json.loads(body).get("attributes", {}):
                runs.append(parts[1])
    return runs


@pytest.fixture()
def cluster(tmp_path, aws_env):
    """A head node that runs no tasks (the driver's) and two one-CPU worker nodes, each with its own
    temporary folder, on loopback; every Python process under the audit hook."""
    from ray.cluster_utils import Cluster

    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "network.log"
    # Ray's own head (its dashboard process) reports to usage-stats.ray.io even with usage stats off,
    # and probes cloud metadata (169.254.169.254) unless ~/ray_bootstrap_config.yaml names a provider:
    # both are Ray's, not ingest's, and are kept on loopback here as an air-gapped cluster would.
    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    env = {"PYTHONPATH": str(hook_dir), "MEG2FMRI_NET_LOG": str(log), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/", "HOME": str(home),
           "RAY_AUTH_MODE": "disabled"}  # its token lives in ~/.ray; this cluster is loopback-only
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the nodes' processes inherit it
    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "env_vars": {"TMPDIR": str(tmp_path / "node-head")}})
    for i in (1, 2):
        (tmp_path / f"node-{i}").mkdir()
        nodes.add_node(num_cpus=1, memory=2 * 2**30, node_ip_address="127.0.0.1",
                       resources={f"ingest_node_{i}": 1}, env_vars={"TMPDIR": str(tmp_path / f"node-{i}")})
    (tmp_path / "node-head").mkdir(exist_ok=True)
    try:
        yield nodes, env, log
    finally:
        nodes.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def driver(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meg2fmri.ingest.cli", *args], cwd=cwd,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_until_idle(address: str, env: dict, cwd: Path) -> None:
    """Until every CPU of the cluster is free again (the killed driver's tasks are gone)."""
    code = ("import ray, time\n"
            f"ray.init(address={address!r}, log_to_driver=False, configure_logging=False)\n"
            "end = time.time() + 60\n"
            "while time.time() < end and ray.available_resources().get('CPU', 0) < "
            "ray.cluster_resources()['CPU']:\n    time.sleep(0.2)\n")
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, **env}, check=True,
                   capture_output=True, timeout=120)


def test_ingest_s3_to_s3_on_a_ray_cluster_survives_kill_9(tiny_root, ingested, cluster, s3_server, tmp_path):
    nodes, env, log = cluster
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    upload_public(client, tiny_root, SOURCE_BUCKET, "tiny")
    client.create_bucket(Bucket=OUT_BUCKET)
    work = tmp_path / "cwd"
    work.mkdir()
    args = ["--quiet", "--bids-root", f"s3://{SOURCE_BUCKET}/tiny", "--anon", "--out", f"s3://{OUT_BUCKET}/tiny",
            "--endpoint-url", s3_server, "--ray-address", nodes.address, "--shard-samples", "30"]

    first = driver(args, env, work)
    deadline = time.time() + 120
    committed: list[str] = []
    while time.time() < deadline and first.poll() is None:
        keys = listing(client, OUT_BUCKET, "tiny")
        committed = committed_runs(client, keys)
        if len(committed) >= 2:
            break
        time.sleep(0.2)
    assert first.poll() is None, f"the first ingest ended before it could be killed:\n{first.stdout.read()}"
    first.send_signal(signal.SIGKILL)
    first.wait()
    first.stdout.close()
    assert "index.json" not in listing(client, OUT_BUCKET, "tiny")
    wait_until_idle(nodes.address, env, work)

    second = driver(args, env, work)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert "tasks ran on 2 Ray nodes" in output

    index = ShardIndex.from_json(json.loads(client.get_object(Bucket=OUT_BUCKET, Key="tiny/index.json")
                                            ["Body"].read()))
    local = ShardIndex.from_json(json.loads((ingested / "index.json").read_text()))
    assert [(e.name, e.split, e.count, e.sha256) for e in index.shards] == \
        [(e.name, e.split, e.count, e.sha256) for e in local.shards]
    assert index.target == local.target and index.split == local.split

    keys = listing(client, OUT_BUCKET, "tiny")
    runs = {f"sub-{r['subject']}_run-{r['run']}" for r in local.runs}
    assert sorted(committed_runs(client, keys)) == sorted(runs)
    work_dirs = {k.split("/")[1] for k in keys if k.startswith(".work/")} - {"attempt"}
    assert len(work_dirs) == 1
    expected_pairs = {f".work/{next(iter(work_dirs))}/{r}.npz" for r in runs}
    orphans = [k for k in keys if not (
        k in ("index.json", ".work/attempt") or k in {e.name for e in index.shards} or k in expected_pairs
        or k == "cache.zarr/zarr.json" or k.split("/")[:2] in [["cache.zarr", r] for r in runs])]
    assert orphans == []
    assert not client.list_multipart_uploads(Bucket=OUT_BUCKET).get("Uploads")

    assert list(work.iterdir()) == []  # nothing written locally
    active = (log.parent / f"{log.name}.active").read_text().splitlines()
    assert len({line.split()[1] for line in active}) >= 3  # the hook ran on the nodes (their TMPDIRs)
    assert not log.exists(), log.read_text()
