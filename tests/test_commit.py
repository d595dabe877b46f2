"""The one commit mechanism, the same tests for every backend (a local folder and S3 on loopback)."""

from __future__ import annotations

import boto3
import pytest

from meg2fmri.shards.commit import Location


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> Location:
    if request.param == "local":
        return Location(tmp_path / "out")
    endpoint = request.getfixturevalue("s3_server")
    bucket = f"meg2fmri-commit-{tmp_path.name.lower().replace('_', '-')[-30:]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return Location(f"s3://{bucket}/prefix", {"endpoint_url": endpoint})


def test_put_read_list_and_remove(place: Location):
    place.put("a/b.bin", b"one")
    place.put("a/c.bin", b"two")
    assert place.read_bytes("a/b.bin") == b"one" and place.names("a") == ["b.bin", "c.bin"]
    assert set(place.find("a")) == {"a/b.bin", "a/c.bin"}
    stamp = place.stamp("a/b.bin")
    assert stamp["bytes"] == 3 and ("etag" in stamp) == place.remote and ("mtime_ns" in stamp) != place.remote
    place.remove("a")
    assert place.names("a") == [] and not place.exists("a/b.bin")
    with pytest.raises(FileNotFoundError, match="b.bin: no such file"):
        place.read_bytes("a/b.bin")


def test_an_object_written_with_an_error_never_appears(place: Location):
    """Not the part written before the error, nor a multipart upload (60 MB: s3fs sends a 50-MB part)."""
    with pytest.raises(RuntimeError, match="cut"), place.open_atomic("big.bin") as f:
        f.write(b"x" * (60 << 20))
        raise RuntimeError("cut")
    assert not place.exists("big.bin") and place.names() == []
    if place.remote:
        bucket = place.root.split("/")[0]
        endpoint = place.storage_options["endpoint_url"]
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with place.open_atomic("big.bin") as f:
        f.write(b"y" * (12 << 20))
    assert place.info("big.bin")["size"] == 12 << 20


def test_a_long_lived_reader_sees_other_writers(place: Location):
    """Listings are not cached: what another writer (another node) adds or deletes is seen at once."""
    place.put("runs/one", b"1")
    assert place.names("runs") == ["one"]
    other = Location(place.url, place.storage_options)
    other.put("runs/two", b"2")
    assert place.names("runs") == ["one", "two"] and place.exists("runs/two")
    other.remove("runs/one")
    assert place.names("runs") == ["two"]
