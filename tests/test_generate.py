"""Evaluation on volumes (maps as NIfTI, FDR, truth) and ``generate``: MEG in, a NIfTI series out."""

from __future__ import annotations

import json
from pathlib import Path

import mne
import nibabel as nib
import numpy as np
import pytest

from meg2fmri.model import generate_cli
from meg2fmri.model.eval import evaluate_cli, oracle_cli
from meg2fmri.model.eval.volume_maps import run_maps
from meg2fmri.model.train import TrainConfig, train

MEG = "sub-{s}/meg/sub-{s}_task-RDR_run-{r}_{suffix}"


@pytest.fixture(scope="module")
def volume_eval(volume_ingested: Path, volume_runs: Path, tiny_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "volume"
    oracle = out.parent / "oracle.npz"
    assert oracle_cli.main(["--bids-root", str(tiny_root), "--ingest", str(volume_ingested),
                              "--out", str(oracle)]) == 0
    assert evaluate_cli.main(["--shards", str(volume_ingested), "--runs", str(volume_runs), "--out", str(out),
                              "--bootstrap", "100", "--null-draws", "200", "--oracle", str(oracle),
                              "--bids-root", str(tiny_root)]) == 0
    return out


def test_volume_evaluation_writes_maps_on_the_grid(volume_eval: Path, volume_ingested: Path, tiny_root: Path):
    result = json.loads((volume_eval / "results.json").read_text())
    test = result["sets"]["test"]
    maps = test["maps"]
    mask_img = nib.load(volume_ingested / "mask.nii.gz")
    mask = mask_img.get_fdata() > 0
    assert maps["voxels"] == int(mask.sum())
    r_img = nib.load(volume_eval / "maps" / "test" / "cgan_r.nii.gz")
    assert r_img.shape == mask.shape
    np.testing.assert_allclose(r_img.affine, mask_img.affine)
    assert (r_img.get_fdata()[~mask] == 0).all()
    # the map is the run-mean per-voxel r of the saved predictions
    saved = np.load(volume_eval / "predictions" / "test" / "cgan.npz")
    keys = saved["keys"].tolist()
    runs = sorted({k.rsplit("_w", 1)[0] for k in keys})
    by_run = [np.array(sorted((i for i, k in enumerate(keys) if k.startswith(run + "_w")),
                              key=lambda i: keys[i])) for run in runs]
    r, _ = run_maps(saved["predictions"], saved["targets"], by_run)
    np.testing.assert_allclose(r_img.get_fdata()[mask], r, atol=1e-5)
    assert maps["rows"]["cgan"]["mean_r"] == pytest.approx(r.mean(), abs=1e-6)
    row = {r["name"]: r for r in test["rows"]}["cgan"]
    assert row["voxel_r"] == pytest.approx(r.mean(), abs=1e-6) and np.isnan(row["ssim"])
    for name, values in maps["rows"].items():
        assert 0 <= values["fdr_fraction"] <= 1, name
    # the r map against the truth: the MEG-visible sources' map amplitude of the set's subjects
    config = json.loads((tiny_root / "derivatives/synth/synth_config.json").read_text())
    visible = len(config["sources"]["meg_and_bold"])
    amplitude = np.mean([np.sqrt((np.load(tiny_root / f"derivatives/synth/sub-{s}/sub-{s}_fmri_maps.npy")
                                  [:visible] ** 2).sum(axis=0)) for s in test["subjects"]], axis=0)
    oracle_r = nib.load(volume_eval / "maps" / "test" / "oracle_r.nii.gz").get_fdata()[mask]
    assert maps["rows"]["oracle"]["truth_r"] == pytest.approx(np.corrcoef(oracle_r, amplitude[mask])[0, 1])
    # the noise-free truth lights up where the sources are (weakly on 2 tiny runs: at tSNR 30 with
    # cardiorespiratory noise no single voxel passes FDR there)
    assert maps["rows"]["oracle"]["truth_r"] > 0
    # and its r map is above every model's on the seen subjects (on `test`, 2 runs of one 40-s story,
    # the mask-mean r follows the global slow physiological noise, which there happens to run against
    # the story's response: -0.11 for the oracle)
    seen = result["sets"]["seen_subject"]["maps"]["rows"]
    models = {name: values["mean_r"] for name, values in seen.items() if not name.startswith("oracle")}
    assert seen["oracle"]["mean_r"] > max(models.values()) + 0.05, models
    assert (volume_eval / "maps" / "test" / "cgan_r.png").stat().st_size > 10_000
    assert "Voxel maps" in (volume_eval / "results.md").read_text()


def test_generate_reproduces_evaluate_and_writes_a_bids_style_nifti(volume_eval: Path, volume_runs: Path,
                                                                     volume_ingested: Path, tiny_root: Path,
                                                                     tmp_path: Path):
    from nilearn import image

    out = tmp_path / "sub-04_task-RDR_run-3_desc-meg2fmri_bold.nii.gz"
    assert generate_cli.main(["--model", str(volume_runs / "cgan"), "--quiet",
                              "--meg", str(tiny_root / MEG.format(s="04", r=3, suffix="meg.fif")),
                              "--events", str(tiny_root / MEG.format(s="04", r=3, suffix="events.tsv")),
                              "--out", str(out)]) == 0
    img = image.load_img(out)
    mask_img = nib.load(volume_ingested / "mask.nii.gz")
    mask = mask_img.get_fdata() > 0
    saved = np.load(volume_eval / "predictions" / "test" / "cgan.npz")
    rows = [i for i, k in enumerate(saved["keys"].tolist()) if k.startswith("sub-04_run-3_w")]
    assert img.shape == (*mask.shape, len(rows))  # one volume per sample: ingest paired every TR
    np.testing.assert_allclose(img.affine, mask_img.affine)
    assert img.header.get_zooms()[3] == pytest.approx(0.71)
    series = img.get_fdata()
    np.testing.assert_allclose(series[mask].T, saved["predictions"][rows], atol=1e-6)
    assert (series[~mask] == 0).all()
    sidecar = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(0.71) and sidecar["Lag"] == 5.0
    assert sidecar["Features"]["kind"] == "mean" and sidecar["Model"]["head"] == "lowrank"
    assert sidecar["Sources"] == [str(tiny_root / MEG.format(s="04", r=3, suffix="meg.fif"))]
    assert out.with_name(out.name.replace(".nii.gz", ".png")).is_file()


def test_generate_refuses_bad_input_naming_the_file_and_the_fix(volume_runs: Path, tiny_root: Path,
                                                                tmp_path: Path, capsys):
    fif = tiny_root / MEG.format(s="04", r=3, suffix="meg.fif")
    model = str(volume_runs / "cgan")
    # a time range outside the recording
    assert generate_cli.main(["--model", model, "--meg", str(fif), "--start", "5", "--stop", "5000",
                              "--quiet", "--out", str(tmp_path / "a.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert str(fif) in err and "outside the recording" in err and "--start/--stop" in err
    # a recording without channels the model reads
    raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
    raw.drop_channels(raw.ch_names[:10])
    short = tmp_path / "sub-04_task-RDR_run-3_meg.fif"
    raw.save(short, verbose="error")
    assert generate_cli.main(["--model", model, "--meg", str(short), "--quiet",
                              "--out", str(tmp_path / "b.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert str(short) in err and "10 are not in this recording" in err and "--meg-only" in err
    assert not (tmp_path / "b.nii.gz").exists()
    # no checkpoint
    assert generate_cli.main(["--model", str(tmp_path), "--meg", str(fif), "--quiet"]) == 2
    assert "no checkpoint.pt there" in capsys.readouterr().err


def test_generate_with_a_slice_model_writes_an_s_by_s_by_1_series(ingested: Path, tiny_root: Path,
                                                                   tmp_path: Path):
    run = tmp_path / "cgan"
    train(TrainConfig(shards=str(ingested), out=str(run), epochs=1, batch_size=16, device="cpu"),
          progress=False)
    out = tmp_path / "slice_bold.nii.gz"
    assert generate_cli.main(["--model", str(run), "--quiet", "--start", "10", "--stop", "30",
                              "--meg", str(tiny_root / MEG.format(s="04", r=3, suffix="meg.fif")),
                              "--out", str(out)]) == 0
    img = nib.load(out)
    frames = int((20 - 0.64) // 0.71) + 1
    assert img.shape == (32, 32, 1, frames)
    # the resized slice sits in the training grid: its centre maps to the grid's centre in-plane
    grid = nib.load(tiny_root / "sub-04/func/sub-04_task-RDR_run-3_bold.nii.gz")
    centre = img.affine @ [15.5, 15.5, 0, 1]
    expected = grid.affine @ [(grid.shape[0] - 1) / 2, (grid.shape[1] - 1) / 2, 0, 1]
    np.testing.assert_allclose(centre[:2], expected[:2], atol=1e-4)  # mm (float32 headers)


def test_generate_reads_the_fif_from_s3(volume_runs: Path, tiny_root: Path, s3_server: str, tmp_path: Path):
    """An ``s3://`` FIF (moto on loopback) gives the same series as the local file."""
    import boto3

    fif = tiny_root / MEG.format(s="04", r=3, suffix="meg.fif")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="meg2fmri-generate")
    client.upload_file(str(fif), "meg2fmri-generate", "sub-04/meg/sub-04_task-RDR_run-3_meg.fif")
    common = ["--model", str(volume_runs / "cgan"), "--quiet", "--start", "10", "--stop", "40"]
    local, remote = tmp_path / "local_bold.nii.gz", tmp_path / "remote_bold.nii.gz"
    assert generate_cli.main([*common, "--meg", str(fif), "--out", str(local)]) == 0
    url = "s3://meg2fmri-generate/sub-04/meg/sub-04_task-RDR_run-3_meg.fif"
    assert generate_cli.main([*common, "--meg", url, "--endpoint-url", s3_server, "--out", str(remote)]) == 0
    np.testing.assert_array_equal(nib.load(remote).get_fdata(), nib.load(local).get_fdata())
    assert json.loads(remote.with_name("remote_bold.json").read_text())["Sources"] == [url]


def test_generate_samples_at_the_tr_on_the_model_card_and_old_checkpoints_upgrade(
        volume_runs: Path, tiny_root: Path, tmp_path: Path):
    """The output's TR is the card's (the one the model was trained on), not a constant; a checkpoint
    written before the card (its ``model`` dict: no target, no TR) loads as the same model."""
    import io

    import torch

    from meg2fmri.model.checkpoint import ModelCard, load_checkpoint

    state, card = load_checkpoint(str(volume_runs / "cgan"))
    assert card.tr == pytest.approx(0.71) and card.versions["meg2fmri"]
    again = ModelCard.from_dict(card.to_dict())
    assert again.to_dict().keys() == card.to_dict().keys() and again.target == card.target
    np.testing.assert_array_equal(again.mean_target, card.mean_target)
    slower = {**state, "card": {**card.to_dict(), "tr": 1.42}}  # as if trained on a TR of 1.42 s
    (tmp_path / "slow").mkdir()
    buffer = io.BytesIO()
    torch.save(slower, buffer)
    (tmp_path / "slow" / "checkpoint.pt").write_bytes(buffer.getvalue())
    fif = str(tiny_root / MEG.format(s="04", r=3, suffix="meg.fif"))
    events = str(tiny_root / MEG.format(s="04", r=3, suffix="events.tsv"))
    outs = {}
    for name, model in (("card", volume_runs / "cgan"), ("slow", tmp_path / "slow")):
        outs[name] = tmp_path / f"{name}_desc-meg2fmri_bold.nii.gz"
        assert generate_cli.main(["--model", str(model), "--quiet", "--meg", fif, "--events", events,
                                  "--out", str(outs[name])]) == 0
    normal, slow = nib.load(outs["card"]), nib.load(outs["slow"])
    assert slow.header.get_zooms()[3] == pytest.approx(1.42)
    assert abs(slow.shape[3] - normal.shape[3] / 2) <= 1  # half the volumes over the same story
    sidecar = json.loads(outs["slow"].with_name(outs["slow"].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(1.42)

    legacy = {k: v for k, v in state.items() if k != "card"}
    old = card.to_dict()
    legacy["model"] = {k: v for k, v in old.items() if k not in ("tr", "versions", "card_version")}
    upgraded = ModelCard.from_dict(legacy["model"])
    assert upgraded.tr == pytest.approx(0.71) and upgraded.target == card.target
    slice_era = ModelCard.from_dict({"width": 3, "size": 32, "feature_index": [0, 1, 2]})
    assert slice_era.target.kind == "slice" and slice_era.target.shape == (32, 32)
    assert slice_era.head == "dense"
