"""Calibration of the stop thresholds to a cost budget or a target accuracy on a held-out split."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cascade_fixtures import load_split, spread_cascade

from cascade_dist.inference.calibration import Calibration, calibrate, collect_exit_table
from cascade_dist.method.exit_rule import ExitRule
from cascade_dist.method.exit_table import cascade_probs, table_rows
from cascade_dist.method.flops import CascadeMACs
from cascade_dist.models import CascadeOutput, dense_forward
from cascade_dist.inference.predictor import CascadePredictor

HELD_OUT = 128


@pytest.fixture(scope="module")
def held_out(small_fashion_mnist_shards):
    images, targets = load_split(small_fashion_mnist_shards, "test", 256)
    cascade = spread_cascade(images)
    images, targets = images[:HELD_OUT], targets[:HELD_OUT]
    table = collect_exit_table(cascade, [(images[:64], targets[:64]), (images[64:], targets[64:])])
    with torch.no_grad():
        outputs = dense_forward(cascade.eval(), images)  # the brute-force references' input
    return cascade, images, targets, outputs, table


def one_image_pct(macs: CascadeMACs, n: int) -> float:
    """The largest cost one image can add, in % of the reference, per image of the split."""
    cum = macs.cumulative_macs()
    return 100 * float(cum[-1] - cum[0]) / macs.reference / n


def measured(cascade, images, targets, theta):
    """Cost % and accuracy of real early exit at `theta` on the held-out images."""
    got = CascadePredictor(cascade, theta=theta)(images)
    return 100 * float(got.macs.mean()) / cascade.macs.reference, float((got.predictions == targets).double().mean())


def test_budget_on_constructed_log_odds():
    macs = CascadeMACs(classifier=(10, 100), policy=(0, 0))  # cost %: 10 at stage 1, 110 at stage 2
    d = torch.tensor([3.0, -1.0, 2.0, 0.5])
    out = CascadeOutput(log_probs=torch.zeros(4, 2, 3).log_softmax(-1),
                        log_stop=torch.stack([F.logsigmoid(d), torch.zeros(4)], 1),
                        log_continue=torch.stack([F.logsigmoid(-d), torch.full((4,), -math.inf)], 1))
    table = table_rows(out.log_probs, out.stop_probs, out.stop_log_odds, torch.zeros(4, dtype=torch.long))
    cal = calibrate(table, macs, budget=60.0)
    assert cal.theta == [1.25]  # two images stop (d = 3, 2): halfway between 2 and the next log-odds, 0.5
    assert cal.cost_pct == 60.0 and cal.exit_fractions == [0.5, 0.5]
    assert calibrate(table, macs, budget=200.0).exit_fractions == [0.0, 1.0]
    with pytest.raises(ValueError, match="below the cheapest operating point, 10.00 %"):
        calibrate(table, macs, budget=5.0)


@pytest.mark.parametrize("per_stage", [False, True], ids=["global", "per-stage"])
@pytest.mark.parametrize("budget", [40.0, 100.0, 180.0])
def test_budget_met_within_one_image_on_the_held_out_split(held_out, budget, per_stage):
    cascade, images, targets, outputs, table = held_out
    cal = calibrate(table, cascade.macs, budget=budget, per_stage=per_stage)
    cost, accuracy = measured(cascade, images, targets, cal.theta)
    assert budget - one_image_pct(cascade.macs, HELD_OUT) < cost <= budget
    assert cost == pytest.approx(cal.cost_pct, rel=1e-12) and accuracy == cal.accuracy
    assert len(cal.theta) == 2 and (per_stage or cal.theta[0] == cal.theta[1])


def test_log_odds_split_what_tau_cannot(held_out):
    """π is exactly 1.0 for many images: any τ < 1 stops all of them, the log-odds can still choose."""
    cascade, images, targets, outputs, table = held_out
    saturated = int((outputs.stop_probs[:, 0] == 1).sum())
    assert saturated >= 10
    tau_max = float(np.nextafter(np.float32(1), np.float32(0)))  # the largest float32 τ below 1
    cost_tau_max, _ = measured(cascade, images, targets, [math.log(tau_max) - math.log1p(-tau_max)] * 2)
    budget = 180.0
    assert cost_tau_max < budget - 5 * one_image_pct(cascade.macs, HELD_OUT)  # τ falls short by > 5 images
    cal = calibrate(table, cascade.macs, budget=budget)
    assert cal.theta[0] > 16.7 and cal.tau[0] > tau_max  # beyond logit of any float32 τ < 1


def dense_point(cascade, outputs, targets, theta, k: int = 1):
    """Cost % and top-k accuracy at `theta` from the dense outputs (evaluate.py's rule): a brute-force
    reference (sorting each image's probabilities, not `topk_hits`)."""
    exits = ExitRule.from_theta(theta, cascade.num_stages).exits(outputs.stop_log_odds)
    probs = cascade_probs(outputs.log_probs, outputs.stop_probs, exits)
    cost = 100 * float(cascade.macs.cumulative_macs()[exits].mean()) / cascade.macs.reference
    ranks = [int((p > p[y]).sum()) for p, y in zip(probs, targets)]  # classes more probable than the label
    return cost, sum(r < k for r in ranks) / len(ranks)


@pytest.mark.parametrize("k", [1, 3])
def test_target_accuracy_is_reached_at_the_least_cost(held_out, k):
    cascade, images, targets, outputs, _ = held_out
    table = collect_exit_table(cascade, [(images, targets)], topk=k)
    grid = sorted(set(outputs.stop_log_odds[:, :2].flatten().tolist()))
    points = [dense_point(cascade, outputs, targets, [t], k) for t in [grid[0] - 1, *grid, grid[-1] + 1]]
    accuracies = sorted({a for _, a in points})
    target = accuracies[len(accuracies) // 2]
    cal = calibrate(table, cascade.macs, target_accuracy=target)
    assert cal.topk == k
    cost, accuracy = dense_point(cascade, outputs, targets, cal.theta, k)
    assert accuracy >= target and accuracy == pytest.approx(cal.accuracy, abs=1e-12)
    assert cost == pytest.approx(min(c for c, a in points if a >= target), rel=1e-12)  # no global θ does it for less
    if k == 1:
        assert cost == pytest.approx(measured(cascade, images, targets, cal.theta)[0], rel=1e-12)
    per_stage = calibrate(table, cascade.macs, target_accuracy=target, per_stage=True)
    assert per_stage.accuracy >= target and per_stage.cost_pct <= cal.cost_pct
    with pytest.raises(ValueError, match="above the best reachable"):
        calibrate(table, cascade.macs, target_accuracy=1.0 if accuracies[-1] < 1 else 2.0)


def test_top3_is_counted_at_the_same_thresholds(held_out):
    """A budget picks the same θ whatever k (it is about cost); the accuracy reported there is top-k."""
    cascade, images, targets, outputs, table1 = held_out
    table3 = collect_exit_table(cascade, [(images, targets)], topk=3)
    cal1, cal3 = calibrate(table1, cascade.macs, budget=150.0), calibrate(table3, cascade.macs, budget=150.0)
    assert cal1.theta == cal3.theta
    assert cal3.accuracy == pytest.approx(dense_point(cascade, outputs, targets, cal3.theta, 3)[1], abs=1e-12)
    assert cal3.accuracy > cal1.accuracy + 0.05


def test_exactly_one_target_is_required(held_out):
    cascade, _, _, _, table = held_out
    with pytest.raises(ValueError, match="exactly one of budget"):
        calibrate(table, cascade.macs)
    with pytest.raises(ValueError, match="exactly one of budget"):
        calibrate(table, cascade.macs, budget=50.0, target_accuracy=0.5)


def test_save_and_load(held_out, tmp_path):
    cascade, _, _, _, table = held_out
    cal = calibrate(table, cascade.macs, budget=100.0, split="val")
    path = cal.save(tmp_path / "calibration.json")
    assert Calibration.load(path) == cal
    assert json.loads(path.read_text())["target"] == "budget"
    path.write_text('{"theta": "x"}')
    with pytest.raises(ValueError, match="calibration.json: not a calibration file"):
        Calibration.load(path)
