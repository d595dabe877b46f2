"""The trainer: resumes bit-exactly on CPU, logs the loader's report card, refuses bad inputs early."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from meg2fmri.model import train_cli
from meg2fmri.model.outputs import read_log
from meg2fmri.model.train import TrainConfig, train
from meg2fmri.shards.commit import Location
from meg2fmri.shards.errors import InputError


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["generator"]


@pytest.mark.parametrize("variant", ["cgan", "shuffled"])
def test_stopped_and_resumed_run_ends_with_the_same_weights(ingested, tmp_path, variant):
    base = dict(shards=str(ingested), epochs=2, batch_size=16, seed=4, variant=variant, device="cpu")
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **base), progress=False)
    part = tmp_path / "part"
    train(TrainConfig(out=str(part), max_steps=7, **base), progress=False)  # stops inside epoch 2
    state = torch.load(part / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 7 and state["loader"]["epoch"] == 1 and state["loader"]["position"] == 2
    resumed = train(TrainConfig(out=str(part), resume=True, **base), progress=False)
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_log(Location(part)) if "epoch_end" not in r]
    assert steps == list(range(1, 11))  # 80 samples / 16 = 5 steps per epoch, none repeated


def test_kill_9_during_training_then_resume_ends_with_the_same_weights(ingested, tmp_path):
    """A training process killed with SIGKILL leaves a whole checkpoint (never a half-written file under
    its name); resumed from it, the run ends with the weights of an uninterrupted one, each step logged
    once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = {"epochs": 30, "batch_size": 16, "seed": 3, "checkpoint_every": 3}
    part = tmp_path / "part"
    cmd = [sys.executable, "-m", "meg2fmri.model.train_cli", "--shards", str(ingested), "--out", str(part),
           "--device", "cpu", "--quiet", *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items())]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while not (part / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    killed_at = torch.load(part / "checkpoint.pt", map_location="cpu", weights_only=False)["step"]
    assert 0 < killed_at < 150  # 80 samples / 16 = 5 steps an epoch, 30 epochs
    # the resumed and the uninterrupted run each in a fresh process too, as the killed one was (the
    # test process's torch thread settings may differ, and with them the float sums)
    subprocess.run([*cmd, "--resume"], check=True, capture_output=True, timeout=600)
    whole = tmp_path / "whole"
    subprocess.run([*cmd[:cmd.index("--out") + 1], str(whole), *cmd[cmd.index("--out") + 2:]], check=True,
                   capture_output=True, timeout=600)
    a, b = weights(whole / "checkpoint.pt"), weights(part / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_log(Location(part)) if "epoch_end" not in r]
    assert steps == list(range(1, 151))
    assert not [p for p in part.rglob(".*tmp-*")]  # what the kill cut short was cleaned up


def test_train_and_evaluate_write_to_s3(ingested, s3_server, tmp_path, capsys):
    """``--out s3://...`` for train and evaluate (moto on loopback): each object put whole."""
    import boto3

    from meg2fmri.model.eval import evaluate_cli

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="meg2fmri-runs")
    runs = "s3://meg2fmri-runs/tiny/runs"
    assert train_cli.main(["--shards", str(ingested), "--out", f"{runs}/cgan", "--epochs", "1", "--quiet",
                           "--device", "cpu", "--batch-size", "16", "--endpoint-url", s3_server]) == 0
    assert evaluate_cli.main(["--shards", str(ingested), "--runs", runs, "--out", "s3://meg2fmri-runs/tiny/eval",
                              "--bootstrap", "50", "--null-draws", "50", "--endpoint-url", s3_server]) == 0
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="meg2fmri-runs")["Contents"]}
    assert {"tiny/runs/cgan/checkpoint.pt", "tiny/runs/cgan/log/000000005.jsonl", "tiny/eval/results.json",
            "tiny/eval/results.md", "tiny/eval/predictions/test/cgan.npz", "tiny/eval/pairs.png"} <= keys
    body = client.get_object(Bucket="meg2fmri-runs", Key="tiny/eval/results.json")["Body"].read()
    results = json.loads(body)
    assert [r["name"] for r in results["sets"]["test"]["rows"]][:2] == ["cgan", "mean_image"]


def test_log_has_losses_lr_and_data_wait(ingested, tmp_path):
    train(TrainConfig(shards=str(ingested), out=str(tmp_path / "run"), epochs=1, batch_size=16, device="cpu"),
          progress=False)
    records = read_log(Location(tmp_path / "run"))
    step, end = records[0], records[-1]
    assert {"loss_d", "loss_g_adv", "loss_g_mse", "lr", "samples_per_s", "data_wait"} <= set(step)
    assert end["epoch_end"] == 0 and 0 <= end["data_wait_fraction"] <= 1


def test_one_sample_per_run_refuses_deviation_targets_and_names_the_fix(paper_ingested, tmp_path, capsys):
    """With one pair per run (--pairing paper) a run's mean image is its only image: deviation targets
    would all equal the mean training image. train refuses, naming --target image, which works."""
    args = ["--shards", str(paper_ingested), "--out", str(tmp_path / "dev"), "--epochs", "1", "--quiet",
            "--device", "cpu"]
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "training run(s) have one sample" in err and "use --target image" in err
    assert not (tmp_path / "dev" / "checkpoint.pt").exists()
    assert train_cli.main([*args[:3], str(tmp_path / "img"), *args[4:], "--target", "image"]) == 0


def test_bad_inputs_fail_before_training(ingested, tmp_path, capsys):
    missing = ["--shards", str(tmp_path / "nothing"), "--out", str(tmp_path / "r"), "--quiet"]
    assert train_cli.main(missing) == 1
    assert "no shard index" in capsys.readouterr().err
    run = tmp_path / "run"

    def config(shards=ingested, **kw) -> TrainConfig:
        return TrainConfig(**{"shards": str(shards), "out": str(run), "epochs": 2, "batch_size": 16,
                              "device": "cpu", **kw})

    train(config(epochs=1), progress=False)
    with pytest.raises(InputError, match="a run is already here"):
        train(config(), progress=False)
    with pytest.raises(InputError, match="batch_size=16"):  # other settings than the checkpoint's loader
        train(config(batch_size=8, resume=True), progress=False)
    other = tmp_path / "other-version"
    shutil.copytree(ingested, other, ignore=shutil.ignore_patterns("cache.zarr", ".*"))
    index = json.loads((other / "index.json").read_text())
    index["shards"][0]["sha256"] = "0" * 64  # an index of another dataset version
    (other / "index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="index_id"):
        train(config(shards=other, resume=True), progress=False)
    with pytest.raises(InputError, match="checkpoint is for 328 features"):
        train(config(resume=True, meg_only=True), progress=False)
    with pytest.raises(InputError, match="trained with --smooth 0.0, not 1.0"):
        train(config(resume=True, smooth=1.0), progress=False)
    with pytest.raises(InputError, match="too wide"):
        train(config(out=str(tmp_path / "wide"), smooth=20.0), progress=False)
    assert not (tmp_path / "wide").exists()


def test_torchrun_ddp_training_on_cpu(ingested, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "meg2fmri.model.train_cli", "--shards", str(ingested), "--out", str(out),
               "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["loader"]["world_size"] == 2 and state["loader"]["epoch"] == 2
    # each rank takes 40 of the 80 training samples: 5 steps of 8 per epoch, on both ranks in step
    assert state["step"] == 10
    assert not any(k.startswith("module.") for k in state["generator"])  # saved unwrapped


def test_deviation_targets_give_every_run_the_mean_anatomy(ingested):
    from meg2fmri.loader import ShardLoader, StreamConfig
    from meg2fmri.model.train import training_means
    from meg2fmri.shards.format import TargetLayout

    means = training_means(TrainConfig(shards=str(ingested), out=""), TargetLayout.slice_of(32))
    stream = StreamConfig(batch_size=80, shuffle=False, meta=True)
    loader = ShardLoader(ingested, "train", stream, device="cpu")
    batch = next(iter(loader))
    targets = batch["fmri"][:, 0] + means.offsets(batch["index"])
    runs = {}
    for i, meta in enumerate(batch["meta"]):
        runs.setdefault((meta["subject"], meta["run"]), []).append(i)
    assert len(runs) == 4
    for rows in runs.values():  # each run's mean target is the mean training image; its changes are kept
        assert torch.allclose(targets[rows].mean(dim=0), means.image, atol=1e-5)
        assert torch.allclose(targets[rows] - targets[rows].mean(dim=0),
                              batch["fmri"][rows, 0] - batch["fmri"][rows, 0].mean(dim=0), atol=1e-5)


def test_training_means_read_the_whole_split_on_every_rank(ingested, monkeypatch):
    from meg2fmri.model.train import training_means
    from meg2fmri.shards.format import TargetLayout

    config = TrainConfig(shards=str(ingested), out="")
    alone = training_means(config, TargetLayout.slice_of(32))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets: the loader would take rank 1's half
    on_rank = training_means(config, TargetLayout.slice_of(32))
    assert torch.equal(alone.image, on_rank.image) and torch.equal(alone.run_of, on_rank.run_of)
    assert torch.equal(alone.run_offsets, on_rank.run_offsets)


def test_smooth_generator_filters_only_its_change_from_the_mean_image():
    from scipy import ndimage

    from meg2fmri.model.nets import Generator

    torch.manual_seed(0)
    plain, smooth = Generator(12, 16), Generator(12, 16, smooth=1.0)
    smooth.net.load_state_dict(plain.net.state_dict())
    mean_image = torch.rand(16, 16) * 0.6 + 0.2
    for g in (plain, smooth):
        g.start_from(mean_image)
        g.eval()
    meg = torch.randn(5, 12)
    with torch.no_grad():
        raw, out = plain(meg)[:, 0].double().numpy(), smooth(meg)[:, 0].double().numpy()
    base = (mean_image.double() * 2 - 1).numpy()
    expected = base + ndimage.gaussian_filter(raw - base, (0, 1.0, 1.0), mode="mirror", truncate=3.0)
    assert abs(out - expected).max() < 1e-5
    # the filter takes out pixel noise: less change between neighbouring pixels than unfiltered
    assert abs(np.diff(out - base, axis=-1)).mean() < 0.5 * abs(np.diff(raw - base, axis=-1)).mean()
