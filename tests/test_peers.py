"""The peers' converters and readers (bench/peers.py) on the tiny dataset's shards: every sample
reaches each peer's format (Energon: our shards as they are, described) and comes back exactly once
with its values.

`make test` installs LitData (without its optional torchvision, which it imports only to decode
images and video) and Megatron-Energon beside our torch pin, so their tests run everywhere. MosaicML
Streaming imports torchvision at `import streaming`, and the index's torchvision needs torch 2.14.1:
its tests run in the peers' environment (`make bench-peers` builds `.venv-peers`) and are skipped
elsewhere."""

from __future__ import annotations

import importlib.util

import pytest

from meg2fmri.bench import peers

# the peers' own warnings (MDS hands torch read-only numpy arrays; torch says so) are not ours
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

CONVERTERS = {"litdata": peers.to_litdata, "mosaicml": peers.to_mds, "energon": peers.to_energon}


def installed(reader: str) -> bool:
    try:
        return importlib.util.find_spec(peers.IMPORTS[reader]) is not None
    except ModuleNotFoundError:  # a parent package (megatron) is missing
        return False


def needs(reader: str):
    return pytest.mark.skipif(not installed(reader), reason=f"{peers.IMPORTS[reader]} is not installed "
                              "(MosaicML Streaming needs torchvision: `make bench-peers`)")


@pytest.fixture(scope="module")
def formats(ingested, tmp_path_factory):
    """Each installed peer's copy of the training samples, the reference sums and the payload bytes."""
    paths, sums, payload = peers.reference(ingested)
    work = tmp_path_factory.mktemp("peers")
    folders = {name: convert(paths, work / name) for name, convert in CONVERTERS.items() if installed(name)}
    return {**folders, "ours": ingested}, sums, payload, work


READERS = [pytest.param(name, marks=needs(name)) for name in CONVERTERS] + ["ours"]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("workers", [0, 2])
def test_each_reader_delivers_every_sample_once_with_its_values(formats, reader, workers):
    folders, sums, payload, work = formats
    cache = work / f"cache-{reader}-{workers}"
    result = peers.measure(reader, str(folders[reader]), cache, 16, workers, None, sums, payload, epochs=1)
    assert result["delivered"] == result["distinct"] == result["expected"] == len(sums)
    assert result["bad_checksums"] == 0 and result["exactly_once"]
    assert result["samples_per_s"] > 0 and result["first_batch_s"] > 0 and result["peak_rss_mb"] > 0


@pytest.mark.parametrize("reader", [pytest.param("litdata", marks=needs("litdata")), "ours"])
def test_the_check_catches_a_wrong_sample(formats, reader):
    """A reference that disagrees with one sample's values: the reader is reported as not exact."""
    folders, sums, payload, work = formats
    wrong = dict(sums)
    meg, fmri = wrong[3]
    wrong[3] = (meg + 1.0, fmri)
    result = peers.measure(reader, str(folders[reader]), work / f"cache-wrong-{reader}", 16, 0, None, wrong,
                           payload, epochs=1)
    assert result["bad_checksums"] == 1 and not result["exactly_once"]


@needs("litdata")
def test_litdata_copy_holds_every_sample_with_our_ids(formats):
    import litdata

    folders, sums, _, _ = formats
    lit = litdata.StreamingDataset(str(folders["litdata"]))
    assert len(lit) == len(sums)
    assert sorted(int(lit[i]["index"]) for i in range(len(lit))) == sorted(sums)


@needs("energon")
def test_energon_copy_names_every_sample_of_our_shards(formats):
    """Energon reads our tars as they are: its key map names each sample once, with our ids."""
    import json

    folders, sums, _, _ = formats
    ids = json.loads((folders["energon"] / "sample-ids.json").read_text())
    assert sorted(ids.values()) == sorted(sums)
    assert (folders["energon"] / ".nv-meta" / "dataset.yaml").is_file()


@needs("mosaicml")
def test_mds_copy_holds_every_sample(formats):
    import streaming

    folders, sums, _, _ = formats
    dataset = streaming.StreamingDataset(local=str(folders["mosaicml"]), shuffle=False, batch_size=1)
    assert sorted(int(s["index"]) for s in dataset) == sorted(sums)
