"""Test-time semantics: first stop at π ≥ τ, the re-weighted ensemble, metrics and the τ sweep."""

from __future__ import annotations

import pytest
import torch

from cascade_dist.method.evaluate import CascadeEvaluator, EvalConfig, cascade_probs
from cascade_dist.method.exit_rule import ExitRule, exit_stages
from cascade_dist.method.flops import CascadeMACs

MACS = CascadeMACs(classifier=(10, 30, 100), policy=(1, 1, 0))


def test_exit_at_first_stop_probability_above_tau():
    stop = torch.tensor([[0.6, 0.9, 1.0], [0.4, 0.5, 1.0], [0.1, 0.2, 1.0]])
    assert exit_stages(stop, 0.5).tolist() == [0, 1, 2]
    assert exit_stages(stop, 0.95).tolist() == [2, 2, 2]
    assert exit_stages(stop, [0.7, 0.45]).tolist() == [1, 1, 2]  # per-stage τ


@pytest.mark.parametrize("tau", [0.0, 1.0, -0.2, 1.5, [0.5, 1.0]])
def test_tau_outside_open_unit_interval_is_refused(tau):
    with pytest.raises(ValueError, match="tau must lie in"):
        exit_stages(torch.tensor([[0.5, 0.5, 1.0]]), tau)


def test_tau_count_must_match_stages():
    with pytest.raises(ValueError, match="1 or K-1 = 2 values"):
        exit_stages(torch.tensor([[0.5, 0.5, 1.0]]), [0.5, 0.5, 0.5])


def test_ensemble_weights_visited_softmaxes_by_their_stop_probabilities():
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]])
    stop = torch.tensor([[0.25, 0.75, 1.0]])
    exits = torch.tensor([1])
    mixed = cascade_probs(probs.log(), stop, exits, ensemble=True)
    assert torch.allclose(mixed, (0.25 * probs[0, 0] + 0.75 * probs[0, 1]) / 1.0)
    assert torch.allclose(cascade_probs(probs.log(), stop, exits, ensemble=False), probs[0, 1])


def test_evaluator_metrics_on_constructed_batch():
    # 4 images, 3 stages, 2 classes; targets all class 0
    probs = torch.tensor(
        [
            [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]],  # exits at 0, all right
            [[0.4, 0.6], [0.9, 0.1], [0.9, 0.1]],  # exits at 1: stage 0 wrong, 1 right
            [[0.4, 0.6], [0.3, 0.7], [0.8, 0.2]],  # exits at 2
            [[0.4, 0.6], [0.3, 0.7], [0.2, 0.8]],  # exits at 2, all wrong
        ]
    )
    stop = torch.tensor([[0.9, 0.5, 1.0], [0.1, 0.8, 1.0], [0.1, 0.1, 1.0], [0.2, 0.3, 1.0]])
    targets = torch.zeros(4, dtype=torch.long)
    ev = CascadeEvaluator(MACS, EvalConfig(tau=0.5, ensemble=False, sweep=[0.05, 0.5, 0.95]))
    ev.update(probs[:2].log(), stop[:2], targets[:2])
    ev.update(probs[2:].log(), stop[2:], targets[2:])
    rep = ev.compute()
    assert rep.num_samples == 4
    assert rep.exit_fractions == [0.25, 0.25, 0.5]
    assert rep.accuracy == 0.75
    assert rep.top5_accuracy is None  # 2 classes
    assert rep.static_accuracy == [0.25, 0.5, 0.75]
    cum = [11, 42, 142]
    assert rep.macs_per_image == pytest.approx((cum[0] + cum[1] + 2 * cum[2]) / 4)
    assert rep.cost_pct == pytest.approx(100 * rep.macs_per_image / 100)
    assert rep.static_cost_pct == [10.0, 30.0, 100.0]
    m = rep.accuracy_matrix
    assert m[0] == [1.0, 0.0, 0.0] and m[1] == [1.0, 1.0, 0.0] and m[2] == [1.0, 1.0, 0.5]
    costs = [p["cost_pct"] for p in rep.sweep]
    assert costs == sorted(costs) and costs[0] == pytest.approx(11.0) and costs[-1] == pytest.approx(142.0)
    assert rep.metrics()["exit_frac_stage2"] == 0.5


def test_evaluator_all_reduce_combines_workers():
    torch.manual_seed(0)
    lp, stop = torch.log_softmax(torch.randn(10, 3, 6), -1), torch.cat([torch.rand(10, 2), torch.ones(10, 1)], 1)
    y = torch.randint(0, 6, (10,))
    whole = CascadeEvaluator(MACS)
    whole.update(lp, stop, y)
    a, b = CascadeEvaluator(MACS), CascadeEvaluator(MACS)
    a.update(lp[:4], stop[:4], y[:4])
    b.update(lp[4:], stop[4:], y[4:])
    b_sums = dict(b.sums)
    a.all_reduce(lambda t: t + next(v for k, v in b_sums.items() if a.sums[k] is t))
    assert a.compute() == whole.compute()
    assert whole.compute().top5_accuracy is not None


def test_empty_evaluation_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        CascadeEvaluator(MACS).compute()


def test_log_odds_rule_is_the_tau_rule_and_still_orders_saturated_stop_probabilities():
    d = torch.tensor([[20.0, 0.3, float("inf")], [17.0, -2.0, float("inf")], [-1.0, 0.5, float("inf")]])
    stop = torch.sigmoid(d)
    assert stop[0, 0] == stop[1, 0] == 1.0  # float32 π saturates: no τ < 1 tells these two apart
    rule = ExitRule.from_tau([0.5, 0.6], 3)
    theta = rule.thresholds()
    assert theta[-1] == float("-inf") and theta[0] == 0.0
    assert rule.exits(d).tolist() == exit_stages(stop, [0.5, 0.6]).tolist() == [0, 0, 1]
    assert ExitRule.from_theta([18.0], 3).exits(d).tolist() == [0, 2, 2]


def test_evaluator_takes_log_odds_thresholds():
    lp = torch.log_softmax(torch.randn(3, 3, 4), -1)
    d = torch.tensor([[20.0, 0.3, float("inf")], [17.0, -2.0, float("inf")], [-1.0, 0.5, float("inf")]])
    ev = CascadeEvaluator(MACS, EvalConfig(sweep=[0.5]), theta=[18.0])
    ev.update(lp, torch.sigmoid(d), torch.zeros(3, dtype=torch.long), d)
    rep = ev.compute()
    assert rep.exit_fractions == [1 / 3, 0.0, 2 / 3] and rep.tau[0] == pytest.approx(1.0)
    # without the model's log-odds they come from π, which is 1.0 in float32 for both d = 20 and
    # d = 17: θ = 18 can no longer tell them apart (the reason the rule reads log-odds)
    blind = CascadeEvaluator(MACS, EvalConfig(sweep=[0.5]), theta=[18.0])
    blind.update(lp, torch.sigmoid(d), torch.zeros(3, dtype=torch.long))
    assert blind.compute().exit_fractions == [2 / 3, 0.0, 1 / 3]
