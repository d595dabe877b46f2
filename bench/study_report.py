"""``bench study``'s results page (``study.md``) and learning-curve figure, from ``study.json``."""

from __future__ import annotations

from pathlib import Path

MEG_MODELS = ("cgan", "ridge")  # the models that read the MEG (the cGAN named in advance as the headline)
SHOWN = ("oracle", "cgan", "ridge", "stimulus", "shuffled", "mean_image")
COMPARED = ("mean_image", "shuffled", "stimulus", "ridge")

# ds004078 (OpenNeuro; ../shared/reference/ds004078-runs.tsv and its file list): 12 subjects x 60 stories
DS004078 = {"runs": 720, "subjects": 12, "stories": 60, "mean_story_s": 303.5, "meg_gb": 325.0,
            "bold_gb": 317.0}
# `bench ingest` (docs/notes/benchmarks.md: a 600-s story on the bench grid, FIF + NIfTI read and written
# to cache and shards): one worker's rate and the parallel efficiency measured on 2 cores
INGEST_BENCH = {"mb_per_s_per_worker": 117.0, "efficiency": 0.92}
# `bench loader --target volume` (docs/notes/benchmarks.md): whole-brain samples/s, one process, CPU
LOADER_BENCH = {"volume_s3": 1689.0, "volume_local": 11300.0}


def interval(ci) -> str:
    """``[low, high]`` of a difference."""
    return "n/a" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def excludes_zero(ci) -> str:
    """Whether an interval is above, below or around 0."""
    if not ci:
        return "n/a"
    return "above 0" if ci[0] > 0 else "below 0" if ci[1] < 0 else "includes 0"


def value(row: dict | None, key: str) -> str:
    """A row's value with its interval."""
    if row is None or row.get(key) is None:
        return "-"
    text = f"{row[key]:.3f}"
    if row.get(f"{key}_ci"):
        text += f" {interval(row[f'{key}_ci'])}"
    return text


def curve_table(sizes: dict, key: str) -> list[str]:
    """The learning-curve table of one metric: a row per size, a column per model."""
    names = [n for n in SHOWN if any(n in s["rows"] for s in sizes.values())]
    lines = ["| training | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for size, s in sorted(sizes.items(), key=lambda kv: int(kv[0])):
        cells = []
        for n in names:
            row = s["rows"].get(n)
            cell = value(row, key)
            if row is not None and row.get(f"{key}_p") is not None and n != "mean_image":
                cell += f" p {row[f'{key}_p']:.3g}"
            cells.append(cell)
        lines.append(f"| {s['hours']:.1f} h ({size} stories) | " + " | ".join(cells) + " |")
    return lines


def headline(sizes: dict) -> list[str]:
    """At the largest size: every MEG model against every comparator and each other, in the ROI."""
    size = max(sizes, key=int)
    s = sizes[size]
    lines = [f"At the largest size ({s['hours']:.1f} h of training; `test`: {s['runs']} runs, "
             f"{s['samples']} samples), ROI r, paired run-level 95% intervals:", "",
             "| difference | ROI r | | whole-mask r | |", "|---|---|---|---|---|"]
    for a in MEG_MODELS:
        for b in dict.fromkeys((*COMPARED, *MEG_MODELS)):
            d = s["paired"].get(f"{a}-{b}")
            if a == b or d is None or (a == "ridge" and b == "cgan"):
                continue
            lines.append(f"| {a} - {b} | {interval(d['roi_r'])} | {excludes_zero(d['roi_r'])} | "
                         f"{interval(d['voxel_r'])} | {excludes_zero(d['voxel_r'])} |")
    return lines


def fit_of(sizes: dict, name: str) -> dict | None:
    """The saturating fit of ``name``'s ROI r against hours of training (None below 3 sizes)."""
    from .study import saturating_fit

    ordered = sorted(sizes.items(), key=lambda kv: int(kv[0]))
    points = [(s["hours"], s["rows"][name]["roi_r"]) for _, s in ordered
              if name in s["rows"] and s["rows"][name].get("roi_r") is not None]
    return saturating_fit([h for h, _ in points], [r for _, r in points])


def markdown(result: dict) -> str:
    """The study's page: curves, the headline's paired differences, fits, projection, cost."""
    c = result["config"]
    lines = ["# Study: how much data does MEG -> fMRI need?", "",
             f"Seed {c['seed']}; {len(c['subjects']) - len(c['held_out'])} training subjects x stories "
             f"1-{c['train_stories']}, "
             f"held-out subjects {', '.join(c['held_out'])} x stories {c['train_stories'] + 1}-"
             f"{c['train_stories'] + c['test_stories']} (`test`); {c['duration']:g}-s stories, {c['shape']} "
             f"grid, MEG at {c['meg_sfreq']:g} Hz. Training sizes: "
             + ", ".join(f"{h:.1f} h" for h in result["hours"].values())
             + ". All settings fixed before any test figure was seen; ridge and stimulus penalties by "
             "grouped CV on each size's training data; one ROI (top 5% of mask values by training ISC, "
             "on the largest training set).", ""]
    for target, sizes in result["curve"].items():
        lines += [f"## {target} targets", "", "ROI r [95% CI] and shift-null p on `test`:", "",
                  *curve_table(sizes, "roi_r"), "", "Whole-mask r:", "", *curve_table(sizes, "voxel_r"), "",
                  *headline(sizes), ""]
        fits = []
        for name in ("ridge", "stimulus", "cgan"):
            fit = fit_of(sizes, name)
            if fit:
                fits.append(f"- {name}: r(h) = {fit['asymptote']:.3f} h / (h + {fit['half_hours']:.2f}); 90% "
                            f"of its asymptote at {fit['hours_to_90']:.1f} h of training")
        if fits:
            lines += ["Saturating fit of ROI r against hours (least squares over the sizes):", "", *fits, ""]
    lines += projection(result)
    steps = result["steps"]
    total = sum(s["seconds"] for s in steps.values())
    runs = [r for r in result.get("invocations", []) if r.get("seconds")]
    wall = (f"; wall time of the {len(runs)} start(s) that ended here: "
            f"{sum(r['seconds'] for r in runs) / 60:.1f} min" if runs else "")
    during = f", during {result['peak_step']}" if result.get("peak_step") else ""
    lines += ["## Cost", "", f"Wall time of the finished steps: {total / 60:.1f} min{wall}; peak disk of the "
              f"study folder: {result['peak_bytes'] / 1e9:.1f} GB{during} (sampled every 20 s).", "",
              "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {s['seconds']:.0f} |" for name, s in steps.items()]
    return "\n".join(lines) + "\n"


def train_rate(result: dict, target: str) -> tuple[float, int] | None:
    """The cGAN's measured training rate at the largest size: (samples/s, training samples)."""
    sizes = result["curve"].get(target)
    if not sizes:
        return None
    size = max(sizes, key=int)
    step = result["steps"].get(f"train-{target}-{size}-cgan")
    samples = sizes[size].get("train_samples")
    if not step or not samples:
        return None
    epochs = result["config"]["epochs" if target == "slice" else "volume_epochs"]
    return samples * epochs / step["seconds"], samples


def projection(result: dict) -> list[str]:
    """The same design on ds004078's 720 runs: its data, ingest on a 16-core node, training time."""
    c, ds, ing = result["config"], DS004078, INGEST_BENCH
    held = len(c["held_out"])
    train_runs = (ds["subjects"] - held) * (ds["stories"] - c["test_stories"])
    train_hours = train_runs * ds["mean_story_s"] / 3600
    gb = ds["meg_gb"] + ds["bold_gb"]
    worker_h = gb * 1e3 / ing["mb_per_s_per_worker"] / 3600
    node_min = worker_h * 60 / (16 * ing["efficiency"])
    ratio = train_hours / max(result["hours"].values())
    lines = [
        "## Projected onto ds004078", "",
        f"The same design on ds004078 ({ds['runs']} runs, {ds['subjects']} subjects x {ds['stories']} "
        f"stories of {ds['mean_story_s']:.1f} s on average, {ds['meg_gb']:.0f} GB MEG + "
        f"{ds['bold_gb']:.0f} GB BOLD): "
        f"{ds['subjects'] - held} training subjects x {ds['stories'] - c['test_stories']} stories = "
        f"{train_runs} runs, {train_hours:.1f} h of training data ({ratio:.1f}x this study's largest size), "
        f"tested on {held} subjects x {c['test_stories']} stories.", "",
        f"- Ingest: {gb:.0f} GB at {ing['mb_per_s_per_worker']:.0f} MB/s per worker (`bench ingest`) is "
        f"{worker_h:.1f} h on one worker, about {node_min:.0f} min on a 16-core node at the "
        f"{ing['efficiency']:.0%} parallel efficiency measured on 2 cores, if S3 delivers "
        f"{16 * ing['mb_per_s_per_worker'] / 1e3:.1f} GB/s (not run on a cluster)."]
    for target, sizes in result["curve"].items():
        for name in ("ridge", "cgan"):
            fit = fit_of(sizes, name)
            if fit:
                at = fit["asymptote"] * train_hours / (train_hours + fit["half_hours"])
                lines.append(f"- Learning curve, {target} {name}: at {train_hours:.1f} h the fit gives ROI r "
                             f"{at:.3f} ({at / fit['asymptote']:.0%} of its asymptote "
                             f"{fit['asymptote']:.3f}); "
                             "an extrapolation beyond the sizes measured, not a measurement.")
    ingest = result["steps"].get(f"ingest-slice-{max(c['sizes'])}")
    if result.get("bids_bytes") and ingest:
        study_gb = result["bids_bytes"] / 1e9
        lines.append(f"- This study's own ingest: {study_gb:.1f} GB of BIDS (MEG at {c['meg_sfreq']:g} Hz) "
                     "in "
                     f"{ingest['seconds']:.0f} s on {c['jobs']} workers = "
                     f"{study_gb * 1e3 / ingest['seconds']:.0f} MB/s.")
    samples = train_runs * ds["mean_story_s"] / 0.71  # one sample per volume
    for target in ("slice", "volume"):
        rate = train_rate(result, target)
        if rate is not None:
            lines.append(f"- Training, {target} targets: the cGAN trained at {rate[0]:,.0f} samples/s on "
                         "this "
                         f"machine's 2 CPU cores ({rate[1]:,} training samples); ds004078's {samples:,.0f} "
                         f"would take {samples / rate[0] / 3600:.1f} h per epoch here.")
    lines += [
        "- On a GPU: not measured (no GPU was lent to this task). The loader alone delivers whole-brain "
        f"samples at {LOADER_BENCH['volume_local']:,.0f}/s from local shards and "
        f"{LOADER_BENCH['volume_s3']:,.0f}/s from S3 in one CPU process (`bench loader --target volume`), so "
        f"an epoch of ds004078 cannot be fed faster than {samples / LOADER_BENCH['volume_s3'] / 60:.0f} min "
        "from S3 per process; the GPU's own step time is unknown until `bench train` runs on one.", ""]
    return lines


def figure(result: dict, path: Path) -> None:
    """The learning-curve figure: ROI and whole-mask r against hours, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(result["curve"])
    fig, axes = plt.subplots(2, len(targets), figsize=(5.2 * len(targets), 7), squeeze=False)
    for col, target in enumerate(targets):
        sizes = sorted(result["curve"][target].values(), key=lambda s: s["hours"])
        for row, key in enumerate(("roi_r", "voxel_r")):
            ax = axes[row, col]
            for name in SHOWN:
                points = [(s["hours"], s["rows"][name]) for s in sizes if name in s["rows"]]
                if not points:
                    continue
                h = [p[0] for p in points]
                y = [p[1][key] for p in points]
                lo = [p[1][key] - p[1][f"{key}_ci"][0] for p in points]
                hi = [p[1][f"{key}_ci"][1] - p[1][key] for p in points]
                style = "--" if name in ("oracle", "mean_image", "shuffled") else "-"
                ax.errorbar(h, y, yerr=[lo, hi], fmt=style + "o", ms=4, capsize=3, lw=1, label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("hours of training data")
            ax.set_ylabel("ROI r" if key == "roi_r" else "whole-mask r")
            ax.set_title(f"{target}: {'ROI' if key == 'roi_r' else 'whole mask'} (test, 95% CI)", fontsize=9)
            ax.axhline(0, color="grey", lw=0.5)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
