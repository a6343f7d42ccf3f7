"""Operating points: the Pareto front, budget selection and the Table-2 "cost at the best static
accuracy" comparison.

Every point is a (cost %, accuracy) pair: cost in % of the largest classifier's MACs (DESIGN §1),
accuracy as a fraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass
class Point:
    """One operating point; `label` names it (a run, a classifier, a budget)."""

    cost_pct: float
    accuracy: float
    label: str = ""


def dominates(a: Point, b: Point) -> bool:
    """a is at least as cheap and as accurate as b, and strictly better in one of the two."""
    return (a.cost_pct <= b.cost_pct and a.accuracy >= b.accuracy
            and (a.cost_pct < b.cost_pct or a.accuracy > b.accuracy))


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points, by increasing cost (duplicates of a front point are kept once)."""
    front: list[Point] = []
    best = float("-inf")
    for p in sorted(points, key=lambda p: (p.cost_pct, -p.accuracy)):
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def best_under_budget(points: Iterable[Point], budget_pct: float) -> Point | None:
    """The most accurate point whose cost is ≤ `budget_pct` (the cheaper one on a tie); None if none fits."""
    fits = [p for p in points if p.cost_pct <= budget_pct]
    return max(fits, key=lambda p: (p.accuracy, -p.cost_pct)) if fits else None


def cost_to_match(points: Iterable[Point], target_accuracy: float, tolerance: float = 0.0) -> Point | None:
    """The cheapest point with accuracy ≥ target − tolerance (Table 2's "cost at the best static accuracy")."""
    fits = [p for p in points if p.accuracy >= target_accuracy - tolerance - 1e-12]
    return min(fits, key=lambda p: (p.cost_pct, -p.accuracy)) if fits else None


def match_summary(name: str, points: Sequence[Point], static_best: Point) -> dict[str, Any]:
    """Where `points` reach the best static classifier's accuracy (exactly and within 0.5 pp)."""
    exact, near = cost_to_match(points, static_best.accuracy), cost_to_match(points, static_best.accuracy, 0.005)
    top = max(points, key=lambda p: p.accuracy) if points else None
    return {
        "method": name,
        "matches": exact is not None,
        "cost_pct_at_match": exact.cost_pct if exact else None,
        "accuracy_at_match": exact.accuracy if exact else None,
        "point_at_match": exact.label if exact else None,
        "cost_pct_within_0.5pp": near.cost_pct if near else None,
        "best_accuracy": top.accuracy if top else None,
        "cost_pct_at_best": top.cost_pct if top else None,
    }


def accuracy_at_cost(front: Sequence[Point], cost_pct: float) -> float:
    """The accuracy a Pareto front (by increasing cost) reaches at `cost_pct`: linear between its
    points, its first point's accuracy below it, its best beyond it."""
    if not front:
        raise ValueError("accuracy_at_cost: empty front")
    if cost_pct <= front[0].cost_pct:
        return front[0].accuracy
    for lo, hi in zip(front, front[1:]):
        if cost_pct <= hi.cost_pct:
            return lo.accuracy + (hi.accuracy - lo.accuracy) * (cost_pct - lo.cost_pct) / (hi.cost_pct - lo.cost_pct)
    return front[-1].accuracy
