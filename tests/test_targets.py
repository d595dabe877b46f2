"""Whole-brain and parcel targets: the training-data mask, float16 voxels, atlas means, one grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from conftest import from_cache, run_synth

from meg2fmri.ingest import cli as ingest_cli
from meg2fmri.loader import ShardLoader
from meg2fmri.model.train import TrainConfig, principal_components
from meg2fmri.shards.format import read_shard
from meg2fmri.shards.index import read_index

BOLD = "sub-{s}/func/sub-{s}_task-RDR_run-{r}_bold.nii.gz"


def normalised_run(root: Path, subject: str, run: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's BOLD min-max normalised to [0, 1] ``(i, j, k, t)`` and its affine, read with nibabel."""
    img = nib.load(root / BOLD.format(s=subject, r=run))
    data = np.asarray(img.dataobj).astype(np.float64)
    return (data - data.min()) / (data.max() - data.min()), img.affine


def test_volume_targets_are_the_in_mask_voxels_of_the_paired_volume(volume_ingested: Path, tiny_root: Path):
    from nilearn.masking import compute_epi_mask

    index = read_index(volume_ingested)
    target = index.target
    assert target["kind"] == "volume" and target["dtype"] == "float16"
    mask_img = nib.load(volume_ingested / target["mask"])
    mask = mask_img.get_fdata() > 0
    assert target["shape"] == [int(mask.sum())] and target["grid"] == list(mask.shape)
    # the mask: nilearn's EPI mask of the mean over the *training* runs' mean volumes, recomputed here
    train_runs = [(r["subject"], r["run"]) for r in index.runs if r["split"] == "train"]
    means = []
    for subject, run in train_runs:
        data, affine = normalised_run(tiny_root, subject, run)
        means.append(data.mean(axis=-1))
    np.testing.assert_allclose(mask_img.affine, affine)
    expected = compute_epi_mask(nib.Nifti1Image(np.mean(means, axis=0).astype(np.float32), affine))
    assert (expected.get_fdata() > 0).sum() == mask.sum()
    assert ((expected.get_fdata() > 0) == mask).all()
    # each sample: the paired volume's in-mask voxels in C order, within float16's half-ulp of float32
    assert 0 < target["float16_max_abs_error"] <= 2.0**-12
    entry = next(e for e in index.shards if e.split == "test")
    samples = list(read_shard(volume_ingested / entry.name))
    assert samples[0].fmri.dtype == np.float16 and samples[0].fmri.shape == (int(mask.sum()),)
    for sample in samples[:: max(1, len(samples) // 5)]:
        assert sample.meta["slice"] == -1
        data, _ = normalised_run(tiny_root, sample.meta["subject"], sample.meta["run"])
        expected = data[..., sample.meta["fmri_volume"]][mask]
        assert np.abs(sample.fmri.astype(np.float64) - expected).max() <= 2.0**-12 + 1e-6
    # plain webdataset reads the same members
    import gc
    import warnings

    import webdataset as wds

    with warnings.catch_warnings():  # webdataset 1.0 leaves a consumed shard's file to the collector
        warnings.simplefilter("ignore", ResourceWarning)
        first = list(wds.WebDataset(str(volume_ingested / entry.name), shardshuffle=False,
                                    empty_check=False).decode())[0]
        gc.collect()
    assert first["fmri.npy"].dtype == np.float16 and first["fmri.npy"].shape == (int(mask.sum()),)
    np.testing.assert_array_equal(first["fmri.npy"], samples[0].fmri)
    # the loader gives (B, voxels) float16, the bytes the shard holds
    batch = next(iter(ShardLoader(str(volume_ingested), "test")))
    assert batch["fmri"].dtype == torch.float16 and batch["fmri"].shape[1] == int(mask.sum())


def test_parcel_targets_are_atlas_means_on_the_runs_grid(ingested: Path, tiny_root: Path, tmp_path: Path,
                                                         capsys):
    from nilearn import datasets, image

    # an 8-label atlas on the MNI 2-mm grid (not the data's grid: ingest must resample it)
    brain = datasets.load_mni152_brain_mask(resolution=2)
    inside = brain.get_fdata() > 0
    ijk = np.indices(inside.shape).reshape(3, -1)
    mm = (brain.affine[:3, :3] @ ijk + brain.affine[:3, 3:]).reshape(3, *inside.shape)
    labels = (1 + (mm[0] > 0) + 2 * (mm[1] > -20) + 4 * (mm[2] > 10)) * inside
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.int16), brain.affine), atlas)
    out = from_cache(ingested, tmp_path / "parcels", "--target", "parcels", "--atlas", str(atlas))
    index = read_index(out)
    assert index.target["labels"] == list(range(1, 9)) and index.target["shape"] == [8]
    entry = next(e for e in index.shards if e.split == "train")
    sample = next(read_shard(out / entry.name))
    data, affine = normalised_run(tiny_root, sample.meta["subject"], sample.meta["run"])
    grid = nib.Nifti1Image(np.zeros(data.shape[:3], np.float32), affine)
    on_grid = image.resample_to_img(nib.load(atlas), grid, interpolation="nearest", force_resample=True,
                                    copy_header=True).get_fdata()
    volume = data[..., sample.meta["fmri_volume"]]
    expected = [volume[on_grid == label].mean() for label in range(1, 9)]
    np.testing.assert_allclose(sample.fmri, expected, atol=1e-5)
    # atlases that are not label images are refused before any work, naming the file
    probabilistic = tmp_path / "probabilistic.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((10, 10, 10)).astype(np.float32), np.eye(4)),
             probabilistic)
    args = ["--quiet", "--out", str(out), "--from-cache", "--target", "parcels", "--atlas",
            str(probabilistic)]
    assert ingest_cli.main(args) == 2
    assert f"--atlas {probabilistic}: labels must be integers" in capsys.readouterr().err


def test_parcels_need_an_atlas_and_volumes_need_one_grid(tmp_path: Path, ray_session, capsys):
    args = ["--quiet", "--out", str(tmp_path / "x"), "--from-cache", "--target", "parcels"]
    assert ingest_cli.main(args) == 2
    assert "--target parcels needs --atlas" in capsys.readouterr().err
    root = run_synth(tmp_path / "bids", "--preset", "tiny", "--subjects", "01,02", "--runs", "1,2",
                     "--shape", "12x12x9", "--duration", "20", "--jobs", "2")
    bold = root / BOLD.format(s="02", r=2)  # one run on another grid (a slice fewer): a raw-space fact
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :8], img.affine, img.header), bold)
    args = ["--quiet", "--bids-root", str(root), "--out", str(tmp_path / "out"), "--target", "volume",
            "--held-out", "02", "--held-out-stories", "none"]
    assert ingest_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "sub-02_run-2 is on a 12x12x8 grid" in err and "--preprocessed" in err


def test_low_rank_head_finds_the_training_changes_subspace():
    """Rank-3 changes plus small noise: 99% of the variance needs 3 components (two explain 93%),
    which span the true subspace; coefficients' scale is their standard deviation (Tanh units:
    twice [0, 1])."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((500, 3)))[0].T  # (3, values) orthonormal
    coefs = rng.standard_normal((400, 3)) * [3.0, 2.0, 1.0]
    changes = torch.tensor(coefs @ basis + 0.01 * rng.standard_normal((400, 500)), dtype=torch.float32)
    head, how = principal_components(changes, TrainConfig(shards="", out="", explained=0.99))
    assert how["components"] == 3 and how["explained_variance"] > 0.99
    overlap = head["components"].double().numpy() @ basis.T  # (3, 3): a rotation if the spans agree
    np.testing.assert_allclose(np.linalg.svd(overlap)[1], 1.0, atol=1e-3)
    np.testing.assert_allclose(sorted(head["scale"].numpy(), reverse=True), [6.0, 4.0, 2.0], rtol=0.15)
    fixed, how = principal_components(changes, TrainConfig(shards="", out="", components=5))
    assert how["components"] == 5 and fixed["components"].shape == (5, 500)


def test_volume_models_train_with_the_low_rank_head(volume_runs: Path, volume_ingested: Path):
    from meg2fmri.model.checkpoint import load_checkpoint
    from meg2fmri.model.train import generator_from_checkpoint

    state, card = load_checkpoint(str(volume_runs / "cgan"))
    index = read_index(volume_ingested)
    voxels = index.target["shape"][0]
    assert card.head == "lowrank" and card.target.shape == (voxels,) and card.tr == index.tr == 0.71
    k = card.head_choice["components"]
    generator = generator_from_checkpoint(state, card)
    assert generator.components.shape == (k, voxels) and k < voxels
    # its output layer has 1024 x k weights, not 1024 x voxels
    assert generator.net[-1].weight.shape == (k, 1024)
    gram = generator.components @ generator.components.T
    torch.testing.assert_close(gram, torch.eye(k), atol=1e-4, rtol=0)
    assert json.loads(json.dumps(card.head_choice))["rule"].startswith("fewest explaining")
