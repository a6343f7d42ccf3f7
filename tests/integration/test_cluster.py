"""cluster/: the local Ray head and MLflow server scripts, the runtime env and the manifests.

Real components, started the way a user starts them: `cluster/start_head.sh` (Ray 2.60 with
token authentication) and `cluster/start_mlflow.sh` on free ports, a real `ray job submit` whose
job logs to that MLflow server, then the stop scripts (the training job itself runs on the 2-node
cluster of test_two_node_cluster.py). The token lives in a temporary file
(RAY_AUTH_TOKEN_PATH), so the user's ~/.ray/auth_token is never read or written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ray_cluster import (CLUSTER, RAY, REPO, Cluster, group_pids, http, listening, non_loopback_ips, port_open,
                         run_cmd)

# Env var names `python -m cascade_dist.train` passes to ray.init(runtime_env=...): the job's
# runtime env must not name them too (Ray refuses to merge overlapping env_vars keys).
TRAIN_DRIVER_ENV_VARS = {"DS_ACCELERATOR", "PYTHONUNBUFFERED", "MLFLOW_TRACKING_URI"}

JOB_SCRIPT = '''\
import sys
import mlflow

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("cluster-smoke")
with mlflow.start_run(run_name="smoke") as run:
    mlflow.log_metric("answer", 42.0, step=3)
    mlflow.log_text("hello from a ray job", "hello.txt")
print("RUN_ID", run.info.run_id)
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


# --------------------------------------------------------------------------------------------
# static: scripts and manifests


def test_scripts_are_valid_bash():
    for script in sorted(CLUSTER.glob("*.sh")):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script.name}: {r.stderr}"
        if not script.name.startswith("_"):
            assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_runtime_env_excludes_venv_and_data(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"excludes", "env_vars", "working_dir"}, env
    assert "working_dir" not in env, "the working dir is chosen by `ray job submit --working-dir`"
    overlap = set(env.get("env_vars") or {}) & TRAIN_DRIVER_ENV_VARS
    assert not overlap, f"runtime_env.yaml env_vars {overlap} clash with train.py's ray.init"

    # A project-like tree with everything that must not travel with the job.
    root = tmp_path / "proj"
    keep = ["cascade_dist/train.py", "cascade_dist/data/loader.py", "cluster/runtime_env.yaml",
            "data_shards/__main__.py", "pyproject.toml"]
    drop = [".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/x.py",
            "shards/fashion-mnist/train/shard-000000.tar", "mlruns/0/meta.yaml", "results/r.json",
            "runs/demo/checkpoint_000001/model.pt", "mlflow-server/mlflow.db", "mlflow.db",
            ".git/HEAD", "cascade_dist/__pycache__/train.cpython-311.pyc"]
    for rel in keep + drop:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    package = tmp_path / "pkg.zip"
    create_package(str(root), package, include_gitignore=True, excludes=env["excludes"])
    import zipfile

    names = {n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/")}
    assert set(keep) <= names, set(keep) - names
    assert not names & set(drop), names & set(drop)


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _assert_token_from_secret(container: dict) -> None:
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
    assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], container["name"]
    assert "value" not in env["RAY_AUTH_TOKEN"], "the token must come from a Secret"


def _check_cluster_spec(spec: dict) -> int:
    head = spec["headGroupSpec"]
    for c in _containers(head["template"]):
        _assert_token_from_secret(c)
        env = {e["name"]: e for e in c["env"]}
        ref = env["MLFLOW_TRACKING_URI"]["valueFrom"]
        assert "configMapKeyRef" in ref or "secretKeyRef" in ref
    workers = spec["workerGroupSpecs"]
    assert workers
    gpus = 0
    for group in workers:
        assert {"groupName", "replicas", "template"} <= set(group)
        for c in _containers(group["template"]):
            _assert_token_from_secret(c)
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            gpus += int(c["resources"]["limits"]["nvidia.com/gpu"]) * int(group["replicas"])
            assert any(m["mountPath"].startswith("/data/shards") for m in c["volumeMounts"])
        claims = [v for v in group["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims, "the shards come from a shared volume"
    return gpus


def test_kuberay_manifests():
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m cascade_dist.train --config ")
    assert "run.num_workers=8" in spec["entrypoint"] and "run.use_gpu=true" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
    for c in _containers(spec["submitterPodTemplate"]):
        _assert_token_from_secret(c)
    assert _check_cluster_spec(spec["rayClusterSpec"]) >= 8, "8 GPU workers need 8 GPUs"
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    assert not set(runtime_env.get("env_vars") or {}) & TRAIN_DRIVER_ENV_VARS

    rc = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["spec"]["rayVersion"] == "2.60.0"
    _check_cluster_spec(rc["spec"])


def test_cluster_launcher_yaml_matches_ray_schema():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # Ray's own check (fills defaults first)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["node_config"]["InstanceType"].startswith(("g5", "p4d", "p5"))
               for name, t in types.items() if name != config["head_node_type"])
    assert any("pip install" in c and "-e" in c for c in config["setup_commands"])
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "~/.ray/auth_token" in config["file_mounts"]


# --------------------------------------------------------------------------------------------
# live: head + MLflow server (tests run in this order; the last one stops both)


def test_start_prints_how_to_connect(cluster):
    assert f"export RAY_ADDRESS={cluster.address} RAY_AUTH_MODE=token" in cluster.head_out
    assert "ray job submit" in cluster.head_out
    assert f"export MLFLOW_TRACKING_URI={cluster.mlflow_url}" in cluster.mlflow_out
    # the token was created in the configured location, private, and printed nowhere
    assert cluster.token_path.stat().st_mode & 0o777 == 0o600
    assert cluster.token not in cluster.head_out + cluster.mlflow_out
    print(f"timings: {cluster.timings}")


def test_start_is_idempotent(cluster):
    pid = cluster.head_pid
    r = run_cmd([str(CLUSTER / "start_head.sh")], cluster.env, timeout=60, cwd=cluster.tmp)
    assert r.returncode == 0 and "already running" in r.stdout, r.stdout + r.stderr
    assert cluster.head_pid == pid
    r = run_cmd([str(CLUSTER / "start_mlflow.sh")], cluster.env, timeout=60, cwd=cluster.tmp)
    assert r.returncode == 0 and "already running" in r.stdout, r.stdout + r.stderr


def test_job_server_requires_the_token(cluster, tmp_path):
    url = f"{cluster.address}/api/jobs/"
    assert http(url)[0] == 401
    assert http(url, token="not-the-token")[0] in (401, 403)
    assert http(url, token=cluster.token)[0] == 200

    # The CLI: no token anywhere (a fresh HOME, auth mode unset) -> refused ...
    no_token = cluster.client_env(HOME=str(tmp_path))
    del no_token["RAY_AUTH_MODE"], no_token["RAY_AUTH_TOKEN_PATH"]
    r = run_cmd([RAY, "job", "list"], no_token)
    assert r.returncode != 0 and "authentication token" in (r.stdout + r.stderr), r.stdout + r.stderr
    # ... a wrong token -> refused ...
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 32)
    r = run_cmd([RAY, "job", "list"], cluster.client_env(HOME=str(tmp_path), RAY_AUTH_TOKEN_PATH=str(wrong)))
    assert r.returncode != 0 and "invalid or incorrect" in (r.stdout + r.stderr), r.stdout + r.stderr
    # ... the token -> works.
    r = run_cmd([RAY, "job", "list"], cluster.client_env())
    assert r.returncode == 0, r.stdout + r.stderr


def test_submitted_job_logs_to_the_mlflow_server(cluster, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "script.py").write_text(JOB_SCRIPT)
    (job_dir / ".venv").mkdir()  # must not be uploaded (runtime_env excludes)
    (job_dir / ".venv" / "big.bin").write_bytes(b"\0" * 1024)
    submission_id = f"cluster-smoke-{os.getpid()}-{int(time.time())}"
    t0 = time.monotonic()
    r = run_cmd([RAY, "job", "submit", "--submission-id", submission_id, "--working-dir", str(job_dir),
              "--runtime-env", str(CLUSTER / "runtime_env.yaml"), "--",
              "python", "script.py", cluster.mlflow_url], cluster.client_env(), timeout=180)
    cluster.timings["job_submit_s"] = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert cluster.token not in r.stdout + r.stderr

    status, body = http(f"{cluster.address}/api/jobs/{submission_id}", token=cluster.token)
    assert status == 200 and json.loads(body)["status"] == "SUCCEEDED", body
    logs = http(f"{cluster.address}/api/jobs/{submission_id}/logs", token=cluster.token)[1].decode()
    run_id = re.search(r"RUN_ID (\w+)", logs).group(1)

    # Read the metric back through the server's REST API.
    status, body = http(f"{cluster.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=cluster-smoke")
    assert status == 200, body
    experiment_id = json.loads(body)["experiment"]["experiment_id"]
    status, body = http(f"{cluster.mlflow_url}/api/2.0/mlflow/runs/search",
                         body={"experiment_ids": [experiment_id], "filter": "metrics.answer = 42"})
    assert status == 200, body
    runs = json.loads(body)["runs"]
    assert [run["info"]["run_id"] for run in runs] == [run_id]
    metric = runs[0]["data"]["metrics"][0]
    assert (metric["key"], metric["value"], int(metric["step"])) == ("answer", 42.0, 3)
    # Artifacts go through the server's proxy into MLFLOW_HOME/artifacts.
    assert runs[0]["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    status, body = http(f"{cluster.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/"
                         f"{experiment_id}/{run_id}/artifacts/hello.txt")
    assert (status, body) == (200, b"hello from a ray job")
    assert list((cluster.mlflow_home / "artifacts").rglob("hello.txt"))
    # MLflow's host-header check is on (DNS-rebinding protection, DESIGN §4).
    req = urllib.request.Request(f"{cluster.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1",
                                 headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403


def test_servers_listen_on_loopback_only(cluster):
    """After the job: the head, its agents, the job's idle workers and MLflow."""
    head_pids = group_pids(cluster.head_pid)
    mlflow_pids = group_pids(cluster.mlflow_pid)
    assert head_pids and mlflow_pids
    addrs = listening(head_pids | mlflow_pids)
    assert f"127.0.0.1:{cluster.dash_port}" in addrs
    assert any(a.endswith(f":{cluster.gcs_port}") for a in addrs)
    assert f"127.0.0.1:{cluster.mlflow_port}" in addrs
    exposed = [a for a in addrs if not a.rsplit(":", 1)[0].strip("[]").endswith(("127.0.0.1", "::1"))]
    assert not exposed, f"listening beyond loopback: {exposed}"
    for ip in non_loopback_ips():
        for port in (cluster.dash_port, cluster.gcs_port, cluster.agent_port, cluster.mlflow_port):
            assert not port_open(ip, port), f"{ip}:{port} accepts connections"


def test_token_not_in_logs(cluster):
    token = cluster.token
    logs = [cluster.head_state / "ray-head.log", cluster.mlflow_home / "mlflow-server.log"]
    logs += [p for p in cluster.ray_temp.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
    leaked = [str(p) for p in logs if token in p.read_text(errors="replace")]
    assert not leaked, f"token written to {leaked}"


def test_stop_closes_everything(cluster):
    head_pgid, mlflow_pgid = cluster.head_pid, cluster.mlflow_pid
    before = group_pids(head_pgid) | group_pids(mlflow_pgid)
    assert len(before) > 3
    head, mlflow = cluster.stop()
    assert head.returncode == 0 and "stopped" in head.stdout, head.stdout + head.stderr
    assert mlflow.returncode == 0 and "stopped" in mlflow.stdout, mlflow.stdout + mlflow.stderr
    assert not group_pids(head_pgid) and not group_pids(mlflow_pgid)
    table = subprocess.run(["ps", "-eo", "pid=,stat="], capture_output=True, text=True).stdout
    alive = {int(p) for p, st in (line.split() for line in table.splitlines()) if not st.startswith("Z")}
    assert not before & alive, f"left running: {before & alive}"
    for port in (cluster.dash_port, cluster.gcs_port, cluster.client_port, cluster.agent_port,
                 cluster.mlflow_port):
        assert not port_open("127.0.0.1", port), f"port {port} still open"
    # stopping again is a no-op
    head, mlflow = cluster.stop()
    assert head.returncode == 0 and "nothing to stop" in head.stdout
    assert mlflow.returncode == 0 and "nothing to stop" in mlflow.stdout
    print(f"timings: {cluster.timings}")
