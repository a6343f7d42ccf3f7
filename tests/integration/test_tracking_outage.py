"""A tracking outage mid-run loses nothing: against a real MLflow server (cluster/start_mlflow.sh)
on 127.0.0.1, stopped after epoch 0 and started again for the resume."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from cascade_dist.runtime.config import load_config
from cascade_dist.runtime.tracking import UNSENT, RunTracker

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


@pytest.mark.timeout(300)
def test_metrics_an_outage_kept_are_resent_on_resume(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_HOME": str(tmp_path / "mlflow"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def server(script: str) -> None:
        r = subprocess.run([str(CLUSTER / script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr

    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # what the workers get: fail in seconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = load_config("demo", [f"tracking.tracking_uri={url}", f"run.storage_path={tmp_path / 'runs'}"], check_data=False)
    run_dir = tmp_path / "runs" / cfg.run.name
    server("start_mlflow.sh")
    try:
        tracker = RunTracker(cfg, spool_dir=run_dir)
        tracker.log_epoch(0, {"epoch": 0, "test_accuracy": 0.5})
        server("stop_mlflow.sh")
        tracker.log_epoch(1, {"epoch": 1, "test_accuracy": 0.6})  # kept, not raised: training goes on
        tracker.finish(model=None, report=None)  # the run's end is a warning, not a failure
        kept = (run_dir / UNSENT).read_text().splitlines()
        assert len(kept) == 1 and '"step": 1' in kept[0]
        if mlflow.active_run() is not None:  # a resume is a new process: no active run carries over
            mlflow.end_run()

        server("start_mlflow.sh")
        resumed = RunTracker(cfg, run_id=tracker.run_id, spool_dir=run_dir)
        resumed.end()
        assert not (run_dir / UNSENT).exists()
        history = mlflow.MlflowClient(url).get_metric_history(tracker.run_id, "test_accuracy")
        assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.6)]
    finally:
        subprocess.run([str(CLUSTER / "stop_mlflow.sh")], env=env, cwd=tmp_path, capture_output=True, timeout=60)
        mlflow.set_tracking_uri(None)
