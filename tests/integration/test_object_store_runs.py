"""A training run whose storage_path and shards are on a real S3-compatible server (moto_server):
2 DeepSpeed workers under Ray Train read the shards from the bucket and checkpoint into it, the
resubmitted run resumes from those checkpoints (on 1 worker, then on 2 again: the same global batch by
gradient accumulation), the cascade loads from its s3:// checkpoint, and the secret key reaches no
param, artifact or log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cascade_dist.data import storage
from cascade_dist.runtime.config import load_config
from cascade_dist.runtime.launch import run
from object_store import SECRET, upload_tree


def s3_overrides(bucket: str, tmp: Path, **extra) -> list[str]:
    base = {
        "data.shards": f"s3://{bucket}/shards", "data.backend": "torch", "data.loader_workers": 0,
        "data.batch_size": 50, "data.eval_batch_size": 250, "model.classifiers": "[preact_resnet8,preact_resnet14]",
        "objective.budget": "null", "optim.warmup_epochs": 1, "optim.joint_epochs": 0,
        "run.storage_path": f"s3://{bucket}/runs", "run.name": "s3demo", "run.progress": "false",
        "run.channels_last": "false", "run.control": "false", "tracking.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
        "tracking.experiment": "s3", "tracking.log_model": "false", "run.log_sample_keys": "true",
        "run.checkpoints_to_keep": 3, **extra,
    }
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def s3_run(s3_server, small_fashion_mnist_shards, tmp_path_factory, ray_local):
    import pyarrow.fs as pafs

    bucket = "runs-bucket"
    pafs.S3FileSystem(endpoint_override=s3_server.endpoint, scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir(bucket)
    upload_tree(small_fashion_mnist_shards, f"s3://{bucket}/shards")
    tmp = tmp_path_factory.mktemp("s3run")
    first = run(load_config("demo", s3_overrides(bucket, tmp)))  # the warm-up epoch on 2 workers
    one = {"optim.joint_epochs": 1, "run.num_workers": 1}  # one epoch more, on 1 worker
    resumed = run(load_config("demo", s3_overrides(bucket, tmp, **one)))
    two = {"optim.joint_epochs": 2}  # and one more, on 2 workers again
    third = run(load_config("demo", s3_overrides(bucket, tmp, **two)))
    start = time.perf_counter()
    again = run(load_config("demo", s3_overrides(bucket, tmp, **two)))  # finished: read back
    again_s = time.perf_counter() - start
    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    return {"bucket": bucket, "tmp": tmp, "first": first, "resumed": resumed, "third": third, "again": again,
            "again_s": again_s,
            "ray_session": session}


def checkpoints(run_dir: str) -> list[str]:
    return [storage.join(run_dir, n) for n in storage.list_dir(run_dir)
            if n.startswith("checkpoint_") and storage.is_dir(storage.join(run_dir, n))]


def test_checkpoints_land_in_the_bucket_and_the_resubmitted_run_resumes(s3_run):
    run_dir = f"s3://{s3_run['bucket']}/runs/s3demo"
    found = checkpoints(run_dir)
    assert len(found) == 3  # epoch 0, 1 and 2, one by each command
    names = {n for c in found for n in storage.list_dir(c)}
    assert {"cascade.pt", "config.yaml", "report.json", "checkpoint", "position.json"} <= names
    assert storage.is_file(storage.join(found[-1], "checkpoint", "mp_rank_00_model_states.pt"))
    steps = [n for c in found for n in storage.list_dir(c) if n.startswith("steps_rank0_")]
    assert sorted(steps) == [f"steps_rank0_epoch{e}.json" for e in range(3)]  # no epoch trained twice
    assert [s3_run[k].checkpoint_path for k in ("first", "resumed", "third")] == sorted(found)
    assert s3_run["third"].run_dir == run_dir and s3_run["third"].metrics["epoch"] == 2
    again = s3_run["again"]  # the finished run resubmitted: its result read back from the bucket, no worker
    assert again.checkpoint_path == sorted(found)[-1] and again.report.accuracy == s3_run["third"].report.accuracy
    assert s3_run["again_s"] < 10 and len(checkpoints(run_dir)) == 3
    client = MlflowClient(f"sqlite:///{s3_run['tmp']}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("s3").experiment_id])
    assert len(runs) == 1  # the same MLflow run continued
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "accuracy")) == [0, 1, 2]
    artifacts = storage.join(f"s3://{s3_run['bucket']}/runs/mlartifacts")
    assert runs[0].info.artifact_uri.startswith(artifacts)
    assert storage.is_file(storage.join(runs[0].info.artifact_uri, "report.json"))  # MLflow's artifacts in the bucket


def test_resumed_on_one_worker_then_two_every_epoch_has_the_same_global_batch(s3_run):
    """2 → 1 → 2 workers: each epoch takes the same optimiser steps of 100 images (1 worker accumulates
    two micro-batches of 50 per step), and the re-sharded data covers every image once per epoch."""
    client = MlflowClient(f"sqlite:///{s3_run['tmp']}/mlflow.db")
    run_id = client.search_runs([client.get_experiment_by_name("s3").experiment_id])[0].info.run_id
    history = lambda key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
    assert history("workers") == [2, 1, 2]
    assert history("accumulation_steps") == [1, 2, 1]
    assert history("optimizer_steps") == [10, 20, 30]  # 1,000 images / 100 per step, every epoch
    assert history("train_images") == [1000, 1000, 1000]
    run_dir = f"s3://{s3_run['bucket']}/runs/s3demo"
    for epoch, checkpoint in enumerate(sorted(checkpoints(run_dir))):
        logs = [json.loads(storage.read_text(storage.join(checkpoint, n))) for n in storage.list_dir(checkpoint)
                if n.startswith("steps_rank") and n.endswith(f"_epoch{epoch}.json")]
        workers = [2, 1, 2][epoch]
        assert [len(log) for log in logs] == [20 // workers] * workers  # micro-steps of 50 images per rank
        keys = [k for log in logs for step in log for k in step["keys"]]
        assert len(keys) == 1000 and len(set(keys)) == 1000, epoch


def test_the_cascade_loads_from_its_s3_checkpoint(s3_run, small_fashion_mnist_shards):
    from cascade_dist.data import make_loader
    from cascade_dist.inference.weights import load_cascade
    from cascade_dist.method.evaluate import evaluate

    run_dir = f"s3://{s3_run['bucket']}/runs/s3demo"
    loaded = load_cascade(run_dir)  # a run directory: its newest checkpoint
    assert loaded.source == sorted(checkpoints(run_dir))[-1]
    assert not (loaded.checkpoint / "checkpoint").exists()  # DeepSpeed's states are not fetched for inference
    saved = json.loads(storage.read_text(storage.join(loaded.source, "report.json")))
    loader = make_loader(small_fashion_mnist_shards, "test", 250, backend="torch", train=False)
    report = evaluate(loaded.model, loader, loaded.model.macs, loaded.eval_config)
    assert report.accuracy == saved["accuracy"] and report.num_samples == 500


def test_the_secret_key_reaches_no_param_artifact_or_log(s3_run):
    config = storage.read_text(f"s3://{s3_run['bucket']}/runs/s3demo/config.yaml")
    assert "s3://runs-bucket/runs" in config and SECRET not in config
    client = MlflowClient(f"sqlite:///{s3_run['tmp']}/mlflow.db")
    run_ = client.search_runs([client.get_experiment_by_name("s3").experiment_id])[0]
    assert run_.data.params["run.storage_path"] == "s3://runs-bucket/runs"
    assert SECRET not in json.dumps(run_.data.params)
    logs = [p for p in (s3_run["ray_session"] / "logs").rglob("*") if p.is_file() and p.stat().st_size < 50 << 20]
    assert len(logs) > 10  # the session's logs: driver, raylet, runtime env agent, the workers' stdout/stderr
    leaked = [str(p) for p in logs if SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_predict_reads_the_s3_checkpoint_and_its_s3_shards(s3_run, tmp_path):
    from cascade_dist.inference.cli import main

    run_dir = f"s3://{s3_run['bucket']}/runs/s3demo"
    rc = main(["--checkpoint", run_dir, "--split", "test", "--out", str(tmp_path), "--batch-size", "250"])
    assert rc == 0  # shards and backend from the run's config: s3://runs-bucket/shards, torch
    result = json.loads((tmp_path / "predict.json").read_text())
    saved = json.loads(storage.read_text(storage.join(sorted(checkpoints(run_dir))[-1], "report.json")))
    # the early-exit pass (no --dense) gives the accuracy the run's own evaluation saved
    assert result["num_samples"] == 500 and result["dense_report"] is None
    assert result["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-9)  # one image is 2e-3
