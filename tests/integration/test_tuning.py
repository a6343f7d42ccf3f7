"""`python tuning/sweep_alpha.py`: one real 2 × 2 sweep under ASHA with budget mode, on Ray Tune, Ray Train,
DeepSpeed and MLflow."""

from __future__ import annotations

import csv
import json
import time

import pytest
from mlflow.tracking import MlflowClient

from cascade_dist.sweep.driver import main
from cascade_dist.sweep.pareto import Point, pareto_front


# ---- a real 2 × 2 sweep: ASHA over the grid, then budget mode's dual-ascent trials ---------------------

JOINT_EPOCHS = 2
ALPHAS, POLICY_LRS = (0.3, 0.001), (0.01, 0.001)


def sweep_overrides(shards, storage, joint_epochs: int) -> list[str]:
    """The small sweep's config: the smallest shards, a 2-stage cascade, one worker per trial."""
    overrides = {
        "data.shards": shards, "data.batch_size": 64, "data.eval_batch_size": 250,
        "model.classifiers": "[preact_resnet8,preact_resnet14]", "objective.budget": "null",
        "optim.warmup_epochs": 1, "optim.joint_epochs": joint_epochs,
        "run.num_workers": 1, "run.storage_path": storage, "run.progress": "false",
        "tracking.tracking_uri": f"sqlite:///{storage}/mlflow.db", "tracking.experiment": "sweep",
        "tracking.log_model": "false",
    }
    return [f"{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, small_fashion_mnist_shards, ray_local):
    storage = tmp_path_factory.mktemp("sweep")
    out = storage / "report"
    # grid order: the weak points (α=0.001: ~0.19 gain at the first joint epoch, α=0.3 ~0.31) come last, so
    # they reach ASHA's first rung after the two others have and stop; of those two, the one that arrives
    # first always goes on (which one depends on timing: the checks hold either way)
    argv = ["--config", "demo", "--alphas", *map(str, ALPHAS), "--policy-lrs", *map(str, POLICY_LRS),
            "--variants", "ours", "--scheduler", "asha", "--grace-period", "1", "--max-concurrent", "2",
            "--budget", "80", "--name", "t", "--out", str(out), "--held-out-split", "train",
            *sweep_overrides(small_fashion_mnist_shards, storage, joint_epochs=JOINT_EPOCHS)]
    start = time.perf_counter()
    rc = main(argv)
    return rc, storage, out, time.perf_counter() - start


def tune_runs(storage, experiment: str) -> dict:
    """Each trial of one Tune round (`<name>-tune-<round>`): its run name → its per-epoch results."""
    from ray.tune import ExperimentAnalysis

    dfs = ExperimentAnalysis(str(storage / "tune" / experiment)).trial_dataframes.values()
    return {df["run_name"].iloc[-1]: df for df in dfs}


def test_sweep_trials_finish_and_nest_under_one_parent(finished_sweep):
    rc, storage, out, _ = finished_sweep
    assert rc == 0
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("sweep")
    parents = client.search_runs([exp.experiment_id], "tags.`cascade_dist.role` = 'sweep'")
    assert len(parents) == 1
    pid = parents[0].info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{pid}'")
    assert len(children) == 6  # the 2 × 2 grid, and budget mode's dual-ascent trial per policy LR
    grid = [c for c in children if c.data.params["objective.budget"] == "None"]
    assert sorted((c.data.params["objective.alpha"], c.data.params["optim.policy_lr"]) for c in grid) == sorted(
        (str(a), str(lr)) for a in ALPHAS for lr in POLICY_LRS)
    dual = [c for c in children if c.data.params["objective.budget"] != "None"]
    assert sorted(c.data.params["optim.policy_lr"] for c in dual) == sorted(map(str, POLICY_LRS))
    for c in dual:
        assert c.data.params["objective.budget"] == "80.0"
        assert c.data.metrics["train_alpha_end"] != float(c.data.params["objective.alpha"])  # α moved
    joint = {t["run_name"]: t["joint_epochs"] for t in json.loads((out / "report.json").read_text())["trials"]}
    for c in children:
        assert c.data.params["run.warm_start"] not in ("None", "")  # started from the shared warm-up
        steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, "accuracy"))
        assert steps == list(range(1, joint[c.info.run_name] + 1))  # each joint epoch once: epoch 0 was the warm-up
        assert {"cost_pct", "exit_frac_stage0", "train_baseline"} <= set(c.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(pid)}
    assert {"report.md", "report.json", "trials.csv", "tradeoff.png"} <= artifacts
    assert parents[0].data.metrics["n_trials"] == 6


def test_sweep_report_pareto_and_baselines_are_correct(finished_sweep):
    rc, storage, out, _ = finished_sweep
    report = json.loads((out / "report.json").read_text())
    trials = report["trials"]
    grid = {(t["alpha"], t["policy_lr"]): t for t in trials if t["dual_budget"] is None}
    assert len(trials) == 6 and set(grid) == {(a, lr) for a in ALPHAS for lr in POLICY_LRS}
    # the Pareto artifact is exactly the non-dominated trials
    expected = pareto_front([Point(t["cost_pct"], t["accuracy"], t["run_name"]) for t in trials])
    assert [p["label"] for p in report["pareto_front"]] == [p.label for p in expected]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert {r["run_name"]: r["on_pareto_front"] == "True" for r in rows} == {t["run_name"]: t["run_name"] in {p.label for p in expected} for t in trials}
    # a larger α never costs more here (it weights cost more), between trials of one policy LR after the
    # same number of joint epochs: their reported points, and each joint epoch both reached (ASHA may have
    # stopped either one after its first)
    runs, compared = tune_runs(storage, "t-tune-0"), []
    for lr in POLICY_LRS:
        big, small = grid[max(ALPHAS), lr], grid[min(ALPHAS), lr]
        if big["joint_epochs"] == small["joint_epochs"]:
            assert big["cost_pct"] <= small["cost_pct"] + 1e-6, lr
        costs = [runs[t["run_name"]].set_index("joint_epoch")["cost_pct"] for t in (big, small)]
        for epoch in costs[0].index.intersection(costs[1].index):
            assert costs[0][epoch] <= costs[1][epoch] + 1e-6, (lr, epoch)
            compared.append(lr)
    assert set(compared) == set(POLICY_LRS)  # the check ran for every policy LR
    # baselines: both static classifiers, and a threshold curve from the first stage's cost to 100 %
    assert [s["name"] for s in report["static"]] == ["preact_resnet8", "preact_resnet14"]
    assert report["static"][1]["cost_pct"] == pytest.approx(100)
    assert report["held_out_split"].startswith("train (chosen")  # the small shards have no val split
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


def test_asha_stops_a_trial_early_and_the_report_keeps_all_of_them(finished_sweep):
    from cascade_dist.sweep.pareto import accuracy_at_cost
    from cascade_dist.sweep.scheduling import SCORE, reference_front

    rc, storage, out, seconds = finished_sweep
    print(f"sweep: {seconds:.0f} s")
    assert rc == 0
    # ASHA schedules the grid (Tune round 0); budget mode's trials are a second round, FIFO, run to their end
    assert sorted(p.name for p in (storage / "tune").iterdir()) == ["t-tune-0", "t-tune-1"]
    grid, dual = tune_runs(storage, "t-tune-0"), tune_runs(storage, "t-tune-1")
    assert len(grid) == 4 and len(dual) == len(POLICY_LRS)
    runs = {**grid, **dual}
    for df in runs.values():  # every joint epoch reached Tune, in order
        assert list(df["joint_epoch"]) == list(range(1, len(df) + 1))
    epochs = {name: int(df["joint_epoch"].iloc[-1]) for name, df in runs.items()}
    grid_epochs = [epochs[name] for name in grid]
    assert min(grid_epochs) < JOINT_EPOCHS and max(grid_epochs) == JOINT_EPOCHS, epochs
    assert all(epochs[name] == JOINT_EPOCHS for name in dual), epochs

    report = json.loads((out / "report.json").read_text())
    trials = {t["run_name"]: t for t in report["trials"]}
    assert set(trials) == set(runs)  # all six, the stopped ones too
    reference = reference_front(report)
    for name, t in trials.items():
        last = runs[name].iloc[-1]
        assert t["joint_epochs"] == epochs[name] and t["stopped_early"] == (epochs[name] < JOINT_EPOCHS)
        assert t["accuracy"] == pytest.approx(last["accuracy"]) and t["cost_pct"] == pytest.approx(last["cost_pct"])
        assert last[SCORE] == pytest.approx(last["accuracy"] - accuracy_at_cost(reference, last["cost_pct"]))
    expected = pareto_front([Point(t["cost_pct"], t["accuracy"], t["run_name"]) for t in trials.values()])
    assert [p["label"] for p in report["pareto_front"]] == [p.label for p in expected]
    rows = {r["run_name"]: r for r in csv.DictReader((out / "trials.csv").open())}
    assert {n: r["stopped_early"] == "True" for n, r in rows.items()} == {n: t["stopped_early"] for n, t in trials.items()}
    assert {n: int(r["joint_epochs"]) for n, r in rows.items()} == epochs
    md = (out / "report.md").read_text()
    assert "stopped early after" in md and "Scheduler: ASHA" in md

    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("sweep")
    for name, t in trials.items():
        (child,) = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
        assert child.info.status == ("KILLED" if t["stopped_early"] else "FINISHED")
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "accuracy"))
        assert steps[-1] == epochs[name]  # the last epoch it ran (epoch 0 was the warm-up)
        assert ("cascade_dist.stopped_early" in child.data.tags) == t["stopped_early"]
