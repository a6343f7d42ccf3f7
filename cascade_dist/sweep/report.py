"""The sweep's report: `report.md` (the command and the wall-clock at the top), `report.json`,
`trials.csv` and `tradeoff.png` in one folder, from typed trial records."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .pareto import Point, match_summary, pareto_front
from .trials import VARIANT_NAMES, Trial


def _sentence(m: dict[str, Any], static_best: Point) -> str:
    target = f"{100 * static_best.accuracy:.2f} % ({static_best.label} alone, {static_best.cost_pct:.1f} % cost)"
    if m["best_accuracy"] is None:
        return f"- **{m['method']}**: no points."
    if m["matches"]:
        text = (f"- **{m['method']}** matches the best static accuracy {target} at **{m['cost_pct_at_match']:.1f} %** "
                f"cost ({100 * m['accuracy_at_match']:.2f} %, {m['point_at_match']}).")
    else:
        text = (f"- **{m['method']}** does **not** reach the best static accuracy {target}: its best is "
                f"{100 * m['best_accuracy']:.2f} % at {m['cost_pct_at_best']:.1f} % cost")
        text += (f"; within 0.5 pp at {m['cost_pct_within_0.5pp']:.1f} %." if m["cost_pct_within_0.5pp"] is not None
                 else "; not even within 0.5 pp.")
    return text


def write_report(out: str | Path, summary: dict[str, Any]) -> dict[str, Path]:
    """Write report.md, report.json, trials.csv and tradeoff.png from a sweep summary.

    `summary` keys: command, wall_clock_s, classifiers, static (points), threshold_cascade (points),
    trials (dicts with run_name, variant, alpha, policy_lr, accuracy, cost_pct, exit_fractions),
    and optionally warmup, held_out_split, budget, notes.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials: list[Trial] = summary["trials"]
    static = [Point(s["cost_pct"], s["accuracy"], s["name"]) for s in summary["static"]]
    seen: set[float] = set()  # several budgets can pick the same θ: one point each
    threshold = [Point(t["cost_pct"], t["accuracy"], f"θ={t['threshold']:.3f}") for t in summary["threshold_cascade"]
                 if not (t["threshold"] in seen or seen.add(t["threshold"]))]
    front = pareto_front([t.point() for t in trials])
    front_names = {p.label for p in front}
    for t in trials:
        t.on_pareto_front = t.run_name in front_names
    static_best = max(static, key=lambda p: (p.accuracy, -p.cost_pct))
    by_variant = {v: [t.point() for t in trials if t.variant == v] for v in VARIANT_NAMES}
    matches = [match_summary(VARIANT_NAMES[v], pts, static_best) for v, pts in by_variant.items() if pts]
    matches.append(match_summary("Confidence-threshold cascade", threshold, static_best))
    summary = {**summary, "pareto_front": [asdict(p) for p in front], "matches": matches,
               "best_static": asdict(static_best), "trials": [t.to_dict() for t in trials]}

    paths = {"json": out / "report.json", "csv": out / "trials.csv", "md": out / "report.md", "plot": out / "tradeoff.png"}
    paths["json"].write_text(json.dumps(summary, indent=1, default=lambda o: o.to_dict() if isinstance(o, Trial) else str(o)))
    _write_csv(paths["csv"], trials)
    tradeoff_figure(paths["plot"], trials, front, static, threshold, summary.get("topk", 1))
    paths["md"].write_text(_markdown(summary, trials, static, threshold, matches, static_best))
    return paths


def _write_csv(path: Path, trials: list[Trial]) -> None:
    k = max((len(t.exit_fractions) for t in trials), default=0)
    cols = ["run_name", "variant", "alpha", "dual_budget", "alpha_end", "policy_lr", "accuracy", "cost_pct", "on_pareto_front",
            *[f"exit_frac_stage{i}" for i in range(k)], "joint_epochs", "stopped_early", "mlflow_run_id"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for t in sorted(trials, key=_order):
            fr = list(t.exit_fractions) + [""] * k
            w.writerow([t.run_name, t.variant, t.alpha, _blank(t.dual_budget), t.alpha if t.alpha_end is None else t.alpha_end,
                        t.policy_lr, f"{t.accuracy:.6f}", f"{t.cost_pct:.4f}", t.on_pareto_front, *fr[:k],
                        _blank(t.joint_epochs), t.stopped_early, t.mlflow_run_id or ""])


def _order(t: Trial):
    return (t.variant, t.alpha, t.policy_lr)


def _blank(value) -> str:
    return "" if value is None else str(value)


def _markdown(summary, trials, static, threshold, matches, static_best) -> str:
    lines = ["# α sweep: accuracy vs cost", "",
             "Produced by:", "", "```", summary["command"], "```", "",
             f"Wall-clock: **{summary['wall_clock_s'] / 60:.1f} min** ({summary['wall_clock_s']:.0f} s)"]
    if summary.get("device"):
        lines[-1] += f" on {summary['device']}"
    lines[-1] += "."
    w = summary.get("warmup")
    if w and w.get("reused"):
        lines.append(f"Shared warm-up: reused from {w['checkpoint']} (run.warm_start), not trained by this sweep.")
    elif w:
        lines.append(f"Shared warm-up: {w['seconds']:.0f} s, run once for {w['trials']} trials "
                     f"(time saved ≈ {w['saved_s']:.0f} s, {w['saved_s'] / 60:.1f} min)." if w.get("shared")
                     else f"Warm-up per trial (shared warm-up off); the baselines' warm-up run took {w['seconds']:.0f} s.")
    lines += ["", f"Cascade: {' → '.join(summary['classifiers'])}. Cost = % of the largest classifier's MACs; "
              f"accuracy = top-{summary.get('topk', 1)} on the test split ({summary.get('num_test', '?')} images). "
              f"Threshold-cascade thresholds tuned on: {summary.get('held_out_split', '?')}.", "",
              "## Table 2 comparison", ""]
    lines += [_sentence(m, static_best) for m in matches]
    lines += ["", "## All points", "", "| method | setting | accuracy % | cost % | Pareto |", "|---|---|---:|---:|:-:|"]
    for p in static:
        lines.append(f"| static (trained alone) | {p.label} | {100 * p.accuracy:.2f} | {p.cost_pct:.2f} | |")
    for t in threshold:
        lines.append(f"| confidence-threshold cascade | {t.label} | {100 * t.accuracy:.2f} | {t.cost_pct:.2f} | |")
    for t in sorted(trials, key=_order):
        lines.append(f"| {VARIANT_NAMES.get(t.variant, t.variant)} | {t.setting()} | "
                     f"{100 * t.accuracy:.2f} | {t.cost_pct:.2f} | {'✓' if t.on_pareto_front else ''} |")
    b = summary.get("budget")
    if b:
        lines += ["", "## Budget mode", ""]
        if b.get("chosen"):
            c = b["chosen"]
            lines.append(f"Budget {b['budget_pct']:g} %: {c.setting()} ({c.run_name}): "
                         f"{100 * c.accuracy:.2f} % at {c.cost_pct:.2f} %. {b.get('method', '')}")
        else:
            lines.append(f"Budget {b['budget_pct']:g} %: no trained α fits; raise α above {b.get('max_alpha', '?')}. "
                         f"{b.get('method', '')}")
    for note in summary.get("notes", []):
        lines += ["", note]
    lines += ["", "![accuracy vs cost](tradeoff.png)", ""]
    return "\n".join(lines)


def tradeoff_figure(path: Path, trials: list[Trial], front: list[Point], static: list[Point],
                    threshold: list[Point], topk: int = 1) -> Path:
    """All trials, their Pareto front, the static classifiers and the confidence-threshold curve."""
    from ..inference.plots import _save, plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    th = sorted(threshold, key=lambda p: p.cost_pct)
    if th:
        ax.plot([p.cost_pct for p in th], [100 * p.accuracy for p in th], "--", color="tab:gray", marker=".",
                label="confidence-threshold cascade")
    markers = {"ours": ("o", "tab:blue"), "ours_s": ("^", "tab:orange")}
    for variant, (m, c) in markers.items():
        pts = [t for t in trials if t.variant == variant]
        if pts:
            ax.plot([t.cost_pct for t in pts], [100 * t.accuracy for t in pts], m, color=c, ls="none",
                    label=VARIANT_NAMES[variant])
            for t in pts:
                label = f"B={t.dual_budget:g}" if t.dual_budget is not None else f"α={t.alpha:.2g}"
                ax.annotate(label, (t.cost_pct, 100 * t.accuracy), textcoords="offset points",
                            xytext=(4, 3), fontsize=7, color=c)
    if front:
        ax.step([p.cost_pct for p in front], [100 * p.accuracy for p in front], where="post", color="tab:red",
                lw=1.2, label="Pareto front (trials)")
    ax.plot([p.cost_pct for p in static], [100 * p.accuracy for p in static], "ks", label="classifiers alone")
    for p in static:
        ax.annotate(p.label, (p.cost_pct, 100 * p.accuracy), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set(xlabel="cost (% of the largest classifier's MACs)", ylabel=f"top-{topk} accuracy (%)",
           title="α sweep: accuracy vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
