"""`python tuning/sweep_alpha.py`: Pareto front, threshold tuning, budget mode, and a real 2 × 1 sweep."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cascade_dist.baselines import StageOutputs, threshold_operating_points, tune_thresholds
from cascade_dist.pareto import Point, best_under_budget, cost_to_match, pareto_front
from cascade_dist.sweep import budget_choice, main, next_alpha

REPO = Path(__file__).resolve().parents[1]


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


def test_budget_mode_on_trials_and_alpha_proposals():
    trials = [{"run_name": f"t{a}", "variant": "ours", "alpha": a, "policy_lr": 0.01, "cost_pct": c, "accuracy": acc}
              for a, c, acc in [(0.001, 90, 0.91), (0.01, 60, 0.90), (0.03, 35, 0.88), (0.1, 20, 0.80)]]
    trials.append({"run_name": "s", "variant": "ours_s", "alpha": 0.01, "policy_lr": 0.01, "cost_pct": 30, "accuracy": 0.95})
    assert budget_choice(trials, 50)["alpha"] == 0.03  # Ours (S) is not a candidate
    assert budget_choice(trials, 10) is None
    ours = [t for t in trials if t["variant"] == "ours"]
    assert next_alpha(ours, 50) == pytest.approx((0.03 * 0.01) ** 0.5)  # between the feasible and infeasible α
    assert next_alpha(ours, 10) == pytest.approx(0.3)  # nothing fits: larger α
    assert next_alpha(ours, 95) == pytest.approx(0.001 / 3)  # everything fits: smaller α
    # a dual-ascent trial is a candidate for the pick, but not a fixed-α point for the bisection
    dual = {"run_name": "d", "variant": "ours", "alpha": 0.04, "dual_budget": 50, "policy_lr": 0.01, "cost_pct": 45, "accuracy": 0.89}
    assert budget_choice([*trials, dual], 50)["run_name"] == "d"
    assert next_alpha([*ours, dual], 50) == next_alpha(ours, 50)


# ---- threshold cascade on constructed softmaxes ------------------------------------------------------

def _outputs(conf1, correct1, correct2):
    """Two stages; stage 1's max prob is `conf1`, correctness given per stage."""
    n, c = len(conf1), 4
    probs = np.full((n, 2, c), 0.0)
    labels = np.zeros(n, dtype=int)
    for i, (p, k1, k2) in enumerate(zip(conf1, correct1, correct2)):
        top1 = 0 if k1 else 1
        probs[i, 0, top1] = p
        probs[i, 0, [j for j in range(c) if j != top1]] = (1 - p) / (c - 1)
        probs[i, 1, 0 if k2 else 2] = 1.0
    return StageOutputs(probs, labels)


def test_threshold_operating_points_exits_at_first_confident_stage():
    out = _outputs([0.9, 0.6, 0.4, 0.95], [True, False, True, True], [True, True, False, True])
    acc, cost = threshold_operating_points(out.max_prob, out.correct, np.array([20.0, 120.0]), np.array([0.0, 0.5, 0.92, 1.1]))
    # θ=0: all exit at stage 1 (3/4 right, cost 20); θ=0.5: 3 exit (0.9 ✓, 0.6 ✗, 0.95 ✓), 0.4 goes on (✗)
    assert acc.tolist() == pytest.approx([0.75, 0.5, 0.75, 0.75])
    assert cost.tolist() == pytest.approx([20, 45, 95, 120])


def test_tune_thresholds_picks_best_held_out_accuracy_within_each_budget():
    held = _outputs([0.9, 0.6, 0.4, 0.95], [True, False, True, True], [True, True, True, True])
    test = _outputs([0.99, 0.7, 0.3, 0.2], [True, False, False, True], [True, True, True, False])
    rows = tune_thresholds(held, test, [20.0, 120.0], budgets=[10, 20, 50, 100, 120])
    by_budget = {r["budget_pct"]: r for r in rows}
    assert 10 not in by_budget  # below the first stage's cost: unreachable
    assert by_budget[20]["threshold"] == 0.0 and by_budget[20]["val_cost_pct"] == 20
    for r in rows:
        assert r["val_cost_pct"] <= r["budget_pct"] + 1e-9
    # at 100 %, θ in (0.6, 0.9] sends only the 0.6 and 0.4 images on: held-out 1.0 accuracy at 70 %
    # (θ=0: 0.75 at 20 %; all to stage 2: 1.0 at 120 %, over budget)
    assert by_budget[100]["val_accuracy"] == pytest.approx(1.0) and by_budget[100]["val_cost_pct"] == pytest.approx(70)
    # its test numbers are measured at that θ on the test outputs
    theta = by_budget[100]["threshold"]
    acc, cost = threshold_operating_points(test.max_prob, test.correct, np.array([20.0, 120.0]), np.array([theta]))
    assert by_budget[100]["accuracy"] == pytest.approx(acc[0]) and by_budget[100]["cost_pct"] == pytest.approx(cost[0])


# ---- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--alphas", "-0.1"], "--alphas: every α must be a finite number >= 0"),
    (["--budget", "150"], "--budget: a cost in % of the largest classifier, in (0, 100]"),
    (["--max-concurrent", "0"], "--max-concurrent: must be >= 1"),
    (["--policy-lrs", "0"], "--policy-lrs: every policy LR must be > 0"),
    (["objective.estimator=nope"], "estimator"),
])
def test_bad_input_is_a_clear_error_before_any_work(argv, message, small_fashion_mnist_shards, tmp_path, capsys):
    rc = main(["--config", "demo", *argv, f"data.shards={small_fashion_mnist_shards}", f"run.storage_path={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []  # no run, no MLflow store: nothing started


def test_non_numeric_alpha_from_the_command_line():
    proc = subprocess.run([sys.executable, "tuning/sweep_alpha.py", "--alphas", "big"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "--alphas: invalid float value: 'big'" in proc.stderr


# ---- a real 2 × 1 sweep ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, small_fashion_mnist_shards, ray_local):
    storage = tmp_path_factory.mktemp("sweep")
    out = storage / "report"
    overrides = {
        "data.shards": small_fashion_mnist_shards, "data.batch_size": 64, "data.eval_batch_size": 250,
        "model.classifiers": "[preact_resnet8,preact_resnet14]", "objective.budget": "null",
        "optim.warmup_epochs": 1, "optim.joint_epochs": 1,
        "run.num_workers": 1, "run.storage_path": storage, "run.progress": "false",
        "tracking.tracking_uri": f"sqlite:///{storage}/mlflow.db", "tracking.experiment": "sweep",
        "tracking.log_model": "false",
    }
    argv = ["--config", "demo", "--alphas", "0.001", "0.3", "--policy-lrs", "0.01", "--variants", "ours",
            "--max-concurrent", "2", "--budget", "80", "--name", "t", "--out", str(out),
            *[f"{k}={v}" for k, v in overrides.items()]]
    rc = main(argv)
    return rc, storage, out


def test_sweep_trials_finish_and_nest_under_one_parent(finished_sweep):
    rc, storage, out = finished_sweep
    assert rc == 0
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("sweep")
    parents = client.search_runs([exp.experiment_id], "tags.`cascade_dist.role` = 'sweep'")
    assert len(parents) == 1
    pid = parents[0].info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{pid}'")
    assert len(children) == 3  # the 2 × 1 grid, and budget mode's dual-ascent trial
    grid = [c for c in children if c.data.params["objective.budget"] == "None"]
    assert sorted(c.data.params["objective.alpha"] for c in grid) == ["0.001", "0.3"]
    (dual,) = [c for c in children if c.data.params["objective.budget"] != "None"]
    assert dual.data.params["objective.budget"] == "80.0"
    assert dual.data.metrics["train_alpha_end"] != float(dual.data.params["objective.alpha"])  # α moved
    for c in children:
        assert c.data.params["optim.policy_lr"] == "0.01"
        assert c.data.params["run.warm_start"] not in ("None", "")  # started from the shared warm-up
        steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, "accuracy"))
        assert steps == [1]  # the joint epoch only: epoch 0 was the shared warm-up
        assert {"cost_pct", "exit_frac_stage0", "train_baseline"} <= set(c.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(pid)}
    assert {"report.md", "report.json", "trials.csv", "tradeoff.png"} <= artifacts
    assert parents[0].data.metrics["n_trials"] == 3


def test_sweep_report_pareto_and_baselines_are_correct(finished_sweep):
    rc, storage, out = finished_sweep
    report = json.loads((out / "report.json").read_text())
    trials = report["trials"]
    assert len(trials) == 3 and {t["alpha"] for t in trials if t["dual_budget"] is None} == {0.001, 0.3}
    # the Pareto artifact is exactly the non-dominated trials
    expected = pareto_front([Point(t["cost_pct"], t["accuracy"], t["run_name"]) for t in trials])
    assert [p["label"] for p in report["pareto_front"]] == [p.label for p in expected]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert {r["run_name"]: r["on_pareto_front"] == "True" for r in rows} == {t["run_name"]: t["run_name"] in {p.label for p in expected} for t in trials}
    # a larger α never costs more here (it weights cost more)
    by_alpha = {t["alpha"]: t for t in trials if t["dual_budget"] is None}
    assert by_alpha[0.3]["cost_pct"] <= by_alpha[0.001]["cost_pct"] + 1e-6
    # baselines: both static classifiers, and a threshold curve from the first stage's cost to 100 %
    assert [s["name"] for s in report["static"]] == ["preact_resnet8", "preact_resnet14"]
    assert report["static"][1]["cost_pct"] == pytest.approx(100)
    assert report["held_out_split"].startswith("train")  # the small shards have no val split
    th = report["threshold_cascade"]
    assert len(th) >= 5 and all(r["val_cost_pct"] <= r["budget_pct"] + 1e-9 for r in th)
    assert all(0 <= r["accuracy"] <= 1 for r in th)
    assert {m["method"] for m in report["matches"]} == {"Ours", "Confidence-threshold cascade"}
    assert report["warmup"]["shared"] and report["warmup"]["saved_s"] > 0
    assert report["budget"]["budget_pct"] == 80 and "dual-ascent" in report["budget"]["method"]
    chosen = report["budget"]["chosen"]
    assert chosen is None or (chosen["cost_pct"] <= 80 and chosen["accuracy"] == max(
        t["accuracy"] for t in trials if t["variant"] == "ours" and t["cost_pct"] <= 80))
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    assert lines[5].startswith("python tuning/sweep_alpha.py --config demo") and lines[8].startswith("Wall-clock:")
    assert "Table 2" in md and len([l for l in lines if l.startswith("| confidence-threshold")]) == len({r["threshold"] for r in th})
    assert (out / "tradeoff.png").stat().st_size > 10_000
