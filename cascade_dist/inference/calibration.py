"""Choose the stop thresholds on a held-out split: to a cost budget or to a target accuracy.

>>> table = collect_exit_table(cascade, val_loader, topk=1)            # N·K numbers, not N×K×C
>>> cal = calibrate(table, cascade.macs, budget=45.0)                  # or target_accuracy=0.92
>>> cal.save(checkpoint_dir / CALIBRATION_FILE)
>>> CascadePredictor(cascade, theta=cal.theta)

The split is first reduced to its `ExitTable` (per image and stage: the stop score and whether the
cascade is right, top-k, when the image exits there), batch by batch, so memory is O(N·K) whatever
the number of classes; the same table, with `score="max_softmax"` or `"entropy"`, calibrates a
confidence-threshold cascade over the same classifiers.

Thresholds are log-odds θ_t (stop when log π_t(stop) − log π_t(continue) ≥ θ_t; θ = logit τ).
Trained policies are near-deterministic: many π are exactly 1.0 in float32, so a τ in (0, 1) could
not tell them apart, while their log-odds still differ.

Global θ (one for every stage): lowering θ moves each image's exit earlier, so the cost only
falls. We sweep every distinct log-odds on the split at once (prefix maxima over the stages, sorted,
cumulative sums) and take, for a budget, the largest θ whose cost is within it; for a target
accuracy, the cheapest θ that reaches it. θ is set halfway between two consecutive log-odds.
With no ties among the log-odds, the next larger θ would move one image only, so the budget is met
from below within one image's worth of cost: (MACs of the largest exit step) / N.

Per-stage θ: coordinate search from the global θ, one stage at a time with the others fixed
(the same sweep): for a budget, the most accurate point within it, ended by filling the budget on
the stage where that keeps the most accuracy (so the one-image bound holds as well); for a target
accuracy, the cheapest point reaching it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from ..method.evaluate import run_over
from ..method.exit_rule import ExitRule
from ..method.exit_table import ExitTable, ExitTableBuilder
from ..method.flops import CascadeMACs
from ..method.models import StageRunner

CALIBRATION_FILE = "calibration.json"
MAX_ROUNDS = 10


@dataclass
class Calibration:
    """Thresholds chosen on a held-out split, and what they gave there (saved as JSON)."""

    theta: list[float]
    """Log-odds thresholds, one per stage but the last."""
    target: str
    """"budget" (cost %) or "accuracy" (top-k, in [0, 1])."""
    value: float
    per_stage: bool
    num_samples: int
    cost_pct: float
    accuracy: float
    exit_fractions: list[float]
    split: str | None = None
    tau: list[float] = field(default_factory=list)
    """The same thresholds as stop probabilities (for reading only: may round to 0 or 1)."""
    topk: int = 1
    """The k of `accuracy` (and of a target accuracy)."""
    score: str = "policy"
    """What θ thresholds: the policies' stop log-odds, or a confidence score (`exit_table.SCORES`)."""

    def save(self, path: str | Path) -> Path:
        """Write atomically (a temporary file moved into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            cal = cls(**data)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a calibration file ({err})") from None
        if not cal.theta or any(not isinstance(t, (int, float)) or math.isnan(t) for t in cal.theta):
            raise ValueError(f"{path}: theta must be a non-empty list of numbers, got {cal.theta}")
        return cal


def collect_exit_table(model: StageRunner, loader: Iterable, topk: int = 1, ensemble: bool = True,
                       scores: tuple[str, ...] = ("policy",), device: torch.device | str = "cpu") -> ExitTable:
    """The split's `ExitTable` (on the CPU), built batch by batch from dense outputs (every stage on
    every image) on `device`."""
    builder = ExitTableBuilder(topk, ensemble, scores)
    run_over(model, loader, builder, device=device)
    if builder.n == 0:
        raise ValueError("the calibration split gave no images")
    return builder.table()


def calibrate(
    table: ExitTable,
    macs: CascadeMACs,
    budget: float | None = None,
    target_accuracy: float | None = None,
    per_stage: bool = False,
    split: str | None = None,
    score: str = "policy",
) -> Calibration:
    """θ meeting `budget` (cost %, of the largest classifier's MACs) or `target_accuracy` (top-k, the
    table's k) on this table, for the exit rule of `score`."""
    if (budget is None) == (target_accuracy is None):
        raise ValueError("give exactly one of budget (cost %) and target_accuracy")
    if budget is not None and not budget > 0:
        raise ValueError(f"budget must be a cost % > 0, got {budget}")
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must lie in (0, 1], got {target_accuracy}")
    p = _Problem.build(table, macs, score)
    theta = p.global_theta(budget, target_accuracy)
    if per_stage and p.k > 2:
        theta = p.per_stage(theta, budget, target_accuracy)
    exits = p.exits(theta)
    return Calibration(
        theta=theta, target="budget" if budget is not None else "accuracy",
        value=float(budget if budget is not None else target_accuracy), per_stage=per_stage,
        num_samples=p.n, cost_pct=p.cost_pct(exits), accuracy=p.accuracy(exits),
        exit_fractions=(torch.bincount(exits, minlength=p.k).double() / p.n).tolist(),
        split=split, tau=ExitRule(tuple(theta)).tau, topk=table.topk, score=score,
    )


@dataclass
class _Problem:
    """The held-out split reduced to what the thresholds change: log-odds, correctness per exit, costs."""

    log_odds: torch.Tensor  # (N, K) float64
    correct: torch.Tensor  # (N, K) float64: 1 if the cascade is right (top-k) when the image exits at stage e
    cum_cost: torch.Tensor  # (K,) float64: cost % of exiting at stage e

    @classmethod
    def build(cls, table: ExitTable, macs: CascadeMACs, score: str) -> "_Problem":
        scores, correct = table.view(score)
        d = scores.double().nan_to_num(nan=-math.inf, posinf=1e300, neginf=-1e300)
        return cls(d, correct.double(), 100 * macs.cumulative_macs() / macs.reference)

    @property
    def n(self) -> int:
        return self.log_odds.shape[0]

    @property
    def k(self) -> int:
        return self.log_odds.shape[1]

    def exits(self, theta: list[float]) -> torch.Tensor:
        return ExitRule(tuple(theta)).exits(self.log_odds)

    def cost_pct(self, exits: torch.Tensor) -> float:
        return float(self.cum_cost[exits].sum()) / self.n

    def accuracy(self, exits: torch.Tensor) -> float:
        return float(self.correct.gather(1, exits[:, None]).sum()) / self.n

    def global_theta(self, budget, target_accuracy) -> list[float]:
        """One θ for all stages: events at the prefix maxima of the log-odds (exit ≤ t ⇔ max_{s≤t} d_s ≥ θ)."""
        m = self.log_odds[:, :-1].cummax(dim=1).values  # (N, K-1)
        steps = torch.arange(self.k - 1)
        d_cost = (self.cum_cost[steps] - self.cum_cost[steps + 1]).expand_as(m)
        d_correct = self.correct[:, :-1] - self.correct[:, 1:]
        base = (self.cum_cost[-1] * self.n, self.correct[:, -1].sum())
        theta = _choose(*_curve(m.flatten(), d_cost.flatten(), d_correct.flatten(), *base, self.n), budget, target_accuracy)
        return [theta] * (self.k - 1)

    def per_stage(self, theta: list[float], budget, target_accuracy) -> list[float]:
        """Coordinate search over the stages, starting from the global θ (which is feasible)."""
        theta = list(theta)
        for _ in range(MAX_ROUNDS):
            changed = False
            for t in range(self.k - 1):
                options = _curve(*self._stage_events(theta, t), self.n)
                new = _best(options, budget, target_accuracy)
                if new is not None and _better(options, new, self._point(theta), budget):
                    theta[t], changed = options[0][new], True
            if not changed:
                break
        if budget is not None:  # fill the budget on the stage where that keeps the most accuracy
            for _ in range(self.k - 1):
                fills = []
                for t in range(self.k - 1):
                    options = _curve(*self._stage_events(theta, t), self.n)
                    j = _choose_index(options, budget, None)
                    fills.append((j > 0, options[2][j], options[1][j], t, options[0][j]))
                tight, _, _, t, theta[t] = max(fills)  # tight: one more image at stage t would exceed it
                if tight:
                    break
        return theta

    def _point(self, theta) -> tuple[float, float]:
        exits = self.exits(theta)
        return self.cost_pct(exits), self.accuracy(exits)

    def _stage_events(self, theta: list[float], t: int):
        """Events of θ_t alone: images not stopped before t exit at t once θ_t ≤ d_t, else at b (their next stop)."""
        hit = ExitRule(tuple(theta)).hits(self.log_odds)
        earlier = hit[:, :t].any(1)
        later = hit.clone()
        later[:, : t + 1] = False
        b = later.int().argmax(1)
        first = hit.int().argmax(1)
        base_exit = torch.where(earlier, first, b)
        rows = torch.arange(self.n)
        free = ~earlier
        d_cost = (self.cum_cost[t] - self.cum_cost[b])[free]
        d_correct = (self.correct[:, t] - self.correct[rows, b])[free]
        base = (self.cum_cost[base_exit].sum(), self.correct[rows, base_exit].sum())
        return self.log_odds[free, t], d_cost, d_correct, *base


def _curve(values, d_cost, d_correct, base_cost, base_correct, n):
    """Every operating point of a threshold over `values` (events), from +inf down.

    Returns (thetas, cost %, accuracy), each a list; option j keeps the events with value ≥ level j,
    and its θ lies halfway between level j and the next lower level (option 0: no event, θ above all).
    """
    order = values.argsort(descending=True, stable=True)
    values = values[order]
    cost = float(base_cost) + torch.cumsum(d_cost[order], 0)
    correct = float(base_correct) + torch.cumsum(d_correct[order], 0)
    last_of_level = torch.ones(len(values), dtype=torch.bool)
    last_of_level[:-1] = values[1:] != values[:-1]
    levels, cost, correct = values[last_of_level], cost[last_of_level], correct[last_of_level]
    below = torch.cat([levels[1:], levels[-1:] - 1.0]) if len(levels) else levels
    thetas = [float(levels[0]) + 1.0 if len(levels) else 0.0] + (levels + (below - levels) / 2).tolist()
    costs = [float(base_cost) / n] + (cost / n).tolist()
    accs = [float(base_correct) / n] + (correct / n).tolist()
    return thetas, costs, accs


def _choose_index(options, budget, target_accuracy) -> int:
    thetas, costs, accs = options
    if budget is not None:
        ok = [j for j, c in enumerate(costs) if c <= budget]
        if not ok:
            raise ValueError(f"budget {budget:g} % is below the cheapest operating point, "
                             f"{min(costs):.2f} % (every image stopping as early as possible)")
        return ok[0]  # the largest θ within the budget
    ok = [j for j, a in enumerate(accs) if a >= target_accuracy]
    if not ok:
        raise ValueError(f"target accuracy {target_accuracy:g} is above the best reachable, {max(accs):.4f}")
    return min(ok, key=lambda j: (costs[j], j))


def _choose(thetas, costs, accs, budget, target_accuracy) -> float:
    return thetas[_choose_index((thetas, costs, accs), budget, target_accuracy)]


def _best(options, budget, target_accuracy) -> int | None:
    """Budget: the most accurate option within it; accuracy: the cheapest reaching it."""
    thetas, costs, accs = options
    if budget is not None:
        ok = [j for j, c in enumerate(costs) if c <= budget]
        return max(ok, key=lambda j: (accs[j], costs[j])) if ok else None
    ok = [j for j, a in enumerate(accs) if a >= target_accuracy]
    return min(ok, key=lambda j: (costs[j], -accs[j])) if ok else None


def _better(options, j, current: tuple[float, float], budget) -> bool:
    cost, acc = options[1][j], options[2][j]
    eps = 1e-12
    if budget is not None:
        return acc > current[1] + eps
    return cost < current[0] - eps
