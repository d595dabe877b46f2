"""The Markdown report of an evaluation (``results.md``): one table per set, then paired intervals."""

from __future__ import annotations

SET_TITLES = {
    "test": "test: held-out subjects x held-out stories (the headline)",
    "seen_story": "seen_story: held-out subjects x training stories (diagnostic; story_clock scores here)",
    "seen_subject": "seen_subject: training subjects x held-out stories (diagnostic)",
}


def interval(values: list[float], digits: str) -> str:
    """``[low, high]`` formatted with ``digits``."""
    return f"[{values[0]:{digits}}, {values[1]:{digits}}]"


def set_table(name: str, result: dict) -> list[str]:
    """One set's table of rows, with intervals and p-values."""
    lines = [
        f"## {SET_TITLES.get(name, name)}",
        "",
        f"{result['samples']} samples, {result['runs']} runs; subjects {', '.join(result['subjects'])}; "
        f"stories {', '.join(map(str, result['stories']))}. Intervals resample {result['resampling']}; "
        f"shift null >= {result['min_shift_samples']} samples; ceiling: {result['ceiling']} "
        f"(inter-subject r of the real data: {result['isc']:.3f}).",
        "",
    ]
    roi = "roi_r" in result["rows"][0]
    if roi:  # the headline first: r in the training-ISC ROI
        lines += [f"Headline: voxel r in the ROI (chosen on training data only; ceiling in the ROI: "
                        f"{result['roi_ceiling']:.3f}); whole-mask r is the secondary column.", ""]
    lines += [
        ("| method | ROI r [95% CI] | p (ROI) | ROI of ceiling " if roi else "| method ")
        + "| voxel r [95% CI] | p (shift null) | of ceiling | change R^2 | MSE [95% CI] | "
        "SSIM [95% CI] | SSIM (mask) |",
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if roi else ""),
    ]
    for r in result["rows"]:
        name = f"{r['name']} (degenerate)" if r.get("degenerate") else r["name"]
        if roi:
            name += f" | {r['roi_r']:.3f} {interval(r['roi_r_ci'], '.3f')} | {r['roi_r_p']:.4f} | " \
                    f"{r['roi_r_of_ceiling']:.2f}"
        lines.append(
            f"| {name} | {r['voxel_r']:.3f} {interval(r['voxel_r_ci'], '.3f')} | "
            f"{r['voxel_r_p']:.4f} | {r['voxel_r_of_ceiling']:.2f} | {r['change_r2']:+.4f} | "
            f"{r['mse']:.6f} {interval(r['mse_ci'], '.6f')} | {r['ssim']:.5f} "
            f"{interval(r['ssim_ci'], '.5f')} | {r['ssim_mask']:.5f} |"
        )
    degenerate = [r for r in result["rows"] if r.get("degenerate")]
    if degenerate:
        lines += [""] + [f"- **{r['name']} is degenerate**: {r['degenerate']}; its numbers are not a fitted "
                         "model's." for r in degenerate]
    if "maps" in result:
        maps = result["maps"]
        lines += ["", f"Voxel maps ({maps['voxels']} in-mask voxels; `maps/{name}/`): voxels passing the "
                  f"shift null after FDR q = {maps['fdr_q']}, and the r map's correlation with the "
                  f"ground truth ({maps['truth'] or 'not available'}):", "",
                  "| method | mean voxel r | voxels passing (FDR) | r map vs truth |", "|---|---|---|---|"]
        for method, row in maps["rows"].items():
            truth = "-" if row["truth_r"] is None else f"{row['truth_r']:+.3f}"
            passing = f"{row['fdr_fraction']:.1%} ({row['fdr_voxels']})"
            lines.append(f"| {method} | {row['mean_r']:.4f} | {passing} "
                         f"| {truth} |")
    for title, key in (
        ("each MEG model minus each baseline and other model", "paired_differences"),
        ("each method minus mean_image", "paired_differences_minus_mean_image"),
    ):
        lines += [
            "",
            f"Paired 95% intervals, {title} (run-level; positive r/SSIM, negative MSE = the first better):",
            "",
        ]
        for pair, diffs in result[key].items():
            parts = [f"{k} [{lo:+.2e}, {hi:+.2e}]" for k, (lo, hi) in diffs.items()]
            lines.append(f"- {pair}: " + ", ".join(parts))
    return lines + [""]


def markdown(result: dict) -> str:
    """An evaluation's ``results.md``: every set's table, the choices made, the missing runs."""
    lines = []
    missing = result["settings"].get("missing_runs") or []
    if missing:
        lines += [f"**Partial dataset: {len(missing)} run(s) are not in these shards** (ingest could not use "
                  "them; every figure below is without them):", ""]
        lines += [f"- {line}" for line in missing] + [""]
    for name, set_result in result["sets"].items():
        lines += set_table(name, set_result)
    s = result["settings"]
    for name, choice in s["choices"].items():
        if isinstance(choice, dict) and choice.get("not_fitted"):
            lines += [f"**{name} was not fitted** (no row): {choice['not_fitted']}.", ""]
    ssim = s["ssim"]
    lines += [
        f"SSIM: {ssim['library']} {ssim['function']}, data_range={ssim['data_range']}, Gaussian window "
        f"{ssim['kernel_size']} px, sigma {ssim['sigma']}. {s['mask']}. Headline: {s['headline']}.",
        f"Intervals: {s['intervals']}. Null: {s['null']}.",
        "",
    ]
    return "\n".join(lines)
