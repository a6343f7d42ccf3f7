"""A Ray head (+ joined nodes) and an MLflow server started with the cluster/ scripts on free
ports, as a user starts them, for the cluster tests; and the helpers those tests share."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY = str(Path(sys.executable).parent / "ray")
CLIENT_ENV_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                   "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def non_loopback_ips() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [ip for ip in out if not ip.startswith("127.") and ip != "::1"]


def group_pids(pgid: int) -> set[int]:
    """The processes of a server: its process group plus every descendant of the leader (Ray's
    workers and job drivers start process groups of their own)."""
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    pids = {int(p) for p in out.split()}
    table = subprocess.run(["ps", "-eo", "pid=,ppid=,stat="], capture_output=True, text=True).stdout
    rows = [line.split() for line in table.splitlines()]
    parent = {int(r[0]): int(r[1]) for r in rows if not r[2].startswith("Z")}
    live = set(parent)
    pids &= live
    tree, grew = {pgid} & live, True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree and p not in tree}
        tree |= new
        grew = bool(new)
    return pids | tree


def listening(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets that processes in `pids` listen on (from `ss`)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    addrs = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            addrs.append(line.split()[3])
    return addrs


def http(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def run_cmd(cmd: list[str], env: dict, timeout: float = 120, cwd: Path | None = None):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def kill_group_from_pidfile(pidfile: Path) -> None:
    """Last resort if a stop script failed: SIGKILL the process group recorded in `pidfile`."""
    try:
        pid = int(pidfile.read_text())
        os.killpg(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


class Cluster:
    """A head on `host` (start_head.sh: loopback by default) offering `num_cpus`, an MLflow server on
    127.0.0.1 (start_mlflow.sh), and with `join` a second node on this machine (join_node.sh)."""

    def __init__(self, tmp: Path, host: str = "127.0.0.1", num_cpus: int = 2):
        self.tmp, self.host = tmp, host
        self.dash_port, self.gcs_port, self.client_port, self.agent_port, self.mlflow_port = (
            free_port() for _ in range(5))
        self.token_path = tmp / "auth" / "auth_token"
        # Ray's Unix sockets live under --temp-dir: keep that path short (107-byte limit).
        self.ray_temp = Path(tempfile.mkdtemp(prefix="cdray", dir="/tmp"))
        self.head_state = tmp / "head"
        self.mlflow_home = tmp / "mlflow"
        base = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_VARS}
        self.env = {
            **base,
            "RAY_DASHBOARD_PORT": str(self.dash_port),
            "RAY_GCS_PORT": str(self.gcs_port),
            "RAY_CLIENT_SERVER_PORT": str(self.client_port),
            "RAY_DASHBOARD_AGENT_PORT": str(self.agent_port),
            "RAY_HEAD_HOST": host,
            "RAY_NUM_CPUS": str(num_cpus),
            "RAY_TEMP_DIR": str(self.ray_temp),
            "RAY_HEAD_STATE_DIR": str(self.head_state),
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "MLFLOW_PORT": str(self.mlflow_port),
            "MLFLOW_HOME": str(self.mlflow_home),
        }
        self.address = f"http://{host}:{self.dash_port}"
        self.node_state, self.node_agent_port = tmp / "node", free_port()
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}"
        self.timings: dict[str, float] = {}

    # a client shell that holds the token, as start_head.sh tells the user to set it up
    def client_env(self, **extra) -> dict:
        env = {k: v for k, v in self.env.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        env.update(RAY_ADDRESS=self.address, RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(self.token_path))
        env.update(extra)
        return env

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    @property
    def head_pid(self) -> int:
        return int((self.head_state / "ray-head.pid").read_text())

    @property
    def mlflow_pid(self) -> int:
        return int((self.mlflow_home / "mlflow-server.pid").read_text())

    def start(self) -> None:
        t0 = time.monotonic()
        head = subprocess.Popen([str(CLUSTER / "start_head.sh")], env=self.env, cwd=self.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        mlflow = subprocess.Popen([str(CLUSTER / "start_mlflow.sh")], env=self.env, cwd=self.tmp,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.head_out = head.communicate(timeout=180)[0]
        self.timings["start_head_s"] = time.monotonic() - t0
        self.mlflow_out = mlflow.communicate(timeout=180)[0]
        self.timings["start_both_s"] = time.monotonic() - t0
        assert head.returncode == 0, self.head_out
        assert mlflow.returncode == 0, self.mlflow_out

    def join(self, num_cpus: int = 1) -> subprocess.CompletedProcess:
        """A second node offering `num_cpus`, joined to the head with its token (join_node.sh)."""
        t0 = time.monotonic()
        r = run_cmd([str(CLUSTER / "join_node.sh")], self.node_env(num_cpus), timeout=180, cwd=self.tmp)
        self.timings["join_node_s"] = time.monotonic() - t0
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    def node_env(self, num_cpus: int = 1) -> dict:
        return {**self.env, "RAY_HEAD_ADDRESS": f"{self.host}:{self.gcs_port}", "RAY_NUM_CPUS": str(num_cpus),
                "RAY_DASHBOARD_AGENT_PORT": str(self.node_agent_port), "RAY_NODE_STATE_DIR": str(self.node_state)}

    @property
    def node_pid(self) -> int:
        return int((self.node_state / "ray-node.pid").read_text())

    def stop(self) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        """Stops the joined node (if any; its result in `node_stopped`), the head and MLflow."""
        t0 = time.monotonic()
        self.node_stopped = run_cmd([str(CLUSTER / "stop_node.sh")], self.node_env(), timeout=120, cwd=self.tmp)
        head = run_cmd([str(CLUSTER / "stop_head.sh")], self.env, timeout=120, cwd=self.tmp)
        self.timings.setdefault("stop_head_s", time.monotonic() - t0)
        mlflow = run_cmd([str(CLUSTER / "stop_mlflow.sh")], self.env, timeout=60, cwd=self.tmp)
        self.timings.setdefault("stop_both_s", time.monotonic() - t0)
        return head, mlflow

    def cleanup(self) -> None:
        """Whatever happened: nothing of this module is left running."""
        try:
            self.stop()
        finally:
            kill_group_from_pidfile(self.node_state / "ray-node.pid")
            kill_group_from_pidfile(self.head_state / "ray-head.pid")
            kill_group_from_pidfile(self.mlflow_home / "mlflow-server.pid")
            shutil.rmtree(self.ray_temp, ignore_errors=True)
