"""Table 2 on real data, with controls and seeds: every method's operating points, measured alike.

Per seed, one shared warm-up (`runtime.control.warmup_config`), then from its checkpoint:
* static: each classifier trained alone for the same total number of epochs (the control);
* the learned cascades, one per recipe (`Recipe`): "Ours" (joint REINFORCE), the paper's own
  recipe, and "Ours (S)" (policies on the frozen warm-up classifiers).
Then, offline, each checkpoint's held-out and test splits pass once through its cascade on the
run's workers (`runtime.exit_tables`), each reduced to an `ExitTable` (per image and stage: the stop
scores, and whether the answer is right, top-k). Every method reads its exit rule off a table:
* a learned cascade scores with its policies' stop log-odds (and answers with the ensemble of the
  visited classifiers, as configured);
* the confidence-threshold cascades score with the max softmax (over the static classifiers, and
  over Ours' jointly trained ones) and the entropy-threshold cascade with −entropy (static); they
  answer with the exiting classifier and cost the classifiers' MACs only.
For every method the same `inference.calibrate` picks, on the held-out split, the one global
threshold whose hard-exit cost meets each budget; the test split then gives that point's cost and
accuracy (class-balanced where asked: the mean of the per-class accuracies).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..inference.calibration import calibrate
from ..inference.weights import load_cascade
from ..method.exit_rule import ExitRule
from ..method.exit_table import ExitTable
from ..method.flops import CascadeMACs
from ..runtime.config import Config, from_container, to_container
from ..runtime.control import continued_config, static_config, warmup_config
from ..runtime.exit_tables import split_tables
from .baselines import classifier_only

NAMED_BUDGETS = (15.0, 25.0, 35.0, 50.0)
METHOD_LABELS = {
    "ours": "Ours (joint REINFORCE, recommended recipe)",
    "ours_paper": "Ours (joint REINFORCE, the paper's recipe)",
    "ours_s": "Ours (S) (policies on frozen warm-up classifiers)",
    "threshold_static": "max-softmax threshold, static classifiers",
    "threshold_joint": "max-softmax threshold, Ours' jointly trained classifiers",
    "entropy_static": "entropy threshold, static classifiers",
}


@dataclass(frozen=True)
class Recipe:
    """A learned cascade trained from the shared warm-up: its name and config overrides."""

    name: str
    overrides: tuple[str, ...] = ()


PAPER_RECIPE = ("model.policy_input=softmax", "optim.optimizer=sgd", "optim.policy_lr=0.1", "optim.classifier_lr=0.01",
                "objective.ce_weight=0.0", "objective.budget=null")
"""The paper's policy recipe: raw softmax input, SGD (momentum, Nesterov) at policy LR 0.1, no
cross-entropy term, a fixed α (the project's saturation guard stays on)."""
RECIPES = (Recipe("ours"), Recipe("ours_paper", PAPER_RECIPE), Recipe("ours_s", ("optim.freeze_classifiers=true",)))


def with_overrides(cfg: Config, overrides) -> Config:
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.create(to_container(cfg)), OmegaConf.from_dotlist(list(overrides)))
    return from_container(OmegaConf.to_container(merged))


def train_seed(cfg: Config, seed: int, recipes, run: Callable) -> dict[str, str]:
    """The runs of one seed (warm-up, static control, one cascade per recipe); their checkpoints."""
    base = copy.deepcopy(cfg)
    base.run.seed = seed
    base.run.name = f"{cfg.run.name}-s{seed}"
    warm = run(warmup_config(base))
    checkpoints = {"static": str(run(static_config(base, warm.checkpoint_path)).checkpoint_path)}
    for recipe in recipes:
        rcfg = continued_config(with_overrides(base, recipe.overrides), warm.checkpoint_path)
        rcfg.run.name = f"{base.run.name}-{recipe.name}"
        checkpoints[recipe.name] = str(run(rcfg).checkpoint_path)
    return checkpoints


@dataclass
class Scored:
    """One method on one split: its exit table, the score it thresholds, and what a stage costs."""

    table: ExitTable
    score: str
    macs: CascadeMACs


def point(scored: Scored, theta: list[float], balanced: bool) -> tuple[float, float, torch.Tensor]:
    """(cost %, accuracy, exit stages) of threshold θ on a split."""
    scores, correct = scored.table.view(scored.score)
    exits = ExitRule(tuple(theta)).exits(scores)
    cost = 100 * float(scored.macs.cumulative_macs()[exits].mean()) / scored.macs.reference
    return cost, scored.table.accuracy(correct.gather(1, exits[:, None]).squeeze(1), balanced), exits


@dataclass
class Curve:
    """A method's operating points on test, each chosen on the held-out split for a budget."""

    budgets: list[float] = field(default_factory=list)
    cost_pct: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    theta: list[list[float]] = field(default_factory=list)

    def at(self, budget: float) -> float | None:
        return next((a for b, a in zip(self.budgets, self.accuracy) if abs(b - budget) < 1e-9), None)

    def matched_cost(self, target: float) -> float | None:
        """The cheapest test cost at which the method reaches `target` accuracy (None: never)."""
        hits = [c for c, a in zip(self.cost_pct, self.accuracy) if a >= target]
        return min(hits) if hits else None


def curve(held_out: Scored, test: Scored, budgets, balanced: bool) -> Curve:
    c = Curve()
    floor = 100 * float(held_out.macs.cumulative_macs()[0]) / held_out.macs.reference
    for b in budgets:
        if b < floor:
            continue
        cal = calibrate(held_out.table, held_out.macs, budget=b, score=held_out.score)
        cost, acc, _ = point(test, cal.theta, balanced)
        c.budgets.append(float(b))
        c.cost_pct.append(cost)
        c.accuracy.append(acc)
        c.theta.append(cal.theta)
    return c


def budget_grid(macs: CascadeMACs, n: int = 40) -> list[float]:
    """The named budgets plus an even grid from the first stage's cost to the last's (in % of the largest)."""
    cum = 100 * macs.cumulative_macs() / macs.reference
    grid = torch.linspace(float(cum[0]) + 0.5, min(float(cum[-1]), 130.0), n).tolist()
    return sorted({*NAMED_BUDGETS, *[round(g, 2) for g in grid]})


CONFIDENCE_METHODS = (("threshold_static", "static", "max_softmax"), ("entropy_static", "static", "entropy"),
                      ("threshold_joint", "ours", "max_softmax"))


def score_seed(checkpoints: dict[str, str], cfg: Config, held_out_split: str, balanced: bool,
               ) -> tuple[dict[str, Curve], dict]:
    """Every method's curve for one seed, and the static classifiers' test accuracies."""
    test_split = cfg.data.eval_split
    sources = {src for _, src, _ in CONFIDENCE_METHODS}
    tables, macs = {}, {}
    for name, ckpt in checkpoints.items():
        scores = ("policy", "max_softmax", "entropy") if name in sources else ("policy",)
        tables[name] = split_tables(ckpt, cfg, [held_out_split, test_split], scores)
        macs[name] = load_cascade(ckpt).model.macs
    static_test = tables["static"][test_split]
    static_acc = [static_test.accuracy(static_test.static_correct[:, t], balanced) for t in range(static_test.k)]
    budgets = budget_grid(macs["static"])
    curves = {}
    for name in checkpoints:
        if name != "static":
            scored = [Scored(tables[name][s], "policy", macs[name]) for s in (held_out_split, test_split)]
            curves[name] = curve(*scored, budgets, balanced)
    for method, source, kind in CONFIDENCE_METHODS:
        if source in tables:
            scored = [Scored(tables[source][s], kind, classifier_only(macs[source])) for s in (held_out_split, test_split)]
            curves[method] = curve(*scored, budgets, balanced)
    extras = {}
    if "ours" in curves and curves["ours"].at(35.0) is not None:  # Figure 4 and the exit histogram, at 35 %
        from ..method.evaluate import CascadeEvaluator, EvalConfig

        theta = curves["ours"].theta[curves["ours"].budgets.index(35.0)]
        table = tables["ours"][test_split]
        ev = CascadeEvaluator(macs["ours"], EvalConfig(ensemble=table.ensemble), theta=theta, topk=table.topk)
        ev.update_table(table)
        extras["ours_report_at_35"] = ev.compute()
    ref = macs["static"]
    return curves, {**extras, "static_accuracy": static_acc,
                    "static_cost_pct": [100 * m / ref.reference for m in ref.classifier]}


def mean_std(values: list[float | None]) -> dict | None:
    """{"mean", "std", "n"} over the seeds that have a value; None when none has (e.g. never matched)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    t = torch.tensor(vals, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(vals) > 1 else 0.0, "n": len(vals),
            "of": len(values)}
