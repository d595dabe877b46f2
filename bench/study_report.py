"""``bench study``'s results page (``study.md``) and learning-curve figure, from ``study.json``."""

from __future__ import annotations

from pathlib import Path

MEG_MODELS = ("cgan", "ridge")  # the models that read the MEG (the cGAN named in advance as the headline)
SHOWN = ("oracle", "cgan", "ridge", "stimulus", "shuffled", "mean_image")
COMPARED = ("mean_image", "shuffled", "stimulus", "ridge")


def interval(ci) -> str:
    return "n/a" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def excludes_zero(ci) -> str:
    if not ci:
        return "n/a"
    return "above 0" if ci[0] > 0 else "below 0" if ci[1] < 0 else "includes 0"


def value(row: dict | None, key: str) -> str:
    if row is None or row.get(key) is None:
        return "-"
    text = f"{row[key]:.3f}"
    if row.get(f"{key}_ci"):
        text += f" {interval(row[f'{key}_ci'])}"
    return text


def curve_table(sizes: dict, key: str) -> list[str]:
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


def markdown(result: dict) -> str:
    from .study import saturating_fit

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
            points = [(s["hours"], s["rows"][name]["roi_r"]) for _, s in sorted(sizes.items(), key=lambda kv:
                      int(kv[0])) if name in s["rows"] and s["rows"][name].get("roi_r") is not None]
            fit = saturating_fit([h for h, _ in points], [r for _, r in points])
            if fit:
                fits.append(f"- {name}: r(h) = {fit['asymptote']:.3f} h / (h + {fit['half_hours']:.2f}); 90% "
                            f"of its asymptote at {fit['hours_to_90']:.1f} h of training")
        if fits:
            lines += ["Saturating fit of ROI r against hours (least squares over the sizes):", "", *fits, ""]
    steps = result["steps"]
    total = sum(s["seconds"] for s in steps.values())
    runs = [r for r in result.get("invocations", []) if r.get("seconds")]
    wall = (f"; wall time of the {len(runs)} start(s) that ended here: "
            f"{sum(r['seconds'] for r in runs) / 60:.1f} min" if runs else "")
    lines += ["## Cost", "", f"Wall time of the finished steps: {total / 60:.1f} min{wall}; peak disk of the "
              f"study folder: {result['peak_bytes'] / 1e9:.1f} GB (sampled every 20 s).", "",
              "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {s['seconds']:.0f} |" for name, s in steps.items()]
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
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
