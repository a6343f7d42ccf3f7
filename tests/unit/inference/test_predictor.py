"""Early exit equals the dense evaluation (run everything, then pick), and skips the compute."""

from __future__ import annotations

import pytest
import torch
from cascade_fixtures import load_split, spread_cascade

from cascade_dist.method.evaluate import CascadeEvaluator, EvalConfig, cascade_probs
from cascade_dist.method.exit_rule import ExitRule
from cascade_dist.inference.predictor import CascadePrediction, CascadePredictor

# (threshold, expected exits): τ = 0.5 splits stage 1 about in half; τ = 1e-20 stops everything at
# stage 1; θ = 100 sends everything to the last stage (τ = sigmoid(100) is 1.0 in float64: only the
# log-odds form can say it, as the policies give log-odds up to ~47); one τ per stage.
THRESHOLDS = {
    "tau=0.5": dict(tau=0.5),
    "all-first": dict(tau=1e-20),
    "all-last": dict(theta=100.0),
    "per-stage": dict(tau=[0.2, 0.9]),
}
IMAGES_PER_BATCH_SIZE = {1: 12, 7: 63, 256: 256}


@pytest.fixture(scope="module")
def data(small_fashion_mnist_shards):
    images, targets = load_split(small_fashion_mnist_shards, "test", 256)
    return spread_cascade(images), images, targets


@pytest.fixture(scope="module")
def dense(data):
    """Every stage on every image of each batch (`Cascade.forward`), per batch size: the reference."""
    cascade, images, _ = data
    with torch.no_grad():
        return {bs: [cascade(images[i:i + bs]) for i in range(0, n, bs)] for bs, n in IMAGES_PER_BATCH_SIZE.items()}


def pick(cascade, outputs, rule, ensemble=True):
    """evaluate.py's test-time rule on dense outputs: exit stage, ensemble, prediction, MACs."""
    exits = [rule.exits(out.stop_log_odds) for out in outputs]
    probs = torch.cat([cascade_probs(out.log_probs, out.stop_probs, ex, ensemble) for out, ex in zip(outputs, exits)])
    exits = torch.cat(exits)
    return probs.argmax(-1), probs, exits, cascade.macs.cumulative_macs()[exits]


@pytest.mark.parametrize("batch_size", sorted(IMAGES_PER_BATCH_SIZE))
@pytest.mark.parametrize("name", list(THRESHOLDS))
def test_early_exit_equals_dense_evaluation(data, dense, batch_size, name):
    cascade, images, _ = data
    images = images[:IMAGES_PER_BATCH_SIZE[batch_size]]
    predictor = CascadePredictor(cascade, **THRESHOLDS[name])
    got = CascadePrediction.cat([predictor(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    preds, probs, exits, macs = pick(cascade, dense[batch_size], predictor.rule)
    assert torch.equal(got.exit_stage, exits)
    assert torch.equal(got.predictions, preds)
    assert torch.equal(got.macs, macs)
    # bitwise, except after a stage ran on a single image (another CPU kernel: last-bit changes)
    torch.testing.assert_close(got.probs, probs, rtol=0, atol=1e-6)
    k = cascade.num_stages
    if name == "all-first":
        assert (exits == 0).all()
    elif name == "all-last":
        assert (exits == k - 1).all()
    elif batch_size == 256:
        assert len(exits.unique()) == k  # the operating point really splits the batch


def test_aggregates_equal_the_evaluator(data):
    cascade, images, targets = data
    predictor = CascadePredictor(cascade, tau=0.5)
    got = predictor(images)
    evaluator = CascadeEvaluator(cascade.macs, EvalConfig(tau=[0.5]))
    with torch.no_grad():
        out = cascade(images)
    evaluator.update(out.log_probs, out.stop_probs, targets, out.stop_log_odds)
    report = evaluator.compute()
    assert float((got.predictions == targets).double().mean()) == report.accuracy
    assert 100 * float(got.macs.mean()) / cascade.macs.reference == pytest.approx(report.cost_pct, rel=1e-12)
    assert (torch.bincount(got.exit_stage, minlength=3).double() / len(images)).tolist() == report.exit_fractions


def test_later_stages_run_only_on_the_images_still_going(data):
    cascade, images, _ = data
    seen = [[] for _ in range(cascade.num_stages)]
    hooks = [clf.register_forward_hook(lambda m, inp, out, t=t: seen[t].append(len(inp[0])))
             for t, clf in enumerate(cascade.classifiers)]
    try:
        got = CascadePredictor(cascade, tau=0.5)(images)
    finally:
        for h in hooks:
            h.remove()
    reached = [int((got.exit_stage >= t).sum()) for t in range(cascade.num_stages)]
    assert [sum(s) for s in seen] == reached and reached[0] > reached[1] > reached[2] > 0
    visited = got.visited()
    assert torch.isneginf(got.stage_log_probs[~visited]).all() and (got.stop_probs[~visited] == 0).all()
    spent = (visited.double() * torch.tensor(cascade.macs.stage, dtype=torch.float64)).sum(1)
    assert torch.equal(got.macs, spent)  # MACs = the stages that actually ran


def test_ensemble_off_gives_the_exiting_classifier(data):
    cascade, images, _ = data
    got = CascadePredictor(cascade, tau=0.5, ensemble=False)(images[:32])
    rows = torch.arange(32)
    torch.testing.assert_close(got.probs, got.stage_log_probs[rows, got.exit_stage].exp(), rtol=0, atol=0)


def test_empty_batch_and_bad_thresholds(data):
    cascade, images, _ = data
    got = CascadePredictor(cascade)(images[:0])
    assert got.predictions.shape == (0,) and got.probs.shape == (0, 10)
    with pytest.raises(ValueError, match="tau must lie in"):
        CascadePredictor(cascade, tau=1.5)
    with pytest.raises(ValueError, match="1 or K-1 = 2 values"):
        CascadePredictor(cascade, theta=[0.0, 1.0, 2.0])
    assert ExitRule.from_tau(0.5, 3).thresholds().tolist() == [0.0, 0.0, float("-inf")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_early_exit_on_gpu_equals_dense(data):
    cascade, images, _ = data
    predictor = CascadePredictor(cascade, tau=0.5, device="cuda")
    got, ref = predictor(images), predictor.dense(images)
    assert torch.equal(got.exit_stage, ref.exit_stage) and torch.equal(got.predictions, ref.predictions)
    cascade.cpu()
