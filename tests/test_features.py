"""Linear band power and multi-lag (FIR) band power: the features the field's encoding models read."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import from_cache

from meg2fmri.ingest import cache
from meg2fmri.ingest import cli as ingest_cli
from meg2fmri.ingest.pairing import BANDS, band_power, standardise_over_time
from meg2fmri.model import generate_cli, train_cli
from meg2fmri.shards.commit import Location
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index

MEG = "sub-{s}/meg/sub-{s}_task-RDR_run-{r}_{suffix}"


def run_samples(out: Path, prefix: str) -> list:
    index = read_index(out)
    found = [s for e in index.shards for s in read_shard(out / e.name) if s.key.startswith(prefix)]
    return sorted(found, key=lambda s: s.key)


def expected_fir(out: Path, subject: str, run: int, lags: int, lag_s: float, scale: str) -> np.ndarray:
    """From the cache, by hand: band power of each 1-s bin before each sample's volume, per run z-scored."""
    cached = cache.read_run(Location(out), subject, run)
    names = cached.attrs["ch_names"]
    order = [names.index(c) for c in read_index(out).features["channels"]["names"]]
    power = band_power(cached.meg[:][order], 100.0)
    rows = []
    for s in run_samples(out, f"sub-{subject}_run-{run}_"):
        end = s.meta["meg_sample"] + round(lag_s * 100)
        bins = [power[:, :, end - 100 * (j + 1):end - 100 * j].mean(axis=2) for j in range(lags)]
        rows.append(np.concatenate([(np.log(b + 1e-6) if scale == "log" else b).ravel() for b in bins]))
    return standardise_over_time(np.array(rows))


def test_fir_band_power_is_each_second_before_the_volume(ingested: Path, tmp_path: Path, capsys):


    out = from_cache(ingested, tmp_path / "fir", "--features", "bandpower", "--fir-lags", "3", "--lag", "5",
                     "--power", "linear")
    index = read_index(out)
    assert index.features["width"] == 328 * len(BANDS) * 3
    assert index.features["names"][:2] == ["BIO001:delta:lag0s", "IASX+:delta:lag0s"]
    assert index.features["names"][-1].endswith(":gamma:lag2s")
    got = np.stack([s.meg for s in run_samples(out, "sub-01_run-1_")])
    np.testing.assert_allclose(got, expected_fir(out, "01", 1, 3, 5.0, "linear"), atol=2e-4)
    # FIR lags need band power and windows; refused before any work
    assert ingest_cli.main(["--quiet", "--out", str(tmp_path / "no"), "--from-cache", "--fir-lags", "3"]) == 2
    assert "--fir-lags is 0-30 one-second bins, with --features bandpower" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_generate_reads_an_fir_model(ingested: Path, tiny_root: Path, tmp_path: Path):


    out = from_cache(ingested, tmp_path / "fir", "--features", "bandpower", "--fir-lags", "2",
                     "--stride", "1")
    run = tmp_path / "runs" / "cgan"
    assert train_cli.main(["--shards", str(out), "--out", str(run), "--epochs", "1", "--quiet", "--device",
                           "cpu", "--max-steps", "2", "--meg-only"]) == 0
    image = tmp_path / "fir_bold.nii.gz"
    fif = tiny_root / MEG.format(s="04", r=3, suffix="meg.fif")
    assert generate_cli.main(["--model", str(run), "--meg", str(fif), "--start", "10", "--stop", "30",
                              "--out", str(image), "--quiet"]) == 0
    assert nib.load(image).shape == (32, 32, 1, int((20 - 0.64) // 0.71) + 1)
