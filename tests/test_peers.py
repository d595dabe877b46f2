"""The peers' converters and readers (bench/peers.py) on the tiny dataset's shards: every sample
reaches each peer's format (Energon: our shards as they are, described) and comes back exactly once
with its values. These need the peers' environment (make bench-peers builds .venv-peers; LitData and
Streaming need torchvision, hence torch 2.14.1) and are skipped where litdata, mosaicml-streaming or
megatron-energon is not installed."""

from __future__ import annotations

import pytest

litdata = pytest.importorskip("litdata")
streaming = pytest.importorskip("streaming")
pytest.importorskip("megatron.energon")

from meg2fmri.bench import peers  # noqa: E402

# the peers' own warnings (MDS hands torch read-only numpy arrays; torch says so) are not ours
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def formats(ingested, tmp_path_factory):
    paths, sums, payload = peers.reference(ingested)
    work = tmp_path_factory.mktemp("peers")
    folders = {"litdata": peers.to_litdata(paths, work / "litdata"),
               "mosaicml": peers.to_mds(paths, work / "mds"),
               "energon": peers.to_energon(paths, work / "energon"), "ours": ingested}
    return folders, sums, payload, work


@pytest.mark.parametrize("reader", ["litdata", "mosaicml", "energon", "ours"])
@pytest.mark.parametrize("workers", [0, 2])
def test_each_reader_delivers_every_sample_once_with_its_values(formats, reader, workers):
    folders, sums, payload, work = formats
    cache = work / f"cache-{reader}-{workers}"
    result = peers.measure(reader, str(folders[reader]), cache, 16, workers, None, sums, payload, epochs=1)
    assert result["delivered"] == result["distinct"] == result["expected"] == len(sums)
    assert result["bad_checksums"] == 0 and result["exactly_once"]
    assert result["samples_per_s"] > 0 and result["first_batch_s"] > 0 and result["peak_rss_mb"] > 0


def test_the_check_catches_a_wrong_sample(formats):
    """A reference that disagrees with one sample's values: the reader is reported as not exact."""
    folders, sums, payload, work = formats
    wrong = dict(sums)
    meg, fmri = wrong[3]
    wrong[3] = (meg + 1.0, fmri)
    result = peers.measure("litdata", str(folders["litdata"]), work / "cache-wrong", 16, 0, None, wrong,
                           payload, epochs=1)
    assert result["bad_checksums"] == 1 and not result["exactly_once"]


def test_converters_keep_every_sample(formats, ingested):
    folders, sums, _, _ = formats
    dataset = streaming.StreamingDataset(local=str(folders["mosaicml"]), shuffle=False, batch_size=1)
    assert sorted(int(s["index"]) for s in dataset) == sorted(sums)
    lit = litdata.StreamingDataset(str(folders["litdata"]))
    assert len(lit) == len(sums)
