"""Baselines of the paper's Table 2, from the warm-up classifiers of a sweep.

* Static: each classifier C_t alone, at its own cost (all K are trained together in the warm-up,
  but each on its own cross-entropy: the same as training each alone).
* Confidence-threshold cascade: an image exits at the first stage whose max softmax ≥ θ (the last
  stage always answers) and takes that classifier's prediction; it costs the classifiers' MACs
  only. One θ is shared by all stages; for each cost budget it is chosen on a held-out split by the
  same `inference.calibrate` as every learned cascade (the largest θ whose held-out cost is within
  the budget), and the test split gives that θ's accuracy and cost.

Both splits pass once through the classifiers on the run's workers (`runtime.exit_tables`), each
reduced to its `ExitTable`: memory O(N·K), whatever the number of classes. Accuracy is top-k with
the run's `objective.topk`.

Usable alone: `python -m cascade_dist.sweep.baselines CHECKPOINT_DIR --config FILE [key=value ...]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..data import storage
from ..inference.calibration import calibrate
from ..method.exit_rule import ExitRule
from ..method.exit_table import ExitTable
from ..method.flops import CascadeMACs

log = logging.getLogger(__name__)


def static_points(test: ExitTable, macs: CascadeMACs, names: Sequence[str]) -> list[dict]:
    """Each classifier alone on the test split: accuracy (top-k) and cost %."""
    acc = test.static_correct.double().mean(0)
    return [{"name": n, "accuracy": float(a), "cost_pct": 100 * m / macs.reference}
            for n, a, m in zip(names, acc, macs.classifier)]


def classifier_only(macs: CascadeMACs) -> CascadeMACs:
    """The MACs of a threshold cascade: the classifiers', no policy."""
    return CascadeMACs(tuple(macs.classifier), (0,) * len(macs.classifier))


def threshold_point(table: ExitTable, macs: CascadeMACs, theta: Sequence[float], score: str = "max_softmax"):
    """(accuracy, cost %) of the confidence-threshold cascade at log-odds θ on a table (classifier MACs only)."""
    macs = classifier_only(macs)
    scores, correct = table.view(score)
    exits = ExitRule(tuple(theta)).exits(scores)
    acc = float(correct.gather(1, exits[:, None]).double().mean())
    return acc, 100 * float(macs.cumulative_macs()[exits].mean()) / macs.reference


def tune_thresholds(held_out: ExitTable, test: ExitTable, macs: CascadeMACs, budgets: Sequence[float],
                    score: str = "max_softmax") -> list[dict]:
    """Per budget: θ calibrated on the held-out table (hard-exit cost within it); its test accuracy and cost.

    Budgets that no θ can meet (below the first stage's cost) are skipped.
    """
    macs = classifier_only(macs)
    out = []
    for budget in budgets:
        try:
            cal = calibrate(held_out, macs, budget=float(budget), score=score)
        except ValueError:
            continue
        acc, cost = threshold_point(test, macs, cal.theta, score)
        out.append({"budget_pct": float(budget), "threshold": float(torch.sigmoid(torch.tensor(cal.theta[0]))),
                    "theta": cal.theta[0], "val_accuracy": cal.accuracy, "val_cost_pct": cal.cost_pct,
                    "accuracy": acc, "cost_pct": cost})
    return out


def default_budgets(macs: CascadeMACs, n: int = 20) -> list[float]:
    cum = (100 * classifier_only(macs).cumulative_macs() / macs.reference).tolist()
    return [float(b) for b in torch.linspace(cum[0], cum[-1], n).tolist()]


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
    from ..inference.weights import load_cascade
    from ..runtime.exit_tables import split_tables

    if (problem := held_out_problem(cfg, held_out_split)) is not None:
        raise FileNotFoundError(problem)
    if held_out_split == "train":
        log.warning("threshold baselines tuned on the training split (--held-out-split train): optimistic thresholds")
    macs = load_cascade(checkpoint_dir).model.macs
    tables = split_tables(checkpoint_dir, cfg, [held_out_split, cfg.data.eval_split], scores=("max_softmax",))
    held, test = tables[held_out_split], tables[cfg.data.eval_split]
    return {
        "held_out_split": held_out_split if held_out_split != "train" else "train (chosen with --held-out-split train)",
        "num_held_out": held.n,
        "num_test": test.n,
        "topk": test.topk,
        "static": static_points(test, macs, cfg.model.classifiers),
        "threshold_cascade": tune_thresholds(held, test, macs, budgets or default_budgets(macs)),
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
