"""The sweep's pieces: Pareto front, budget selection, α proposals, the threshold cascade on
constructed softmaxes, and bad command lines (refused before any work)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cascade_dist.method.exit_table import table_rows
from cascade_dist.method.flops import CascadeMACs
from cascade_dist.sweep.baselines import threshold_point, tune_thresholds
from cascade_dist.sweep.driver import main
from cascade_dist.sweep.pareto import Point, best_under_budget, cost_to_match, pareto_front
from cascade_dist.sweep.trials import Trial, TrialSpec, budget_choice, next_alpha


# ---- Pareto front, budget, Table-2 matching on constructed points ---------------------------------

def test_pareto_front_keeps_exactly_the_non_dominated_points():
    pts = [Point(10, 0.80, "a"), Point(20, 0.85, "b"), Point(15, 0.79, "dominated by a"), Point(30, 0.85, "tie, dearer"),
           Point(40, 0.90, "c"), Point(5, 0.60, "d"), Point(50, 0.89, "dominated by c")]
    front = pareto_front(pts)
    assert [p.label for p in front] == ["d", "a", "b", "c"]
    # brute force: a point is on the front iff no other point dominates it
    for p in pts:
        dominated = any(q.cost_pct <= p.cost_pct and q.accuracy >= p.accuracy and (q.cost_pct, q.accuracy) != (p.cost_pct, p.accuracy)
                        for q in pts)
        assert (p in front) == (not dominated), p.label


def test_pareto_front_edge_cases():
    assert pareto_front([]) == []
    same = [Point(10, 0.5, "x"), Point(10, 0.5, "y")]
    assert len(pareto_front(same)) == 1


def test_budget_and_match_selection():
    pts = [Point(10, 0.80, "a"), Point(20, 0.85, "b"), Point(40, 0.90, "c"), Point(25, 0.84, "e")]
    assert best_under_budget(pts, 30).label == "b"
    assert best_under_budget(pts, 40).label == "c"
    assert best_under_budget(pts, 5) is None
    assert cost_to_match(pts, 0.85).label == "b"
    assert cost_to_match(pts, 0.95) is None
    assert cost_to_match(pts, 0.86, tolerance=0.01).label == "b"


def _trial(run_name, variant, alpha, cost_pct, accuracy, policy_lr=0.01, dual_budget=None) -> Trial:
    return Trial(TrialSpec(variant, alpha, policy_lr, dual_budget), run_name, accuracy, cost_pct)


def test_budget_mode_on_trials_and_alpha_proposals():
    trials = [_trial(f"t{a}", "ours", a, c, acc)
              for a, c, acc in [(0.001, 90, 0.91), (0.01, 60, 0.90), (0.03, 35, 0.88), (0.1, 20, 0.80)]]
    trials.append(_trial("s", "ours_s", 0.01, 30, 0.95))
    assert budget_choice(trials, 50).alpha == 0.03  # Ours (S) is not a candidate
    assert budget_choice(trials, 10) is None
    ours = [t for t in trials if t.variant == "ours"]
    assert next_alpha(ours, 50) == pytest.approx((0.03 * 0.01) ** 0.5)  # between the feasible and infeasible α
    assert next_alpha(ours, 10) == pytest.approx(0.3)  # nothing fits: larger α
    assert next_alpha(ours, 95) == pytest.approx(0.001 / 3)  # everything fits: smaller α
    # a dual-ascent trial is a candidate for the pick, but not a fixed-α point for the bisection
    dual = _trial("d", "ours", 0.04, 45, 0.89, dual_budget=50)
    assert budget_choice([*trials, dual], 50).run_name == "d"
    assert next_alpha([*ours, dual], 50) == next_alpha(ours, 50)


# ---- threshold cascade on constructed softmaxes ------------------------------------------------------

MACS = CascadeMACs(classifier=(20, 100), policy=(3, 0))  # a threshold cascade pays 20 % or 120 %, no policy


def _table(conf1, correct1, correct2):
    """Two stages; stage 1's max prob is `conf1`, correctness given per stage (as an exit table)."""
    n, c = len(conf1), 4
    probs = np.full((n, 2, c), 1e-9)
    for i, (p, k1, k2) in enumerate(zip(conf1, correct1, correct2)):
        top1 = 0 if k1 else 1
        probs[i, 0, top1] = p
        probs[i, 0, [j for j in range(c) if j != top1]] = (1 - p) / (c - 1)
        probs[i, 1, 0 if k2 else 2] = 1.0
    log_probs = torch.tensor(probs, dtype=torch.float64).log().float()
    zeros = torch.zeros(n, 2)
    return table_rows(log_probs, zeros, zeros, torch.zeros(n, dtype=torch.long), scores=("max_softmax",))


def logit(p: float) -> float:
    return -math.inf if p <= 0 else math.inf if p >= 1 else math.log(p / (1 - p))


def test_threshold_point_exits_at_first_confident_stage():
    table = _table([0.9, 0.6, 0.4, 0.95], [True, False, True, True], [True, True, False, True])
    points = [threshold_point(table, MACS, [logit(t)]) for t in (0.0, 0.5, 0.92, 1.1)]
    # θ=0: all exit at stage 1 (3/4 right, cost 20); θ=0.5: 3 exit (0.9 ✓, 0.6 ✗, 0.95 ✓), 0.4 goes on (✗)
    assert [a for a, _ in points] == pytest.approx([0.75, 0.5, 0.75, 0.75])
    assert [c for _, c in points] == pytest.approx([20, 45, 95, 120])  # the policies' MACs are not counted


def test_tune_thresholds_calibrates_each_budget_on_held_out():
    held = _table([0.9, 0.6, 0.4, 0.95], [True, False, True, True], [True, True, True, True])
    test = _table([0.99, 0.7, 0.3, 0.2], [True, False, False, True], [True, True, True, False])
    rows = tune_thresholds(held, test, MACS, budgets=[10, 20, 50, 100, 120])
    by_budget = {r["budget_pct"]: r for r in rows}
    assert 10 not in by_budget  # below the first stage's cost: unreachable
    assert by_budget[20]["val_cost_pct"] == 20 and by_budget[20]["val_accuracy"] == pytest.approx(0.75)
    for r in rows:
        assert r["val_cost_pct"] <= r["budget_pct"] + 1e-9
    # at 50 % the largest θ within it sends one image on (the 0.4 one, right at both stages): 45 %, 0.75
    assert by_budget[50]["val_cost_pct"] == pytest.approx(45) and by_budget[50]["val_accuracy"] == pytest.approx(0.75)
    # at 100 %, θ in (0.9, 0.95] sends all but the 0.95 image on: 95 %, all right; all to stage 2 (120 %) is over it
    assert by_budget[100]["val_cost_pct"] == pytest.approx(95) and by_budget[100]["val_accuracy"] == pytest.approx(1.0)
    assert 0.9 < by_budget[100]["threshold"] < 0.95
    # its test numbers are measured at that θ on the test table: 0.99 stops (✓), 0.7 / 0.3 / 0.2 go on (✓ ✓ ✗)
    acc, cost = threshold_point(test, MACS, [by_budget[100]["theta"]])
    assert (by_budget[100]["accuracy"], by_budget[100]["cost_pct"]) == (acc, cost) == (pytest.approx(0.75), pytest.approx(95))


# ---- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--alphas", "-0.1"], "--alphas: every α must be a finite number >= 0"),
    (["--budget", "150"], "--budget: a cost in % of the largest classifier, in (0, 100]"),
    (["--max-concurrent", "0"], "--max-concurrent: must be >= 1"),
    (["--policy-lrs", "0"], "--policy-lrs: every policy LR must be > 0"),
    (["objective.estimator=nope"], "estimator"),
    (["--held-out-split", "val"], "--held-out-split: no split 'val' under"),  # no silent fallback to train
    (["--scheduler", "foo"], "--scheduler: expected one of fifo, asha, got 'foo'"),
    (["--scheduler", "asha", "--grace-period", "0"], "--grace-period: joint epochs before ASHA may stop a trial"),
    (["--scheduler", "asha", "--grace-period", "2"], "--grace-period: ASHA stops trials after a joint epoch before "
                                                     "their last, so it must be < optim.joint_epochs=1, got 2"),
    (["--reduction-factor", "3"], "--reduction-factor: only with --scheduler asha"),
    (["run.warm_start=/nonexistent/ckpt"], "run.warm_start: no DeepSpeed checkpoint"),
])
def test_bad_input_is_a_clear_error_before_any_work(argv, message, small_fashion_mnist_shards, tmp_path, capsys):
    rc = main(["--config", "demo", "--held-out-split", "train", *argv, f"data.shards={small_fashion_mnist_shards}",
               f"run.storage_path={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []  # no run, no MLflow store: nothing started


@pytest.mark.parametrize("optim, problem", [
    ("{joint_epochs: 2, warmup_epochs: 1}", "has optim.joint_epochs=2, the sweep needs 0"),
    # a warm-up whose cosine spanned 1 + 1 epochs, for a sweep of 1 + 2: the LRs would not continue
    ("{joint_epochs: 0, warmup_epochs: 1, schedule_epochs: 2}", "has optim.schedule_epochs=2, the sweep needs 3"),
])
def test_a_warm_start_that_is_not_this_sweeps_warm_up_is_refused(optim, problem, small_fashion_mnist_shards, tmp_path,
                                                                 capsys):
    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    (ckpt / "config.yaml").write_text(f"optim: {optim}\nmodel: {{classifiers: [preact_resnet8, preact_resnet20]}}\n")
    storage = tmp_path / "runs"
    rc = main(["--config", "demo", "--held-out-split", "train", f"data.shards={small_fashion_mnist_shards}",
               "optim.warmup_epochs=1", "optim.joint_epochs=2", f"run.storage_path={storage}", f"run.warm_start={ckpt}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"run.warm_start: {ckpt / 'config.yaml'} {problem}" in err[0]
    assert not storage.exists()


def test_a_reused_warm_up_is_not_trained_again_and_the_report_says_so(tmp_path, monkeypatch):
    from cascade_dist.runtime import launch
    from cascade_dist.runtime.config import load_config
    from cascade_dist.sweep import driver
    from cascade_dist.sweep.report import write_report

    ckpt = tmp_path / "warm" / "checkpoint_0"
    cfg = load_config("demo", [f"run.storage_path={tmp_path / 'runs'}", f"run.warm_start={ckpt}"], check_data=False)
    args = driver.parse_args(["--alphas", "0.1", "0.2", "--variants", "ours", "--name", "s"])
    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("a warm-up was trained"))
    warm, warmup = driver.shared_warmup(driver.Sweep(cfg, args, "cmd", None, "0", "parent", 1, [0.01]))
    assert not warm.trained and str(warm.checkpoint_path) == str(ckpt)
    assert warmup["reused"] and warmup["shared"] and warmup["saved_s"] == 0 and warmup["trials"] == 2
    assert not (tmp_path / "runs").exists()
    static = [{"name": "a", "cost_pct": 40.0, "accuracy": 0.7}, {"name": "b", "cost_pct": 100.0, "accuracy": 0.8}]
    paths = write_report(tmp_path / "report", {
        "command": "cmd", "wall_clock_s": 1.0, "classifiers": ["a", "b"], "static": static, "threshold_cascade": [],
        "trials": [_trial("s-ours", "ours", 0.1, 50.0, 0.75)], "warmup": warmup,
        "notes": driver._notes(cfg, args, [], [])})
    md = paths["md"].read_text()
    assert f"Shared warm-up: reused from {ckpt} (run.warm_start), not trained by this sweep." in md
    assert f"The shared warm-up was reused from run.warm_start ({ckpt})" in md and "time saved" not in md
