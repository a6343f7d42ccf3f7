"""What the driver hands its Ray workers: where the object store is, never its credentials."""

from __future__ import annotations

from cascade_dist.runtime.config import load_config
from cascade_dist.runtime.launch import worker_env


def test_workers_get_the_object_store_endpoint_but_no_secret(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Zq7hunter2-secret")
    env = worker_env(load_config("demo", check_data=False))
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert "Zq7hunter2-secret" not in repr(env) and "AWS_SECRET_ACCESS_KEY" not in env
