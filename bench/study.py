"""``bench study``: an SMN4Lang-shaped experiment at scale, with a learning curve.

How much data does MEG -> fMRI need, and does the MEG beat the sound and ridge? One synthetic
dataset of the calibrated world (12 subjects; the training subjects hear the training stories, the
held-out subjects the held-out stories, nothing in between: ``synth --block``), ingested once, then
re-paired from the Zarr cache (hard links: nothing decoded twice) into nested training sets of
growing size, each with the same ``test`` runs (held-out subjects x held-out stories). At every size:
ridge, stimulus (the story's sound), mean image, the oracle and the cGAN and its shuffled control on
slice targets; ridge, stimulus, mean image and the oracle on whole-brain (volume) targets, and the
cGAN there at the largest size. Every size is scored in one ROI, chosen on the largest training set
(training subjects x training stories, never a held-out run).

Every step is a command of the engine (``meg2fmri synth``, ``ingest``, ``meg2fmri oracle``, ``train``,
``evaluate``) run as its own process; a step that finished leaves a stamp in ``OUT/steps.json`` and is
not run again, so a killed study started again redoes only the step it was in (and each of those
resumes or rewrites whole). What no later step reads is deleted as soon as its last reader is done
(the raw MEG after the one decode, each size's shards after its evaluation) unless ``--keep-data``.
``OUT/study.json``, ``OUT/study.md`` and ``OUT/learning_curve.png`` are rewritten after every
evaluation. Everything here was fixed before any test figure was seen (docs/study.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SUBJECTS = tuple(f"{i:02d}" for i in range(1, 13))


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """The study's design: subjects, split, story length and count, sizes, epochs, statistics."""
    out: Path
    seed: int = 0
    subjects: tuple[str, ...] = SUBJECTS
    held_out: tuple[str, ...] = ("09", "10", "11", "12")  # two female, two male (participants.tsv)
    train_stories: int = 16  # stories 1..N heard by the training subjects
    test_stories: int = 6  # the next M, heard by the held-out subjects
    duration: float = 270.0  # s per story (ds004078's are 4-7 min)
    shape: str = "48x48x32"  # the demo's grid (2-mm voxels of the same head)
    meg_sfreq: float = 200.0  # synth --meg-sfreq: 5x less FIF on disk; ingest works at 100 Hz anyway
    sizes: tuple[int, ...] = (2, 4, 8, 16)  # training stories per learning-curve size (all 8 subjects)
    epochs: int = 4  # cGAN epochs at every size (lr halved every `lr_step`)
    lr_step: int = 2
    smooth: float = 1.0
    volume_epochs: int = 2  # the whole-brain cGAN (largest size only)
    volume: bool = True
    bootstrap: int = 2000
    null_draws: int = 2000
    volume_null_draws: int = 1000  # whole-brain: every voxel per draw (p resolves to 0.001 all the same)
    jobs: int = 2
    keep_data: bool = True  # False: delete the dataset, caches and shards once the report is written
    prune: bool = True  # delete what no later step reads once its last reader is done (40-GB budget)
    ingest_options: tuple[str, ...] = field(default=(
        "--features", "bandpower", "--epoch", "4", "--lag", "7", "--stride", "0.71"))

    def __post_init__(self):
        if not self.sizes or min(self.sizes) < 2 or max(self.sizes) > self.train_stories:
            raise ValueError(f"--sizes must be 2..{self.train_stories} training stories, got {self.sizes}")
        if self.test_stories < 1 or self.train_stories + self.test_stories > 60:
            raise ValueError("--train-stories + --test-stories must be at most ds004078's 60 stories")
        if not set(self.subjects) <= set(SUBJECTS):
            raise ValueError(f"--subjects must be among {SUBJECTS[0]}..{SUBJECTS[-1]}, got {self.subjects}")
        if not set(self.held_out) < set(self.subjects) or len(set(self.subjects) - set(self.held_out)) < 2:
            raise ValueError(f"--held-out {','.join(self.held_out)} must be among --subjects and leave at "
                             "least 2 of them for training")

    @property
    def train_subjects(self) -> tuple[str, ...]:
        return tuple(s for s in self.subjects if s not in self.held_out)

    @property
    def test_runs(self) -> str:
        return f"{self.train_stories + 1}-{self.train_stories + self.test_stories}"

    def hours(self, size: int) -> float:
        return len(self.train_subjects) * size * self.duration / 3600.0


class Steps:
    """``OUT/steps.json``: each finished step's wall time, output and command; the disk peak so far."""

    def __init__(self, out: Path):
        self.path = out / "steps.json"
        fresh = {"steps": {}, "peak_bytes": 0}
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else fresh
        self.running = "between steps"  # the step under way, named beside the disk peak

    def done(self, name: str) -> dict | None:
        return self.data["steps"].get(name)

    def record(self, name: str, seconds: float, command: list[str], stdout: str = "") -> None:
        self.data["steps"][name] = {"seconds": round(seconds, 1), "command": command, "stdout": stdout,
                                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


class DiskPeak(threading.Thread):
    """Samples the study folder's size (``du``: hard links once) every ``every`` s; keeps the maximum."""

    def __init__(self, folder: Path, steps: Steps, every: float = 20.0):
        super().__init__(daemon=True)
        self.folder, self.steps, self.every = folder, steps, every
        self.stop = threading.Event()

    def sample(self) -> None:
        done = subprocess.run(["du", "-sb", str(self.folder)], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout:
            size = int(done.stdout.split()[0])
            if size > self.steps.data.get("peak_bytes", 0):
                self.steps.data["peak_bytes"] = size
                self.steps.data["peak_step"] = self.steps.running

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()


def tool(verb: str) -> list[str]:
    """``meg2fmri VERB`` as installed beside this interpreter."""
    return [str(Path(sys.executable).parent / "meg2fmri"), verb]


class Study:
    """The study as steps (synth, ingest, train, evaluate per size), each run once, resumable."""
    def __init__(self, config: StudyConfig, log=print):
        self.c = config
        self.out = config.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.steps = Steps(self.out)
        self.log = log

    # -- running steps --------------------------------------------------------------------------------
    def step(self, name: str, command: list[str], before=None) -> str:
        """Run ``command`` unless step ``name`` finished before; its stdout (e.g. a slice number)."""
        done = self.steps.done(name)
        if done is not None:
            self.log(f"study: {name}: done before ({done['seconds']:.0f} s), skipped")
            return done["stdout"]
        if before is not None:
            before()
        self.log(f"study: {name}: {' '.join([Path(command[0]).name, *command[1:]])}")
        start = time.perf_counter()
        self.steps.running = name
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        self.steps.running = f"after {name}"
        if proc.returncode != 0:
            raise RuntimeError(f"study: step {name} failed (exit {proc.returncode}): {' '.join(command)}")
        seconds = time.perf_counter() - start
        self.steps.record(name, seconds, command, proc.stdout.strip()[-2000:])
        self.log(f"study: {name}: {seconds:.0f} s")
        return proc.stdout.strip()

    def ingest_dir(self, target: str, size: int) -> Path:
        return self.out / target / f"stories-{size:02d}"

    # -- the plan -------------------------------------------------------------------------------------
    def run(self) -> dict:
        c, out = self.c, self.out
        monitor = DiskPeak(out, self.steps)
        monitor.start()
        # each start of the study (a resumed one is a second entry): wall time across kills
        invocation = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": 0.0}
        self.steps.data.setdefault("invocations", []).append(invocation)
        began = time.perf_counter()
        try:
            self.dataset()
            largest = max(c.sizes)
            for target in ("slice", "volume") if c.volume else ("slice",):
                self.ingest(target, largest)
                for size in sorted(c.sizes, reverse=True):
                    if size != largest:
                        self.ingest(target, size)
                    self.train(target, size)
                    self.evaluate(target, size)
                    monitor.sample()
                    if c.prune:
                        self.prune_shards(target, size)
                    self.report()
        finally:
            monitor.stop.set()
            monitor.sample()
            invocation["seconds"] = round(time.perf_counter() - began, 1)
            self.steps.save()
        result = self.report()
        if not c.keep_data:
            for bulky in ("bids", "slice", "volume"):
                for path in (out / bulky).glob("**/cache.zarr") if bulky != "bids" else [out / "bids"]:
                    shutil.rmtree(path, ignore_errors=True)
        return result

    def dataset(self) -> None:
        c = self.c
        train = f"{','.join(c.train_subjects)}:1-{c.train_stories}"
        test = f"{','.join(c.held_out)}:{c.test_runs}"
        self.step("synth", tool("synth") + [
            "--out", str(self.out / "bids"), "--overwrite", "--seed", str(c.seed), "--block", train,
            "--block", test, "--duration", f"{c.duration:g}", "--shape", c.shape, "--meg-sfreq",
            f"{c.meg_sfreq:g}", "--jobs", str(c.jobs), "--quiet"])
        self.dataset_size()
        self.slice = int(self.step("slice", tool("oracle") + [
            "--peak-slice", "--bids-root", str(self.out / "bids"), "--exclude", ",".join(c.held_out)]))

    def ingest(self, target: str, size: int) -> None:
        c, largest = self.c, max(self.c.sizes)
        folder = self.ingest_dir(target, size) / "ingest"
        command = tool("ingest") + [
            "--out", str(folder), "--held-out", ",".join(c.held_out), "--held-out-stories", c.test_runs,
            *c.ingest_options, "--quiet"]
        command += ["--slice", str(self.slice)] if target == "slice" else ["--target", "volume"]
        source = self.ingest_dir("slice", largest) / "ingest" / "cache.zarr"

        def link_cache() -> None:  # re-pair from the first ingest's cache: hard links, no second decode
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "cache.zarr").exists():
                subprocess.run(["cp", "-al", str(source), str(folder / "cache.zarr")], check=True)

        if target == "slice" and size == largest:
            self.step(f"ingest-{target}-{size}", command + ["--bids-root", str(self.out / "bids")])
            if c.prune:  # every later ingest re-pairs from this one's cache
                self.prune_raw_meg()
        else:
            self.step(f"ingest-{target}-{size}", command + [
                "--from-cache", "--runs", f"1-{size},{c.test_runs}"], before=link_cache)
        if target == "volume" or size == largest:  # a volume's voxels are its own training mask's
            self.step(self.oracle(target, size).stem, tool("oracle") + [
                "--bids-root", str(self.out / "bids"), "--ingest", str(folder),
                "--out", str(self.oracle(target, size))])

    # -- pruning: what no later step reads ---------------------------------------------------------------
    def prune_raw_meg(self) -> None:
        """Delete the FIF files once the one decode from raw has finished (13 of the study's 17 GB):
        every later step reads the Zarr cache, the BOLD sidecars, the truth and the stimuli, which stay."""
        fifs = sorted((self.out / "bids").glob("sub-*/meg/*_meg.fif"))
        freed = sum(f.stat().st_size for f in fifs)
        for fif in fifs:
            fif.unlink()
        if fifs:
            self.steps.data.setdefault("pruned", []).append(
                {"what": "bids/sub-*/meg/*_meg.fif", "files": len(fifs), "bytes": freed})
            self.steps.save()
            self.log(f"study: deleted the raw MEG ({len(fifs)} FIF files, {freed / 1e9:.1f} GB): "
                     "every later step reads ingest's cache (--keep-data keeps them)")

    def prune_shards(self, target: str, size: int) -> None:
        """Delete a size's shards once it is trained and evaluated; its ``index.json`` (the report's
        sample counts), its models and its evaluation stay."""
        shards = self.ingest_dir(target, size) / "ingest" / "shards"
        if shards.is_dir():
            freed = sum(f.stat().st_size for f in shards.rglob("*") if f.is_file())
            shutil.rmtree(shards)
            self.steps.data.setdefault("pruned", []).append(
                {"what": str(shards.relative_to(self.out)), "bytes": freed})
            self.steps.save()

    def oracle(self, target: str, size: int) -> Path:
        """The test set's true-signal file: one for the slice curve (every size pairs the same slice
        pixels), one per size for whole-brain targets (each size's mask is drawn from its own training
        runs, so each has its own voxel vector)."""
        return self.out / ("oracle-slice.npz" if target == "slice" else f"oracle-volume-{size}.npz")

    def variants(self, target: str, size: int) -> tuple[str, ...]:
        if target == "slice":
            return ("cgan", "shuffled")
        return ("cgan",) if size == max(self.c.sizes) else ()

    def train(self, target: str, size: int) -> None:
        c = self.c
        for variant in self.variants(target, size):
            run = self.ingest_dir(target, size) / "runs" / variant
            epochs = c.epochs if target == "slice" else c.volume_epochs
            command = tool("train") + [
                "--shards", str(self.ingest_dir(target, size) / "ingest"), "--out", str(run),
                "--variant", variant, "--epochs", str(epochs), "--lr-step-epochs", str(c.lr_step),
                "--seed", str(c.seed), "--quiet"]
            if target == "slice":
                command += ["--smooth", f"{c.smooth:g}"]
            if (run / "checkpoint.pt").is_file():  # killed while training: go on from its checkpoint
                command.append("--resume")
            self.step(f"train-{target}-{size}-{variant}", command)

    def evaluate(self, target: str, size: int) -> None:
        c, largest = self.c, max(self.c.sizes)
        folder = self.ingest_dir(target, size)
        command = tool("evaluate") + [
            "--shards", str(folder / "ingest"), "--out", str(folder / "eval"), "--bids-root",
            str(self.out / "bids"), "--oracle", str(self.oracle(target, size)),
            "--bootstrap", str(c.bootstrap),
            "--null-draws", str(c.null_draws if target == "slice" else c.volume_null_draws)]
        if self.variants(target, size):
            command += ["--runs", str(folder / "runs")]
        if size != largest:  # one ROI for the whole curve: the largest training set's
            roi = "roi.npz" if target == "slice" else "roi.nii.gz"  # voxels matched on the grid
            command += ["--roi", str(self.ingest_dir(target, largest) / "eval" / roi)]
        self.step(f"evaluate-{target}-{size}", command)
        if target == "volume":  # 0.4 GB per row of float16 whole-brain predictions; the maps stay
            shutil.rmtree(folder / "eval" / "predictions", ignore_errors=True)

    # -- the results ----------------------------------------------------------------------------------
    def curve(self) -> dict:
        """{target: {size: test-set summary}} for every evaluation written so far."""
        curve: dict = {}
        for target in ("slice", "volume"):
            for size in sorted(self.c.sizes):
                path = self.ingest_dir(target, size) / "eval" / "results.json"
                if not path.is_file():
                    continue
                result = json.loads(path.read_text())
                test = result["sets"]["test"]
                rows = {row["name"]: {k: row.get(k) for k in (
                    "roi_r", "roi_r_ci", "roi_r_p", "roi_r_of_ceiling", "voxel_r", "voxel_r_ci", "voxel_r_p",
                    "degenerate")} for row in test["rows"]}
                paired = {name: {"roi_r": d.get("roi_r"), "voxel_r": d.get("voxel_r")}
                          for name, d in test["paired_differences"].items()}
                paired |= {f"{name}-mean_image": {"roi_r": d.get("roi_r"), "voxel_r": d.get("voxel_r")}
                           for name, d in test["paired_differences_minus_mean_image"].items()}
                index = json.loads((self.ingest_dir(target, size) / "ingest" / "index.json").read_text())
                curve.setdefault(target, {})[size] = {
                    "hours": self.c.hours(size), "training_stories": size, "runs": test["runs"],
                    "train_samples": index["counts"]["train"],
                    "samples": test["samples"], "rows": rows, "paired": paired,
                    "roi": result["settings"]["roi"], "ridge": result["settings"]["choices"]["ridge"]}
        return curve

    def dataset_size(self) -> None:
        """The dataset's size as synthesised, once (before any pruning)."""
        bids = self.out / "bids"
        if "bids_bytes" not in self.steps.data and bids.is_dir():
            done = subprocess.run(["du", "-sb", str(bids)], capture_output=True, text=True)
            if done.returncode == 0 and done.stdout:
                self.steps.data["bids_bytes"] = int(done.stdout.split()[0])
                self.steps.save()

    def report(self) -> dict:
        from .study_report import figure, markdown

        result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.c).items()},
                  "bids_bytes": self.steps.data.get("bids_bytes"),
                  "hours": {size: self.c.hours(size) for size in self.c.sizes},
                  "steps": self.steps.data["steps"], "peak_bytes": self.steps.data.get("peak_bytes", 0),
                  "peak_step": self.steps.data.get("peak_step"),
                  "invocations": self.steps.data.get("invocations", []),
                  "pruned": self.steps.data.get("pruned", []),
                  "curve": self.curve()}
        (self.out / "study.json").write_text(json.dumps(result, indent=1, default=float))
        (self.out / "study.md").write_text(markdown(result))
        if result["curve"]:
            figure(result, self.out / "learning_curve.png")
        return result


def hours_to(fraction: float, half: float) -> float:
    """Hours at which ``a h / (h + half)`` reaches ``fraction`` of its asymptote ``a``."""
    return fraction / (1 - fraction) * half


def saturating_fit(hours: list[float], r: list[float]) -> dict | None:
    """``r(h) = a h / (h + b)`` fitted by least squares (needs 3 sizes and a rising curve)."""
    from scipy.optimize import curve_fit

    h, y = np.asarray(hours, float), np.asarray(r, float)
    if len(h) < 3 or not np.all(np.isfinite(y)) or y[-1] <= 0:
        return None
    try:
        (a, b), _ = curve_fit(lambda x, a, b: a * x / (x + b), h, y, p0=(max(y) * 1.5, h.mean()),
                              bounds=([0, 1e-3], [1.0, 1e4]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return {"asymptote": float(a), "half_hours": float(b), "hours_to_90": hours_to(0.9, b)}
