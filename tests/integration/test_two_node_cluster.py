"""A real 2-node Ray cluster on this machine, started as a user starts one: `cluster/start_head.sh`
on this machine's own network address (token auth) and `cluster/join_node.sh`, a second `ray start
--address=…` node with its own CPU. A `ray job submit` trains on it: 2 DeepSpeed workers spread one
per node (run.placement_strategy=SPREAD), checkpointing to a real S3-compatible server and logging
to a real MLflow server. Mid-epoch, after a step checkpoint, the worker process on the second node
is SIGKILLed from outside; the run resumes from that checkpoint and finishes as one MLflow run.
Then a node-local storage_path is refused on this 2-node cluster, and every process is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from cascade_dist.data import storage
from cascade_dist.runtime.checkpoint import SNAPSHOT
from cascade_dist.runtime.worker import FAULT_MARKER
from object_store import SECRET
from ray_cluster import CLUSTER, RAY, REPO, Cluster, group_pids, http, non_loopback_ips, port_open, run_cmd

PASSWORD = "Zq7hunter2"  # a word no store schema or log holds by itself
BUCKET = "two-nodes"
PER_RANK_STEPS = (1000 // 2) // 50


def _overrides(cluster: Cluster, shards, **extra) -> list[str]:
    base = {
        "data.shards": shards, "data.batch_size": 50, "data.eval_batch_size": 250,
        "model.classifiers": "[preact_resnet8,preact_resnet14]", "objective.budget": "null",
        "optim.warmup_epochs": 1, "optim.joint_epochs": 1,
        "run.num_workers": 2, "run.cpus_per_worker": 1, "run.placement_strategy": "SPREAD",
        "run.storage_path": f"s3://{BUCKET}/runs", "run.name": "spread", "run.progress": "false",
        "run.control": "false",
        "run.checkpoint_every_steps": 3, "run.log_sample_keys": "true", "run.max_failures": 1,
        # every rank waits after step 3 of the joint epoch (just after the step-3 checkpoint), so the
        # test kills the second node's worker truly mid-epoch
        "run.fail_at_epoch": 1, "run.fail_at_step": 3, "run.fail_mode": "pause",
        # a password in the URI (the server ignores basic auth): it must reach no param, file or log
        "tracking.tracking_uri": cluster.mlflow_url.replace("://", f"://user:{PASSWORD}@"),
        "tracking.experiment": "two-nodes", "tracking.log_model": "false", **extra,
    }
    return [f"{k}={v}" for k, v in base.items()]


def _submit(cluster: Cluster, submission_id: str, overrides: list[str], wait: bool):
    return run_cmd([RAY, "job", "submit", "--submission-id", submission_id, *([] if wait else ["--no-wait"]),
                    "--working-dir", str(REPO), "--runtime-env", str(CLUSTER / "runtime_env.yaml"), "--",
                    "python", "-m", "cascade_dist.train", "--config", "demo", *overrides],
                   cluster.client_env(), timeout=300, cwd=REPO)


def _job(cluster: Cluster, submission_id: str) -> tuple[str, str]:
    status, body = http(f"{cluster.address}/api/jobs/{submission_id}", token=cluster.token)
    assert status == 200, body
    logs = http(f"{cluster.address}/api/jobs/{submission_id}/logs", token=cluster.token)[1]
    return json.loads(body)["status"], json.loads(logs).get("logs", "")


def _wait_for(what: str, ready, cluster: Cluster, submission_id: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := ready()) is not None:
            return value
        status, logs = _job(cluster, submission_id)
        assert status not in ("FAILED", "STOPPED"), f"job {status} before {what}:\n{logs[-4000:]}"
        time.sleep(1)
    pytest.fail(f"no {what} within {timeout_s} s:\n{_job(cluster, submission_id)[1][-4000:]}")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, s3_server, small_fashion_mnist_shards):
    import pyarrow.fs as pafs

    ips = non_loopback_ips()
    assert ips, "a 2-node cluster needs this machine's network address (`hostname -I` lists none)"
    pafs.S3FileSystem(endpoint_override=s3_server.endpoint, scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir(BUCKET)
    # one CPU per node: the two workers cannot share one; the nodes get the object store's
    # endpoint and credentials in their environment, as a cluster's machines have their own
    cluster = Cluster(tmp_path_factory.mktemp("two-nodes"), host=ips[0], num_cpus=1)
    try:
        cluster.start()
        cluster.join(num_cpus=1)
        run_dir = f"s3://{BUCKET}/runs/spread"
        submission_id = f"spread-{os.getpid()}-{int(time.time())}"
        t0 = time.monotonic()
        r = _submit(cluster, submission_id, _overrides(cluster, small_fashion_mnist_shards), wait=False)
        assert r.returncode == 0, r.stdout + r.stderr
        markers = [storage.join(run_dir, f"{FAULT_MARKER}_rank{rank}") for rank in (0, 1)]
        paused = _wait_for("pause of both ranks", lambda: [json.loads(storage.read_text(m)) for m in markers]
                           if all(storage.is_file(m) for m in markers) else None, cluster, submission_id, 400)
        on_node = {m["rank"]: m for m in paused if m["pid"] in group_pids(cluster.node_pid)}
        on_head = {m["rank"]: m for m in paused if m["pid"] in group_pids(cluster.head_pid)}
        assert len(on_node) == len(on_head) == 1, paused  # SPREAD: one worker per node
        def registered():  # Ray Train's controller has taken the step-3 checkpoint as the run's latest
            snapshot = storage.join(run_dir, SNAPSHOT)
            latest = json.loads(storage.read_text(snapshot)).get("latest_checkpoint_result") \
                if storage.is_file(snapshot) else None
            return latest if latest and latest["metrics"] == {"epoch": 1, "epoch_step": 3} else None

        _wait_for("step-3 checkpoint registered", registered, cluster, submission_id, 60)
        cluster.timings["paused_s"] = time.monotonic() - t0
        (victim,) = on_node.values()
        killed_at = time.time()
        os.kill(victim["pid"], signal.SIGKILL)  # the training worker process on the second node
        _wait_for("end of the job", lambda: status if (status := _job(cluster, submission_id)[0]) == "SUCCEEDED"
                  else None, cluster, submission_id, 400)
        cluster.timings["train_job_s"] = time.monotonic() - t0
        status, logs = _job(cluster, submission_id)
        (cluster.tmp / "train_job.log").write_text(logs)  # for a reader of a failure
        t0 = time.monotonic()
        local = _submit(cluster, f"local-{submission_id}", _overrides(
            cluster, small_fashion_mnist_shards, **{"run.storage_path": tmp_path_factory.mktemp("local")}), wait=True)
        cluster.timings["refused_job_s"] = time.monotonic() - t0
        yield {"cluster": cluster, "run_dir": run_dir, "paused": paused, "victim": victim, "killed_at": killed_at,
               "logs": logs, "local": local}
    finally:
        cluster.cleanup()


def test_the_workers_spread_over_both_nodes_and_paused_mid_epoch_after_a_step_checkpoint(two_nodes):
    paused = two_nodes["paused"]
    assert sorted(m["rank"] for m in paused) == [0, 1]
    assert len({m["node_id"] for m in paused}) == 2  # Ray's own view: two nodes
    assert all((m["epoch"], m["step"], len(m["steps"])) == (1, 3, 3) for m in paused)


def test_the_run_resumed_from_the_step_checkpoint_and_finished_with_every_sample_once(two_nodes):
    """After the kill the run restarted its workers from the step-3 checkpoint: steps 1-3 of the
    joint epoch are restored (trained before the kill), steps 4-10 trained after it, every sample of
    the epoch once."""
    run_dir, victim, killed_at = two_nodes["run_dir"], two_nodes["victim"], two_nodes["killed_at"]
    assert "cascade (tau=0.50)" in two_nodes["logs"]  # the job's summary table
    final = sorted(n for n in storage.list_dir(run_dir)
                   if n.startswith("checkpoint_") and storage.is_dir(storage.join(run_dir, n)))[-1]
    assert json.loads(storage.read_text(storage.join(run_dir, final, "position.json"))) == {
        "epoch": 1, "step": None, "world": 2}
    logs = {r: json.loads(storage.read_text(storage.join(run_dir, final, f"steps_rank{r}_epoch1.json")))
            for r in (0, 1)}
    for rank, steps in logs.items():
        assert len(steps) == PER_RANK_STEPS
        times = [round(s["time"] - killed_at, 1) for s in steps]  # s after the kill
        assert all(t < 0 for t in times[:3]) and all(t > 0 for t in times[3:]), (rank, times)
    assert logs[victim["rank"]][:3] == victim["steps"]  # restored as the killed worker had them
    keys = [k for steps in logs.values() for s in steps for k in s["keys"]]
    assert len(keys) == len(set(keys)) == 1000  # no sample twice, none skipped


def test_one_mlflow_run_with_metrics_once_per_epoch_and_no_secret(two_nodes):
    cluster = two_nodes["cluster"]
    status, body = http(f"{cluster.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=two-nodes")
    assert status == 200, body
    experiment_id = json.loads(body)["experiment"]["experiment_id"]
    runs = json.loads(http(f"{cluster.mlflow_url}/api/2.0/mlflow/runs/search",
                           body={"experiment_ids": [experiment_id]})[1])["runs"]
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
    run_id = runs[0]["info"]["run_id"]

    def history(key: str) -> list[tuple[int, float]]:
        body = http(f"{cluster.mlflow_url}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}")[1]
        return sorted((int(m["step"]), m["value"]) for m in json.loads(body)["metrics"])

    assert [step for step, _ in history("accuracy")] == [0, 1]
    assert history("train_images") == [(0, 1000.0), (1, 1000.0)]  # the resumed epoch's sums go on
    assert history("workers") == [(0, 2.0), (1, 2.0)]
    params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
    assert params["run.placement_strategy"] == "SPREAD"
    assert params["tracking.tracking_uri"] == cluster.mlflow_url.replace("://", "://user:***@")
    ours = [line for line in two_nodes["logs"].splitlines() if not line.startswith("Running entrypoint for job")]
    assert not [line for line in ours if PASSWORD in line or SECRET in line]
    # the MLflow store and every file of the Ray session (but the uploaded working dir: this repo, whose
    # tests hold both words, and Ray's echo of the user's own command line in the driver's log)
    files = [p for root in (cluster.mlflow_home, cluster.ray_temp) for p in root.rglob("*")
             if p.is_file() and "runtime_resources" not in p.parts]
    leaks = [p for p in files if any(PASSWORD in line or SECRET in line for line in p.read_text(errors="replace")
                                     .splitlines() if not line.startswith("Running entrypoint for job"))]
    assert not leaks, leaks


def test_a_node_local_storage_path_is_refused_on_two_nodes(two_nodes):
    r = two_nodes["local"]
    assert r.returncode != 0
    assert "run.storage_path" in r.stdout and "node-local path, but the Ray cluster has 2 nodes" in r.stdout, r.stdout[-3000:]


def test_stopping_the_node_and_the_head_leaves_nothing_running(two_nodes):
    cluster = two_nodes["cluster"]
    node_pgid, head_pgid = cluster.node_pid, cluster.head_pid
    before = group_pids(node_pgid) | group_pids(head_pgid)
    assert len(group_pids(node_pgid)) > 1
    cluster.stop()
    assert cluster.node_stopped.returncode == 0 and "Ray node stopped" in cluster.node_stopped.stdout, (
        cluster.node_stopped.stdout + cluster.node_stopped.stderr)
    assert not group_pids(node_pgid) and not group_pids(head_pgid)
    table = os.popen("ps -eo pid=,stat=").read()
    alive = {int(p) for p, st in (line.split() for line in table.splitlines()) if not st.startswith("Z")}
    assert not before & alive, f"left running: {before & alive}"
    for port in (cluster.dash_port, cluster.gcs_port, cluster.node_agent_port):
        assert not port_open(cluster.host, port), f"port {port} still open"
    print(f"timings: {cluster.timings}")
