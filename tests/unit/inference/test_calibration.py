"""Calibration of the stop thresholds to a cost budget or a target accuracy on a held-out split."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cascade_fixtures import load_split, spread_cascade

from cascade_dist.inference.calibration import Calibration, calibrate, collect_outputs
from cascade_dist.method.evaluate import cascade_probs
from cascade_dist.method.exit_rule import ExitRule
from cascade_dist.method.flops import CascadeMACs
from cascade_dist.models import CascadeOutput
from cascade_dist.inference.predictor import CascadePredictor

HELD_OUT = 128


@pytest.fixture(scope="module")
def held_out(small_fashion_mnist_shards):
    images, targets = load_split(small_fashion_mnist_shards, "test", 256)
    cascade = spread_cascade(images)
    images, targets = images[:HELD_OUT], targets[:HELD_OUT]
    outputs, _ = collect_outputs(cascade, [(images[:64], targets[:64]), (images[64:], targets[64:])])
    return cascade, images, targets, outputs


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
    cal = calibrate(out, torch.zeros(4, dtype=torch.long), macs, budget=60.0)
    assert cal.theta == [1.25]  # two images stop (d = 3, 2): halfway between 2 and the next log-odds, 0.5
    assert cal.cost_pct == 60.0 and cal.exit_fractions == [0.5, 0.5]
    assert calibrate(out, torch.zeros(4, dtype=torch.long), macs, budget=200.0).exit_fractions == [0.0, 1.0]
    with pytest.raises(ValueError, match="below the cheapest operating point, 10.00 %"):
        calibrate(out, torch.zeros(4, dtype=torch.long), macs, budget=5.0)


@pytest.mark.parametrize("per_stage", [False, True], ids=["global", "per-stage"])
@pytest.mark.parametrize("budget", [40.0, 100.0, 180.0])
def test_budget_met_within_one_image_on_the_held_out_split(held_out, budget, per_stage):
    cascade, images, targets, outputs = held_out
    cal = calibrate(outputs, targets, cascade.macs, budget=budget, per_stage=per_stage)
    cost, accuracy = measured(cascade, images, targets, cal.theta)
    assert budget - one_image_pct(cascade.macs, HELD_OUT) < cost <= budget
    assert cost == pytest.approx(cal.cost_pct, rel=1e-12) and accuracy == cal.accuracy
    assert len(cal.theta) == 2 and (per_stage or cal.theta[0] == cal.theta[1])


def test_log_odds_split_what_tau_cannot(held_out):
    """π is exactly 1.0 for many images: any τ < 1 stops all of them, the log-odds can still choose."""
    cascade, images, targets, outputs = held_out
    saturated = int((outputs.stop_probs[:, 0] == 1).sum())
    assert saturated >= 10
    tau_max = float(np.nextafter(np.float32(1), np.float32(0)))  # the largest float32 τ below 1
    cost_tau_max, _ = measured(cascade, images, targets, [math.log(tau_max) - math.log1p(-tau_max)] * 2)
    budget = 180.0
    assert cost_tau_max < budget - 5 * one_image_pct(cascade.macs, HELD_OUT)  # τ falls short by > 5 images
    cal = calibrate(outputs, targets, cascade.macs, budget=budget)
    assert cal.theta[0] > 16.7 and cal.tau[0] > tau_max  # beyond logit of any float32 τ < 1


def dense_point(cascade, outputs, targets, theta):
    """Cost % and accuracy at `theta` from the dense outputs (evaluate.py's rule): a brute-force reference."""
    exits = ExitRule.from_theta(theta, cascade.num_stages).exits(outputs.stop_log_odds)
    probs = cascade_probs(outputs.log_probs, outputs.stop_probs, exits)
    cost = 100 * float(cascade.macs.cumulative_macs()[exits].mean()) / cascade.macs.reference
    return cost, float((probs.argmax(-1) == targets).double().mean())


def test_target_accuracy_is_reached_at_the_least_cost(held_out):
    cascade, images, targets, outputs = held_out
    grid = sorted(set(outputs.stop_log_odds[:, :2].flatten().tolist()))
    points = [dense_point(cascade, outputs, targets, [t]) for t in [grid[0] - 1, *grid, grid[-1] + 1]]
    accuracies = sorted({a for _, a in points})
    target = accuracies[len(accuracies) // 2]
    cal = calibrate(outputs, targets, cascade.macs, target_accuracy=target)
    cost, accuracy = measured(cascade, images, targets, cal.theta)
    assert accuracy >= target
    assert cost == pytest.approx(min(c for c, a in points if a >= target), rel=1e-12)  # no global θ does it for less
    per_stage = calibrate(outputs, targets, cascade.macs, target_accuracy=target, per_stage=True)
    assert per_stage.accuracy >= target and per_stage.cost_pct <= cal.cost_pct
    with pytest.raises(ValueError, match="above the best reachable"):
        calibrate(outputs, targets, cascade.macs, target_accuracy=1.0 if accuracies[-1] < 1 else 2.0)


def test_exactly_one_target_is_required(held_out):
    cascade, _, targets, outputs = held_out
    with pytest.raises(ValueError, match="exactly one of budget"):
        calibrate(outputs, targets, cascade.macs)
    with pytest.raises(ValueError, match="exactly one of budget"):
        calibrate(outputs, targets, cascade.macs, budget=50.0, target_accuracy=0.5)


def test_save_and_load(held_out, tmp_path):
    cascade, _, targets, outputs = held_out
    cal = calibrate(outputs, targets, cascade.macs, budget=100.0, split="val")
    path = cal.save(tmp_path / "calibration.json")
    assert Calibration.load(path) == cal
    assert json.loads(path.read_text())["target"] == "budget"
    path.write_text('{"theta": "x"}')
    with pytest.raises(ValueError, match="calibration.json: not a calibration file"):
        Calibration.load(path)
