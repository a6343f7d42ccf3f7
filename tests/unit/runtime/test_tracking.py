"""No password leaves the config: URIs redacted in config files and params, and MLflow given the
credentials through its basic-auth variables rather than in the URI it prints."""

from __future__ import annotations

import os

from cascade_dist.data.redact import redact_tree
from cascade_dist.runtime.config import load_config, save_config, to_container
from cascade_dist.runtime.tracking import flatten, tracking_uri


def test_config_file_and_params_hold_no_password(tmp_path):
    cfg = load_config("demo", ["tracking.tracking_uri=postgresql://user:Zq7hunter2@db/mlflow"], check_data=False)
    text = save_config(cfg, tmp_path / "config.yaml").read_text()
    assert "Zq7hunter2" not in text and "user:***@db" in text
    assert "Zq7hunter2" not in repr(flatten(redact_tree(to_container(cfg))))
    assert to_container(cfg)["tracking"]["tracking_uri"].endswith("user:Zq7hunter2@db/mlflow")  # workers keep it


def test_http_credentials_move_to_mlflows_variables(monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(var, "before")  # recorded, so that the test's values are undone after it
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config("demo", ["tracking.tracking_uri=https://al%40ce:Zq7hunter2@mlflow.example:8443/base"], check_data=False)
    assert tracking_uri(cfg) == "https://mlflow.example:8443/base"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "al@ce" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "Zq7hunter2"


def test_artifacts_go_under_the_storage_path_local_or_remote(tmp_path):
    from cascade_dist.runtime.tracking import artifact_location

    assert artifact_location(str(tmp_path / "runs")) == (tmp_path / "runs" / "mlartifacts").as_uri()
    assert artifact_location("s3://bucket/runs/") == "s3://bucket/runs/mlartifacts"  # not file:///cwd/s3:/...
