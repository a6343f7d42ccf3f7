"""Baselines of the paper's Table 2, from the warm-up classifiers of a sweep.

* Static: each classifier C_t alone, at its own cost (all K are trained together in the warm-up,
  but each on its own cross-entropy: the same as training each alone).
* Confidence-threshold cascade: image exits at the first stage whose max softmax ≥ θ (the last
  stage always answers) and takes that classifier's prediction. One θ is shared by all stages;
  for each cost budget, θ is the one with the best accuracy on a held-out split among those whose
  held-out cost is ≤ the budget; test accuracy and cost are then measured at that θ.

Usable alone: `python -m cascade_dist.sweep.baselines CHECKPOINT_DIR --config FILE [key=value ...]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data import storage
from ..method.evaluate import run_over

log = logging.getLogger(__name__)


@dataclass
class StageOutputs:
    """Softmaxes of every classifier on one split: probs (N, K, C), labels (N,)."""

    probs: np.ndarray
    labels: np.ndarray

    @property
    def max_prob(self) -> np.ndarray:
        return self.probs.max(-1)

    @property
    def correct(self) -> np.ndarray:
        return self.probs.argmax(-1) == self.labels[:, None]


def collect_outputs(model, loader) -> StageOutputs:
    """Every classifier's softmax on every image of `loader`."""
    probs, labels = [], []

    def keep(out, targets, images):
        probs.append(out.log_probs.exp().float().cpu())
        labels.append(targets.cpu())

    run_over(model, loader, keep)
    return StageOutputs(torch.cat(probs).numpy(), torch.cat(labels).numpy())


def static_points(test: StageOutputs, cost_pct: Sequence[float], names: Sequence[str]) -> list[dict]:
    acc = test.correct.mean(0)
    return [{"name": n, "accuracy": float(a), "cost_pct": float(c)} for n, a, c in zip(names, acc, cost_pct)]


def threshold_operating_points(max_prob: np.ndarray, correct: np.ndarray, cum_cost_pct: np.ndarray,
                               thetas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and mean cost % of the max-softmax cascade for each θ: arrays of shape (len(thetas),)."""
    hit = max_prob[None, :, :] >= thetas[:, None, None]  # (T, N, K)
    hit[:, :, -1] = True
    exits = hit.argmax(-1)  # first stage over the threshold
    acc = np.take_along_axis(correct[None].repeat(len(thetas), 0), exits[..., None], -1)[..., 0].mean(1)
    return acc, cum_cost_pct[exits].mean(1)


def candidate_thresholds(max_prob: np.ndarray, n: int = 200) -> np.ndarray:
    """θ grid: quantiles of the held-out confidences of the non-last stages, plus 0 and > 1 (extremes)."""
    q = np.quantile(max_prob[:, :-1].ravel(), np.linspace(0, 1, n)) if max_prob.shape[1] > 1 else np.array([])
    return np.unique(np.concatenate([[0.0, 1.0 + 1e-6], q]))


def tune_thresholds(held_out: StageOutputs, test: StageOutputs, cum_cost_pct: Sequence[float],
                    budgets: Sequence[float]) -> list[dict]:
    """Per budget: θ with the best held-out accuracy at held-out cost ≤ budget; its test accuracy and cost.

    Budgets that no θ can meet (below the first stage's cost) are skipped.
    """
    cum = np.asarray(cum_cost_pct, dtype=np.float64)
    thetas = candidate_thresholds(held_out.max_prob)
    val_acc, val_cost = threshold_operating_points(held_out.max_prob, held_out.correct, cum, thetas)
    test_acc, test_cost = threshold_operating_points(test.max_prob, test.correct, cum, thetas)
    out = []
    for budget in budgets:
        ok = np.flatnonzero(val_cost <= budget + 1e-9)
        if len(ok) == 0:
            continue
        # best held-out accuracy; on a tie, the cheaper θ
        i = ok[np.lexsort((val_cost[ok], -val_acc[ok]))[0]]
        out.append({"budget_pct": float(budget), "threshold": float(thetas[i]), "val_accuracy": float(val_acc[i]),
                    "val_cost_pct": float(val_cost[i]), "accuracy": float(test_acc[i]), "cost_pct": float(test_cost[i])})
    return out


def default_budgets(cum_cost_pct: Sequence[float], n: int = 20) -> list[float]:
    return [float(b) for b in np.linspace(cum_cost_pct[0], cum_cost_pct[-1], n)]


def threshold_cost_pct(macs) -> np.ndarray:
    """Cumulative cost % of exiting at stage k for the threshold cascade: classifier MACs only (no policy)."""
    return 100 * np.cumsum(np.asarray(macs.classifier, dtype=np.float64)) / macs.reference


def held_out_problem(cfg, split: str) -> str | None:
    """Why `split` cannot hold out the thresholds' tuning (one line naming the option), or None."""
    if storage.is_file(storage.join(cfg.data.shards, split, "manifest.json")):
        return None
    hint = (" (build the shards with --val-split, or pass --held-out-split train to tune on the training "
            "split: an explicit, optimistic choice)") if split == "val" else ""
    return f"--held-out-split: no split {split!r} under {cfg.data.shards}{hint}"


def run_baselines(cfg, checkpoint_dir: str | Path, budgets: Sequence[float] | None = None,
                  held_out_split: str = "val") -> dict:
    """Static points and the threshold cascade of the warm-up classifiers in `checkpoint_dir`, the
    thresholds tuned on `held_out_split`. Tuning on the training split is an explicit choice, with a
    warning: the classifiers are over-confident there, so its thresholds are optimistic."""
    from ..data import make_loader
    from ..inference.weights import load_cascade

    if (problem := held_out_problem(cfg, held_out_split)) is not None:
        raise FileNotFoundError(problem)
    if held_out_split == "train":
        log.warning("threshold baselines tuned on the training split (--held-out-split train): optimistic thresholds")
    model = load_cascade(checkpoint_dir).model
    shards = cfg.data.shards
    held_split = held_out_split
    kw = dict(backend=cfg.data.backend, train=False, num_workers=cfg.data.loader_workers, seed=cfg.run.seed)
    held = collect_outputs(model, make_loader(shards, held_split, cfg.data.eval_batch_size, **kw))
    test = collect_outputs(model, make_loader(shards, cfg.data.eval_split, cfg.data.eval_batch_size, **kw))
    cum = threshold_cost_pct(model.macs)
    static_cost = 100 * np.asarray(model.macs.classifier, dtype=np.float64) / model.macs.reference
    return {
        "held_out_split": held_split if held_split != "train" else "train (chosen with --held-out-split train)",
        "num_held_out": int(len(held.labels)),
        "num_test": int(len(test.labels)),
        "static": static_points(test, static_cost, cfg.model.classifiers),
        "threshold_cascade": tune_thresholds(held, test, cum, budgets or default_budgets(cum)),
    }


def main(argv=None) -> int:
    from ..runtime.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m cascade_dist.sweep.baselines", description=__doc__.split("\n\n")[1])
    parser.add_argument("checkpoint", help="a run's checkpoint directory (holding checkpoint/)")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--held-out-split", default="val", help="split the thresholds are tuned on ('train': optimistic)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        return err.print_lines("cascade_dist.sweep.baselines")
    if (problem := held_out_problem(cfg, args.held_out_split)) is not None:
        print(f"cascade_dist.sweep.baselines: error: {problem}", file=sys.stderr)
        return 2
    print(json.dumps(run_baselines(cfg, args.checkpoint, held_out_split=args.held_out_split), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
