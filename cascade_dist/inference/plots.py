"""Figures of a cascade's evaluation: accuracy vs cost (τ sweep), accuracy matrix, exit histogram,
and examples with what each visited classifier said (the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..method.evaluate import EvalReport  # noqa: E402


def tradeoff_plot(report: EvalReport, path: str | Path, names: list[str] | None = None) -> Path:
    """Accuracy vs cost % of the τ sweep, the operating point, and each classifier alone."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    sweep = sorted(report.sweep, key=lambda p: p["cost_pct"])
    ax.plot([p["cost_pct"] for p in sweep], [100 * p["accuracy"] for p in sweep], "o-", ms=3, label="cascade, τ sweep")
    ax.plot(report.cost_pct, 100 * report.accuracy, "r*", ms=14, label=f"cascade, τ={report.tau}")
    names = names or [f"C{t + 1}" for t in range(len(report.static_accuracy))]
    ax.plot(report.static_cost_pct, [100 * a for a in report.static_accuracy], "ks", label="classifiers alone")
    for name, x, y in zip(names, report.static_cost_pct, report.static_accuracy):
        ax.annotate(name, (x, 100 * y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set(xlabel="cost (% of the largest classifier's MACs)", ylabel=f"top-{report.topk} accuracy (%)",
           title="Accuracy vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def accuracy_matrix_plot(report: EvalReport, path: str | Path) -> Path:
    """The paper's Figure 4: accuracy of classifier i (rows) on the images exiting at stage j."""
    m = np.array([[np.nan if v is None else 100 * v for v in row] for row in report.accuracy_matrix])
    k = len(m)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.0 * k + 1.5))
    im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, "–" if np.isnan(m[i, j]) else f"{m[i, j]:.0f}", ha="center", va="center", color="w", fontsize=9)
    labels = [f"{t + 1}" for t in range(k)]
    ax.set(xticks=range(k), yticks=range(k), xticklabels=[f"{l}\n{100 * f:.0f}%" for l, f in zip(labels, report.exit_fractions)],
           yticklabels=labels, xlabel="exit stage (share of images)", ylabel="classifier", title="Accuracy matrix (%)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def exit_histogram(report: EvalReport, path: str | Path) -> Path:
    """Share of images that stop at each stage."""
    k = len(report.exit_fractions)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(range(1, k + 1), [100 * f for f in report.exit_fractions])
    ax.set(xlabel="exit stage", ylabel="images (%)", xticks=range(1, k + 1), title="Where images stop")
    return _save(fig, path)


def exit_examples_plot(
    images: np.ndarray,
    targets: np.ndarray,
    exit_stage: np.ndarray,
    stage_probs: np.ndarray,
    stop_probs: np.ndarray,
    path: str | Path,
    class_names: list[str] | None = None,
    stage_names: list[str] | None = None,
    predictions: np.ndarray | None = None,
    top: int = 5,
) -> Path:
    """The paper's Figure 3: one row per image (N, C, H, W) with its label, exit stage and the
    cascade's prediction, then the `top` class probabilities of each classifier it visited
    (stage_probs (N, K, classes)) with the π it was given there."""
    n, k = stage_probs.shape[:2]
    top = min(top, stage_probs.shape[2])
    class_names = class_names or [str(c) for c in range(stage_probs.shape[2])]
    stage_names = stage_names or [f"C{t + 1}" for t in range(k)]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.6 + 2.4 * k, 1.5 * n + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": [0.7] + [1] * k})
    for i in range(n):
        img = images[i].transpose(1, 2, 0)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
        ax = axes[i, 0]
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray")
        ax.set_axis_off()
        said = "" if predictions is None else f" → {class_names[int(predictions[i])]}"
        ax.set_title(f"{class_names[int(targets[i])]}\nexit {int(exit_stage[i]) + 1}{said}", fontsize=8)
        for t in range(k):
            ax = axes[i, t + 1]
            if t > exit_stage[i]:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", fontsize=8, color="0.5")
                ax.set_axis_off()
                continue
            order = np.argsort(-stage_probs[i, t])[:top][::-1]
            colors = ["tab:green" if c == targets[i] else "tab:gray" for c in order]
            ax.barh(range(top), stage_probs[i, t, order], color=colors)
            ax.set(xlim=(0, 1), yticks=range(top))
            ax.set_yticklabels([class_names[c][:12] for c in order], fontsize=6)
            ax.tick_params(axis="x", labelsize=6)
            pi = "" if t == k - 1 else f", π={stop_probs[i, t]:.2f}"
            ax.set_title(f"{stage_names[t]}{pi}", fontsize=7)
    fig.suptitle("Examples: class probabilities of each classifier visited (green: true class)", fontsize=9)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
