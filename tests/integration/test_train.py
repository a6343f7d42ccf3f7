"""`python -m cascade_dist.train`: configs, 2 DeepSpeed workers under Ray Train, resume, faults, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cascade_dist.runtime.config import load_config
from cascade_dist.runtime.launch import run
from cascade_dist.runtime.worker import FAULT_MARKER

REPO = Path(__file__).resolve().parents[2]


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


def read_metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


KILLED_MID_EPOCH = {"run.checkpoint_every_steps": 2, "run.fail_at_epoch": 1, "run.fail_at_step": 3,
                    "run.max_failures": 1, "run.log_sample_keys": "true"}
"""The module's run: step checkpoints every 2 steps, and its last rank dies once after step 3 of the
joint epoch (every test below holds for a run that lost a worker mid-epoch)."""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_fashion_mnist_shards, ray_local):
    storage = tmp_path_factory.mktemp("runs")
    cfg = load_config("demo", tiny_overrides(small_fashion_mnist_shards, storage, "integration", **KILLED_MID_EPOCH))
    return cfg, run(cfg), storage


def test_two_workers_train_with_one_global_baseline(finished_run):
    cfg, result, storage = finished_run
    assert result.report is not None and result.report.accuracy > 0.15  # chance: 0.10
    ckpt = Path(result.checkpoint_path)
    steps = {r: json.loads((ckpt / f"steps_rank{r}_epoch1.json").read_text()) for r in (0, 1)}
    assert len(steps[0]) == len(steps[1]) > 3
    assert [s["baseline"] for s in steps[0]] == [s["baseline"] for s in steps[1]]
    # REINFORCE with the optimal baseline: b is non-zero, and it is the all-reduced one: a convex
    # combination of the two ranks' own-batch baselines, different from at least one of them
    assert cfg.objective.estimator == "reinforce" and cfg.objective.baseline == "optimal"
    assert all(s["baseline"] != 0 for s in steps[0])
    for s0, s1 in zip(steps[0], steps[1]):
        lo, hi = sorted((s0["baseline_local"], s1["baseline_local"]))
        assert lo - 1e-6 <= s0["baseline"] <= hi + 1e-6
        assert s0["baseline"] != s0["baseline_local"] or s1["baseline"] != s1["baseline_local"]
    assert [s["alpha"] for s in steps[0]] == [s["alpha"] for s in steps[1]]  # budget mode: one global α
    assert len({s["alpha"] for s in steps[0]}) > 1  # ...that dual ascent moves
    # ...while each rank's own rewards differ (different shards): the equality is the all-reduce
    assert [s["reward"] for s in steps[0]] != [s["reward"] for s in steps[1]]
    assert (ckpt / "checkpoint" / "mp_rank_00_model_states.pt").is_file()


def test_checkpoint_holds_the_model_the_workers_evaluated(finished_run):
    """BatchNorm statistics are averaged over the ranks before evaluation, so the checkpoint reloaded
    in one process scores exactly what report.json says the two workers measured."""
    from cascade_dist.data import make_loader
    from cascade_dist.inference.weights import load_cascade
    from cascade_dist.method.evaluate import evaluate

    cfg, result, storage = finished_run
    ckpt = Path(result.checkpoint_path)
    model = load_cascade(ckpt).model  # the config.yaml written into the checkpoint rebuilds it
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


def test_a_worker_killed_mid_epoch_resumes_at_the_next_batch_of_its_step_checkpoint(finished_run):
    """The run resumed from the step-2 checkpoint: steps 1-2 are not trained again, step 3 is trained
    again on the very batch it had (same keys, same loss), every sample of the epoch is seen once,
    and the epoch's metrics reach MLflow once, counting all its steps."""
    cfg, result, storage = finished_run
    killed = json.loads((storage / "integration" / FAULT_MARKER).read_text())  # the worker really died
    assert (killed["rank"], killed["epoch"], killed["step"], len(killed["steps"])) == (1, 1, 3, 3)
    assert result.report is not None and result.metrics["epoch"] == 1
    final = Path(result.checkpoint_path)
    log = {r: json.loads((final / f"steps_rank{r}_epoch1.json").read_text()) for r in (0, 1)}
    per_rank = (1000 // 2) // 64
    assert len(log[0]) == len(log[1]) == per_rank
    assert log[1][:2] == killed["steps"][:2]  # restored from the step-2 checkpoint, not trained again
    replayed, lost = log[1][2], killed["steps"][2]
    assert replayed["time"] > lost["time"] and replayed["keys"] == lost["keys"]  # the next batch, trained again
    assert replayed["loss"] == pytest.approx(lost["loss"], rel=1e-5)  # from the same weights, optimiser and α
    assert replayed["alpha"] == pytest.approx(lost["alpha"], rel=1e-9)
    keys = [k for r in (0, 1) for step in log[r] for k in step["keys"]]
    assert len(keys) == len(set(keys)) == 2 * per_rank * 64  # no sample twice, none skipped
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    (run_,) = client.search_runs([client.get_experiment_by_name("integration").experiment_id])
    assert read_metric_steps(client, run_.info.run_id, "accuracy") == [0, 1]
    images = {m.step: m.value for m in client.get_metric_history(run_.info.run_id, "train_images")}
    assert images == {0: 2 * per_rank * 64, 1: 2 * per_rank * 64}  # the resumed epoch's sums go on


def test_resubmitting_a_run_resumes_it(finished_run, small_fashion_mnist_shards):
    cfg, first, storage = finished_run
    more = load_config("demo", tiny_overrides(small_fashion_mnist_shards, storage, "integration",
                                              **{**KILLED_MID_EPOCH, "optim.joint_epochs": 2,
                                                 "tracking.log_model": "false"}))  # (logged by the first)
    result = run(more)
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("integration").experiment_id])
    assert len(runs) == 1  # the same MLflow run continues
    assert read_metric_steps(client, runs[0].info.run_id, "accuracy") == [0, 1, 2]  # epoch 2 only was trained
    assert result.checkpoint_path != first.checkpoint_path
    # budget mode's α carries over: the resumed epoch starts where dual ascent left it
    resumed = json.loads((Path(result.checkpoint_path) / "steps_rank0_epoch2.json").read_text())
    assert resumed[0]["alpha"] == pytest.approx(first.metrics["train_alpha_end"])


def test_a_truncated_or_deleted_latest_checkpoint_leaves_the_run_resumable(finished_run, small_fashion_mnist_shards, tmp_path):
    """A copy of a finished run: its newest checkpoint's model states truncated, the resume falls
    back to the previous checkpoint (and retrains from there); then the newest checkpoint deleted
    outright, the resume still starts (Ray's snapshot no longer names it), with no hand-editing."""
    import shutil

    from cascade_dist.runtime.checkpoint import SNAPSHOT

    _, _, storage = finished_run
    shutil.copytree(storage / "integration", tmp_path / "copy")
    snapshot = lambda: json.loads((tmp_path / "copy" / SNAPSHOT).read_text())  # noqa: E731
    newest = tmp_path / "copy" / snapshot()["latest_checkpoint_result"]["checkpoint_dir_name"]
    last_epoch = snapshot()["latest_checkpoint_result"]["metrics"]["epoch"]
    states = newest / "checkpoint" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])

    def resume(joint_epochs: int):
        overrides = tiny_overrides(small_fashion_mnist_shards, tmp_path, "copy", **{
            "optim.joint_epochs": joint_epochs, "tracking.enabled": "false"})
        return run(load_config("demo", overrides))

    before = {p.name for p in (tmp_path / "copy").glob("checkpoint_*")}
    result = resume(last_epoch + 1)  # one epoch more than the copy trained
    assert result.metrics["epoch"] == last_epoch + 1
    new = [p for p in (tmp_path / "copy").glob("checkpoint_*") if p.name not in before]
    # the truncated checkpoint's epoch was completed again, from the previous (step) checkpoint
    assert any((p / f"steps_rank0_epoch{last_epoch}.json").is_file() and (p / "report.json").is_file() for p in new)

    shutil.rmtree(Path(result.checkpoint_path))  # the newest checkpoint, removed by hand
    result = resume(last_epoch + 1)
    assert result.metrics["epoch"] == last_epoch + 1 and Path(result.checkpoint_path).is_dir()
    assert all((tmp_path / "copy" / r["checkpoint_dir_name"]).is_dir() for r in snapshot()["checkpoint_results"])


def test_bf16_on_two_cpu_workers_trains_and_matches_a_float32_evaluation(tmp_path, small_fashion_mnist_shards, ray_local):
    """run.bf16 on 2 CPU workers (DeepSpeed's bf16 engine on gloo, the GPU configs' path): the loss is
    finite and falls, the bf16 model is logged to MLflow (a float32 CPU copy), and the bf16-trained
    weights evaluated in float32 here agree with the workers' bf16 evaluation."""
    import math

    from cascade_dist.data import make_loader
    from cascade_dist.inference.weights import load_cascade
    from cascade_dist.method.evaluate import evaluate

    cfg = load_config("demo", tiny_overrides(small_fashion_mnist_shards, tmp_path, "bf16", **{
        "run.bf16": "true", "run.channels_last": "false", "objective.budget": "null"}))
    result = run(cfg)
    checkpoints = sorted(p for p in Path(result.checkpoint_path).parent.glob("checkpoint_*") if p.is_dir())
    warmup = json.loads((checkpoints[0] / "steps_rank0_epoch0.json").read_text())
    joint = json.loads((checkpoints[-1] / "steps_rank0_epoch1.json").read_text())
    losses = [s["loss"] for s in warmup + joint]
    assert all(math.isfinite(v) for v in losses) and len(warmup) >= 6
    first, last = (sum(s["ce"] for s in part) / len(part) for part in (warmup[:3], warmup[-3:]))
    assert last < first, (first, last)  # the cross-entropy falls within the bf16 warm-up epoch
    assert result.report is not None and result.report.accuracy > 0.15  # chance: 0.10
    assert list(tmp_path.rglob("*.pt2")), "the bf16 model was not logged"
    model = load_cascade(checkpoints[-1]).model.float()
    loader = make_loader(cfg.data.shards, "test", 250, backend="torch", train=False)
    report = evaluate(model, loader, model.macs, cfg.eval)
    # bf16 keeps 8 bits of mantissa: rounding moves a few images across an argmax or the exit
    # threshold, so the two evaluations agree within 3 points (of 500 test images)
    assert abs(report.accuracy - result.report.accuracy) < 0.03, (report.accuracy, result.report.accuracy)
    assert max(abs(a - b) for a, b in zip(report.static_accuracy, result.report.static_accuracy)) < 0.03
