"""The Table-2 protocol's report: report.md (command and wall-clock at the top), the trade-off plot
with error bars, and the best Ours model's accuracy matrix (Figure 4) and exit histogram."""

from __future__ import annotations

from pathlib import Path

from .protocol import METHOD_LABELS, NAMED_BUDGETS

STYLES = {"ours": ("tab:blue", "o"), "ours_paper": ("tab:purple", "v"), "ours_s": ("tab:orange", "^"),
          "threshold_static": ("tab:gray", "s"), "threshold_joint": ("tab:green", "D"), "entropy_static": ("tab:brown", "x")}


def _ms(v, scale=100.0, digits=2) -> str:
    if v is None:
        return "never"
    return f"{scale * v['mean']:.{digits}f} ± {scale * v['std']:.{digits}f}" + ("" if v["n"] == v["of"] else f" ({v['n']}/{v['of']} seeds)")


def markdown(r: dict) -> str:
    lines = [f"# Table 2: {' → '.join(r['classifiers'])}", "", "Produced by:", "", "```", r["command"], "```", "",
             f"Wall-clock: **{r['wall_clock_s'] / 60:.1f} min** on this machine, seeds {r['seeds']}.", "",
             f"Accuracy: {r['accuracy']} on `{r['test_split']}`; every operating point's threshold is chosen on "
             f"`{r['held_out_split']}` to meet its cost budget (hard exits), then measured on `{r['test_split']}`. "
             f"Cost: % of the largest classifier's MACs. Epochs: {r['epochs']['warmup']} shared warm-up + "
             f"{r['epochs']['joint']} (the static classifiers are trained alone for the same total).", "",
             "| classifier alone | cost % | accuracy % (mean ± std) |", "|---|---:|---:|"]
    for t, name in enumerate(r["classifiers"]):
        lines.append(f"| {name} | {r['static_cost_pct'][t]:.2f} | {_ms(r['static_accuracy'][str(t)])} |")
    head = " | ".join(f"acc. @ {b:g} %" for b in NAMED_BUDGETS)
    lines += ["", f"| method | cost % to match the largest static ({_ms(r['largest_static_accuracy'])} %) | {head} |",
              "|---|---:|" + "---:|" * len(NAMED_BUDGETS)]
    for m, v in r["methods"].items():
        cells = " | ".join(_ms(v["accuracy_at_budget"][f"{b:g}"]) for b in NAMED_BUDGETS)
        lines.append(f"| {v['label']} | {_ms(v['matched_cost_pct'], 1.0, 1)} | {cells} |")
    lines += ["", "Mean ± std over the seeds (sample std). \"never\": no seed's operating point reaches the largest "
              "static classifier's accuracy on the grid of budgets.", "", "![accuracy vs cost](tradeoff.png)", ""]
    return "\n".join(lines)


def figures(out: Path, r: dict, seeds: dict) -> None:
    from ..inference.plots import _save, accuracy_matrix_plot, exit_histogram, plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for m in r["methods"]:
        color, marker = STYLES.get(m, ("k", "."))
        for data in seeds.values():
            c = data["curves"].get(m)
            if c:
                ax.plot(c.cost_pct, [100 * a for a in c.accuracy], "-", color=color, alpha=0.25, lw=0.8)
        acc = r["methods"][m]["accuracy_at_budget"]
        cost = r["methods"][m]["cost_at_budget"]
        pts = [(cost[f"{b:g}"], acc[f"{b:g}"]) for b in NAMED_BUDGETS if acc[f"{b:g}"] and cost[f"{b:g}"]]
        if pts:
            ax.errorbar([c["mean"] for c, _ in pts], [100 * a["mean"] for _, a in pts],
                        xerr=[c["std"] for c, _ in pts], yerr=[100 * a["std"] for _, a in pts], fmt=marker, color=color,
                        capsize=3, label=METHOD_LABELS[m])
    largest = r["largest_static_accuracy"]
    ax.axhspan(100 * (largest["mean"] - largest["std"]), 100 * (largest["mean"] + largest["std"]), color="k", alpha=0.08)
    ax.axhline(100 * largest["mean"], color="k", lw=0.8, ls="--", label=f"{r['classifiers'][-1]} alone (±std)")
    ax.set(xlabel="test cost (% of the largest classifier's MACs)", ylabel=f"test accuracy (%, {r['accuracy']})",
           title="Accuracy vs cost: mean ± std over seeds at the named budgets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, out / "tradeoff.png")
    best = max((d for d in seeds.values() if d.get("ours_report_at_35") is not None),
               key=lambda d: d["ours_report_at_35"].accuracy, default=None)
    if best is not None:
        accuracy_matrix_plot(best["ours_report_at_35"], out / "accuracy_matrix.png")
        exit_histogram(best["ours_report_at_35"], out / "exit_histogram.png")
