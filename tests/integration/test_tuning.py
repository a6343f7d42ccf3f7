"""`python tuning/sweep_alpha.py`: a real 2 × 1 sweep with budget mode, on Ray Tune, Ray Train, DeepSpeed and MLflow."""

from __future__ import annotations

import csv
import json
import time

import pytest
from mlflow.tracking import MlflowClient

from cascade_dist.sweep.driver import main
from cascade_dist.sweep.pareto import Point, pareto_front


# ---- a real 2 × 1 sweep ---------------------------------------------------------------------------------

def sweep_overrides(shards, storage, joint_epochs: int) -> list[str]:
    """The small sweeps' config: the smallest shards, a 2-stage cascade, one worker per trial."""
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
    argv = ["--config", "demo", "--alphas", "0.001", "0.3", "--policy-lrs", "0.01", "--variants", "ours",
            "--max-concurrent", "2", "--budget", "80", "--name", "t", "--out", str(out), "--held-out-split", "train",
            *sweep_overrides(small_fashion_mnist_shards, storage, joint_epochs=1)]
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


# ---- ASHA: a 4-trial grid of 2 joint epochs, from the sweep above's warm-up ----------------------------

ASHA_JOINT_EPOCHS = 2

@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory, small_fashion_mnist_shards, finished_sweep):
    _, _, first_out = finished_sweep
    warm = json.loads((first_out / "report.json").read_text())["warmup"]["checkpoint"]
    storage = tmp_path_factory.mktemp("asha")
    # grid order: the weak point (α=0.001 with the small policy LR: ~0.24 gain at the first joint epoch,
    # the others ~0.35) comes last, so it reaches ASHA's first rung after two other trials have
    argv = ["--config", "demo", "--alphas", "0.3", "0.001", "--policy-lrs", "0.01", "0.001", "--variants", "ours",
            "--scheduler", "asha", "--grace-period", "1", "--name", "asha", "--out", str(storage / "report"),
            "--held-out-split", "train", *sweep_overrides(small_fashion_mnist_shards, storage, joint_epochs=ASHA_JOINT_EPOCHS),
            f"run.warm_start={warm}"]
    start = time.perf_counter()
    rc = main(argv)
    return rc, storage, time.perf_counter() - start


def test_asha_stops_a_trial_early_and_the_report_keeps_all_four(asha_sweep):
    from ray.tune import ExperimentAnalysis

    from cascade_dist.sweep.pareto import accuracy_at_cost
    from cascade_dist.sweep.scheduling import SCORE, reference_front

    rc, storage, seconds = asha_sweep
    print(f"ASHA sweep: {seconds:.0f} s")
    assert rc == 0
    assert not (storage / "asha-warmup").exists()  # the warm-up was reused, not trained again
    runs = {df["run_name"].iloc[-1]: df for df in ExperimentAnalysis(str(storage / "tune" / "asha-tune-0")).trial_dataframes.values()}
    assert len(runs) == 4
    for df in runs.values():  # every joint epoch reached Tune, in order
        assert list(df["joint_epoch"]) == list(range(1, len(df) + 1))
    epochs = {name: int(df["joint_epoch"].iloc[-1]) for name, df in runs.items()}
    assert min(epochs.values()) < ASHA_JOINT_EPOCHS and max(epochs.values()) == ASHA_JOINT_EPOCHS, epochs

    report = json.loads((storage / "report" / "report.json").read_text())
    trials = {t["run_name"]: t for t in report["trials"]}
    assert set(trials) == set(runs)  # all four, the stopped ones too
    reference = reference_front(report)
    for name, t in trials.items():
        last = runs[name].iloc[-1]
        assert t["joint_epochs"] == epochs[name] and t["stopped_early"] == (epochs[name] < ASHA_JOINT_EPOCHS)
        assert t["accuracy"] == pytest.approx(last["accuracy"]) and t["cost_pct"] == pytest.approx(last["cost_pct"])
        assert last[SCORE] == pytest.approx(last["accuracy"] - accuracy_at_cost(reference, last["cost_pct"]))
    expected = pareto_front([Point(t["cost_pct"], t["accuracy"], t["run_name"]) for t in trials.values()])
    assert [p["label"] for p in report["pareto_front"]] == [p.label for p in expected]
    rows = {r["run_name"]: r for r in csv.DictReader((storage / "report" / "trials.csv").open())}
    assert {n: r["stopped_early"] == "True" for n, r in rows.items()} == {n: t["stopped_early"] for n, t in trials.items()}
    md = (storage / "report" / "report.md").read_text()
    assert "stopped early after" in md and "Scheduler: ASHA" in md and "reused from" in md

    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("sweep")
    for name, t in trials.items():
        (child,) = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
        assert child.info.status == ("KILLED" if t["stopped_early"] else "FINISHED")
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "accuracy"))
        assert steps[-1] == epochs[name]  # the last epoch it ran (epoch 0 was the warm-up)
        assert ("cascade_dist.stopped_early" in child.data.tags) == t["stopped_early"]
