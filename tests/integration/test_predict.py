"""`python -m cascade_dist.predict` end to end on real shards: calibrate on val, predict on test,
export, log to a real (sqlite) MLflow store and read everything back; bad input fails in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest
from cascade_fixtures import load_split, spread_cascade
from conftest import fashion_mnist_subset_shards
from mlflow import MlflowClient

from cascade_dist.inference.calibration import CALIBRATION_FILE, Calibration
from cascade_dist.runtime.config import load_config, save_config
from cascade_dist.inference.cli import main
from cascade_dist.inference.weights import save_weights

NAMES = ["preact_resnet8", "preact_resnet14"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, fashion_mnist_dir):
    """Real Fashion-MNIST: 450 train, 150 val (held out from train), 200 test."""
    return fashion_mnist_subset_shards(tmp_path_factory, fashion_mnist_dir, "fm", 600, 200, val_split=150)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shards):
    """A run directory as `cascade_dist.train` leaves it: config.yaml and a checkpoint_* folder."""
    images, _ = load_split(shards, "val")
    cascade = spread_cascade(images, names=NAMES)
    run = tmp_path_factory.mktemp("runs") / "demo"
    cfg = load_config(None, [f"model.classifiers=[{','.join(NAMES)}]", "model.policy_input=sorted_softmax",
                               f"data.shards={shards}", "data.backend=torch"], check_data=False)
    save_config(cfg, run / "config.yaml")
    ckpt = run / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    save_weights(cascade, ckpt)
    return run


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("predict", artifact_location=(root / "artifacts").as_uri())
    return uri, client.create_run(exp).info.run_id


@pytest.fixture(scope="module")
def predicted(run_dir, mlflow_run, tmp_path_factory):
    uri, run_id = mlflow_run
    out, export = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("export")
    rc = main(["--checkpoint", str(run_dir), "--split", "test", "--budget", "60", "--calibration-split", "val",
               "--out", str(out), "--export", str(export), "--run-id", run_id, "--tracking-uri", uri,
               "--batch-size", "64", "--dense"])
    assert rc == 0
    return out, json.loads((out / "predict.json").read_text())


def test_predict_prints_and_writes_the_table_figures_and_calibration(predicted, run_dir, capsys):
    out, result = predicted
    assert result["num_samples"] == 200 and result["split"] == "test" and result["names"] == NAMES
    assert result["dense_mismatches"] == {"exit": 0, "prediction": 0}  # early exit = dense evaluation
    cal = result["calibration"]
    assert cal["split"] == "val" and cal["num_samples"] == 150 and cal["cost_pct"] <= 60
    assert result["theta"] == cal["theta"] and 0 < result["exit_fractions"][0] < 1
    report = result["dense_report"]
    assert report["accuracy"] == pytest.approx(result["accuracy"])
    assert report["cost_pct"] == pytest.approx(result["cost_pct"])
    assert len(report["accuracy_matrix"]) == 2
    for name in ("predict.json", "predictions.csv", "summary.txt", "exit_examples.png", "accuracy_matrix.png",
                 CALIBRATION_FILE):
        assert (out / name).is_file(), name
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,target,prediction,exit_stage,macs" and len(rows) == 201
    saved = next(run_dir.glob("checkpoint_*")) / CALIBRATION_FILE  # saved with the model
    assert Calibration.load(saved).theta == cal["theta"]
    assert "accuracy" in (out / "summary.txt").read_text().splitlines()[0]


def test_outputs_land_in_mlflow_and_the_exported_model_loads_from_there(predicted, mlflow_run, shards, tmp_path, capsys):
    out, result = predicted
    uri, run_id = mlflow_run
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(run_id, "predict/test")}
    assert {"predict/test/predict.json", "predict/test/exit_examples.png", "predict/test/accuracy_matrix.png"} <= logged
    mlflow.set_tracking_uri(uri)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predict/test/predict.json")
    back = json.loads(open(path).read())
    assert back["accuracy"] == result["accuracy"] and back["theta"] == result["theta"]
    assert client.get_run(run_id).data.metrics["predict_test_cost_pct"] == pytest.approx(result["cost_pct"])
    # the exported cascade, read back from the run: same thresholds, same exits, same predictions
    rc = main(["--checkpoint", f"runs:/{run_id}/cascade_export", "--tracking-uri", uri, "--shards", str(shards),
               "--split", "test", "--out", str(tmp_path / "again"), "--backend", "torch", "--batch-size", "64"])
    assert rc == 0
    again = json.loads((tmp_path / "again" / "predict.json").read_text())
    assert again["kind"] == "export" and again["theta"] == result["theta"]
    for key in ("accuracy", "cost_pct", "exit_fractions", "macs_per_image", "accuracy_at_exit"):
        assert again[key] == result[key], key
    # without --dense: early exit only, no Figure 4
    assert again["dense_report"] is None and again["dense_mismatches"] is None
    assert not (tmp_path / "again" / "accuracy_matrix.png").exists()
    assert "exits %" in (tmp_path / "again" / "summary.txt").read_text()


@pytest.mark.parametrize("args, message", [
    (["--tau", "1.5"], "--tau: tau must lie in (0, 1), got 1.5"),
    (["--tau", "0.5", "0.5"], "--tau: tau needs 1 or K-1 = 1 values, got 2"),
    (["--split", "nope"], "unknown split 'nope'"),
    (["--budget", "1"], "calibration: budget 1 % is below the cheapest operating point"),
    (["--budget", "50", "--calibration-split", "train", "--shards", "MISSING"], "shard directory"),
])
def test_bad_options_fail_in_one_line(run_dir, args, message, capsys, tmp_path):
    args = [a.replace("MISSING", str(tmp_path / "missing")) for a in args]
    rc = main(["--checkpoint", str(run_dir), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_unknown_mlflow_run_is_refused_before_any_work(run_dir, mlflow_run, capsys, tmp_path):
    uri, _ = mlflow_run
    rc = main(["--checkpoint", str(run_dir), "--run-id", "0123abc", "--tracking-uri", uri, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"python -m cascade_dist.predict: error: --run-id: no MLflow run 0123abc in {uri}"]


def test_missing_split_is_named(run_dir, small_fashion_mnist_shards, capsys, tmp_path):
    rc = main(["--checkpoint", str(run_dir), "--shards", str(small_fashion_mnist_shards), "--split", "val",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no split 'val'" in err and "splits present: test, train" in err


def test_missing_checkpoint_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cascade_dist.predict", "--checkpoint", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"python -m cascade_dist.predict: error: checkpoint not found: {tmp_path / 'nope'} is not a directory")
