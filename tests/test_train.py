"""`python -m cascade_dist.train`: configs, 2 DeepSpeed workers under Ray Train, resume, faults, MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cascade_dist.config import ConfigError, load_config, shipped_configs
from cascade_dist.train import main, run
from cascade_dist.worker import FAULT_MARKER

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(shards: Path, storage: Path, name: str, **extra) -> list[str]:
    base = {
        "data.shards": shards,
        "data.batch_size": 64,
        "data.eval_batch_size": 250,
        "model.classifiers": "[preact_resnet8,preact_resnet14]",
        "objective.budget": 80,  # budget mode: α by dual ascent (ResNet-8 alone costs 46 % of ResNet-14)
        "optim.warmup_epochs": 1,
        "optim.joint_epochs": 1,
        "run.storage_path": storage,
        "run.name": name,
        "run.progress": "false",
        "tracking.tracking_uri": f"sqlite:///{storage}/mlflow.db",
        "tracking.experiment": name,
        **extra,
    }
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_configs_load(name):
    cfg = load_config(name, check_data=False)
    assert len(cfg.model.classifiers) >= 2
    assert cfg.run.name


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.classifiers=[preact_resnet8,resnet9000]", "model.classifiers[1]: unknown classifier 'resnet9000'"),
        ("model.classifiers=[preact_resnet8]", "model.classifiers: a cascade needs K >= 2"),
        ("objective.alpha=-0.1", "objective.alpha: must be >= 0, got -0.1"),
        ("model.num_classes=7", "model.num_classes: 7 but"),
        ("data.shards=/nonexistent/shards", "data.shards: shard directory not found: /nonexistent/shards"),
        ("run.zero_stage=3", "run.zero_stage: expected 0, 1 or 2"),
        ("optim.policy_lr=fast", "optim.policy_lr"),
        ("eval.tau=[1.5]", "eval.tau"),
    ],
)
def test_bad_config_is_one_line_and_exit_2_before_any_worker(override, key, small_fashion_mnist_shards, capsys):
    import ray

    rc = main(["--config", "demo", f"data.shards={small_fashion_mnist_shards}", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and key in err[0], err
    assert not ray.is_initialized()


def test_bad_config_exit_code_from_the_command_line(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cascade_dist.train", f"data.shards={tmp_path}/none", "objective.alpha=-1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "config error" in line]
    assert len(lines) == 2 and "objective.alpha" in lines[0] and "data.shards" in lines[1]
    assert time.perf_counter() - start < 60


def test_unknown_config_name_lists_shipped():
    with pytest.raises(ConfigError, match="unknown config 'nope'; shipped: cifar10, cifar100, demo"):
        load_config("nope")


def read_metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_fashion_mnist_shards, ray_local):
    storage = tmp_path_factory.mktemp("runs")
    cfg = load_config("demo", tiny_overrides(small_fashion_mnist_shards, storage, "integration"))
    return cfg, run(cfg), storage


def test_two_workers_train_with_one_global_baseline(finished_run):
    cfg, result, storage = finished_run
    assert result.report is not None and result.report.accuracy > 0.15  # chance: 0.10
    ckpt = Path(result.checkpoint_path)
    steps = {r: json.loads((ckpt / f"steps_rank{r}_epoch1.json").read_text()) for r in (0, 1)}
    assert len(steps[0]) == len(steps[1]) > 3
    assert [s["baseline"] for s in steps[0]] == [s["baseline"] for s in steps[1]]
    assert [s["alpha"] for s in steps[0]] == [s["alpha"] for s in steps[1]]  # budget mode: one global α
    assert len({s["alpha"] for s in steps[0]}) > 1  # ...that dual ascent moves
    # ...while each rank's own rewards differ (different shards): the equality is the all-reduce
    assert [s["reward"] for s in steps[0]] != [s["reward"] for s in steps[1]]
    assert (ckpt / "checkpoint" / "mp_rank_00_model_states.pt").is_file()


def test_checkpoint_holds_the_model_the_workers_evaluated(finished_run):
    """BatchNorm statistics are averaged over the ranks before evaluation, so the checkpoint reloaded
    in one process scores exactly what report.json says the two workers measured."""
    from cascade_dist.checkpoint import load_cascade
    from cascade_dist.data import make_loader
    from cascade_dist.evaluate import evaluate

    cfg, result, storage = finished_run
    ckpt = Path(result.checkpoint_path)
    model, _, _ = load_cascade(ckpt)  # the config.yaml written into the checkpoint rebuilds it
    loader = make_loader(cfg.data.shards, "test", 250, backend="torch", train=False)
    report = evaluate(model, loader, model.macs, cfg.eval)
    assert report.num_samples == result.report.num_samples
    assert report.static_accuracy == result.report.static_accuracy
    assert report.accuracy == result.report.accuracy and report.exit_fractions == result.report.exit_fractions
    assert (ckpt / "config.yaml").is_file()


def test_metrics_params_and_artifacts_land_in_mlflow(finished_run):
    cfg, result, storage = finished_run
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("integration")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run_ = runs[0]
    assert run_.data.params["objective.alpha"] == str(cfg.objective.alpha)
    assert run_.data.params["model.classifiers"] == "['preact_resnet8', 'preact_resnet14']"
    assert read_metric_steps(client, run_.info.run_id, "accuracy") == [0, 1]
    assert run_.data.metrics["accuracy"] == pytest.approx(result.report.accuracy)
    assert {"exit_frac_stage0", "cost_pct", "macs_per_image", "train_baseline"} <= set(run_.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"config.yaml", "report.json", "summary.txt", "tradeoff.png", "accuracy_matrix.png", "exit_histogram.png"} <= artifacts
    mlflow.set_tracking_uri(f"sqlite:///{storage}/mlflow.db")
    model = mlflow.pytorch.load_model(f"runs:/{run_.info.run_id}/model")  # pt2: nothing is unpickled
    import torch

    out = model(torch.zeros(3, 1, 28, 28))
    assert out.log_probs.shape == (3, 2, 10)


def test_resubmitting_a_run_resumes_it(finished_run, small_fashion_mnist_shards):
    cfg, first, storage = finished_run
    more = load_config("demo", tiny_overrides(small_fashion_mnist_shards, storage, "integration", **{"optim.joint_epochs": 2}))
    result = run(more)
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("integration").experiment_id])
    assert len(runs) == 1  # the same MLflow run continues
    assert read_metric_steps(client, runs[0].info.run_id, "accuracy") == [0, 1, 2]  # epoch 2 only was trained
    assert result.checkpoint_path != first.checkpoint_path
    # budget mode's α carries over: the resumed epoch starts where dual ascent left it
    resumed = json.loads((Path(result.checkpoint_path) / "steps_rank0_epoch2.json").read_text())
    assert resumed[0]["alpha"] == pytest.approx(first.metrics["train_alpha_end"])


def test_killed_worker_resumes_from_last_checkpoint(tmp_path, small_fashion_mnist_shards, ray_local):
    extra = {"run.fail_at_epoch": 0, "run.max_failures": 1}
    cfg = load_config("demo", tiny_overrides(small_fashion_mnist_shards, tmp_path, "faulty", **extra))
    result = run(cfg)
    assert (tmp_path / "faulty" / FAULT_MARKER).is_file()  # the worker really died
    assert result.report is not None
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("faulty").experiment_id])
    assert len(runs) == 1
    # epoch 0 was checkpointed before the kill and not trained again; epoch 1 ran after the restart
    assert read_metric_steps(client, runs[0].info.run_id, "accuracy") == [0, 1]
