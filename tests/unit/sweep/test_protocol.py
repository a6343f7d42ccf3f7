"""The Table-2 protocol's scoring: threshold cascades as scores, calibrated curves, balanced accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from cascade_dist.method.exit_table import table_rows
from cascade_dist.method.flops import CascadeMACs
from cascade_dist.method.models import CascadeOutput
from cascade_dist.sweep.baselines import classifier_only
from cascade_dist.sweep.protocol import Curve, Scored, curve, mean_std, point

MACS = CascadeMACs(classifier=(10, 100), policy=(1, 0))


def two_stage(n=400, seed=0):
    """Stage 1 confident and right on the easy half; stage 2 right everywhere."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    easy = torch.arange(n) % 2 == 0
    l1 = torch.randn(n, 4, generator=g)
    l1[easy, y[easy]] += 6
    l2 = torch.randn(n, 4, generator=g)
    l2[torch.arange(n), y] += 6
    log_probs = torch.log_softmax(torch.stack([l1, l2], 1), -1)
    zeros = torch.zeros(n, 2)
    return CascadeOutput(log_probs, zeros, zeros), y, easy


def confidence_scored(out, y, macs, kind):
    table = table_rows(out.log_probs, out.stop_probs, out.stop_log_odds, y, scores=("policy", "max_softmax", "entropy"))
    return Scored(table, kind, classifier_only(macs))


def test_max_softmax_threshold_as_scores_costs_classifiers_only_and_stops_the_confident():
    out, y, easy = two_stage()
    scored = confidence_scored(out, y, MACS, "max_softmax")
    assert scored.macs.policy == (0, 0)
    d = scored.table.scores["max_softmax"]
    assert torch.isinf(d[:, -1]).all() and d[easy, 0].mean() > d[~easy, 0].mean() + 3
    # θ between the two groups: the easy half stops at stage 1 (cost 10 %), the rest pays 110 %
    cost, acc, exits = point(scored, [float(d[:, 0].median())], balanced=False)
    assert cost == pytest.approx(60.0, abs=2) and acc > 0.95
    # a threshold cascade answers with the exiting classifier alone, whatever the policies' ensemble
    assert torch.equal(scored.table.view("max_softmax")[1], scored.table.static_correct)
    entropy = confidence_scored(out, y, MACS, "entropy").table.scores["entropy"]
    assert torch.corrcoef(torch.stack([entropy[:, 0], d[:, 0]]))[0, 1] > 0.8


def test_curve_meets_each_budget_on_held_out_and_reports_test():
    held = confidence_scored(*two_stage(seed=1)[:2], MACS, "max_softmax")
    test = confidence_scored(*two_stage(seed=2)[:2], MACS, "max_softmax")
    c = curve(held, test, [5.0, 15.0, 35.0, 60.0, 110.0], balanced=False)
    assert c.budgets == [15.0, 35.0, 60.0, 110.0]  # 5 % is below the first stage's cost: skipped
    assert c.accuracy[0] < c.accuracy[-1] and all(abs(cost - b) < 8 for cost, b in zip(c.cost_pct, c.budgets))
    assert c.matched_cost(c.accuracy[-1]) <= c.cost_pct[-1]
    assert c.matched_cost(1.01) is None and c.at(35.0) == c.accuracy[1] and c.at(20.0) is None


def test_balanced_accuracy_weights_classes_equally():
    y = torch.tensor([0] * 9 + [1])
    log_probs = torch.log_softmax(torch.tensor([[[2.0, 0.0]]]).expand(10, 1, 2), -1)  # always says class 0
    table = table_rows(log_probs, torch.ones(10, 1), torch.full((10, 1), math.inf), y)
    right = table.static_correct[:, 0]
    assert table.accuracy(right, False) == pytest.approx(0.9)
    assert table.accuracy(right, True) == pytest.approx(0.5)


def test_mean_std_over_seeds_and_never():
    assert mean_std([None, None]) is None
    m = mean_std([0.9, None, 0.8])
    assert m["mean"] == pytest.approx(0.85) and m["std"] == pytest.approx(math.sqrt(0.005)) and (m["n"], m["of"]) == (2, 3)
    assert Curve().matched_cost(0.5) is None and isinstance(Scored, type)
