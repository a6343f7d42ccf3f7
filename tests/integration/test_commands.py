"""The commands as a user types them, each in a fresh process: bad input exits with status 2 and
one clear line on stderr, before any work (the in-process checks of each message live in the unit
tests of config, sweep and data_shards)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bad_config_exit_code_from_the_command_line(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cascade_dist.train", f"data.shards={tmp_path}/none", "objective.alpha=-1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "config error" in line]
    assert len(lines) == 2 and "objective.alpha" in lines[0] and "data.shards" in lines[1]
    assert time.perf_counter() - start < 60


def test_non_numeric_alpha_from_the_command_line():
    proc = subprocess.run([sys.executable, "tuning/sweep_alpha.py", "--alphas", "big"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "--alphas: invalid float value: 'big'" in proc.stderr


def test_data_shards_missing_source_from_the_command_line(tmp_path):
    missing = tmp_path / "nope" / "cifar-10-python.tar.gz"
    r = subprocess.run([sys.executable, "-m", "data_shards", "cifar10", "--src", str(missing), "--out",
                        str(tmp_path / "x")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("data_shards: error:") and str(missing) in lines[0]


def test_an_unreachable_tracking_server_is_one_line_and_exit_2_before_any_worker(tmp_path, small_fashion_mnist_shards):
    import socket

    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cascade_dist.train", f"data.shards={small_fashion_mnist_shards}",
                           f"tracking.tracking_uri=http://user:secret@127.0.0.1:{port}", f"run.storage_path={tmp_path}/runs"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("cascade_dist.train: config error: tracking.tracking_uri: no MLflow server answers at "
                               f"http://127.0.0.1:{port} "), lines[0]
    assert "secret" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started or written
    assert time.perf_counter() - start < 60


@pytest.mark.timeout(300)
def test_train_binds_its_local_ray_to_loopback_without_the_makefiles_environment(tmp_path, small_fashion_mnist_shards):
    """Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (which only the Makefile and the test session
    export), Ray 2.60 puts a local node on the interface address; the command sets it itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-m", "cascade_dist.train", f"data.shards={small_fashion_mnist_shards}",
                           "model.classifiers=[preact_resnet8,preact_resnet14]", "objective.budget=null",
                           "optim.warmup_epochs=1", "optim.joint_epochs=0", "run.num_workers=1", "run.progress=false",
                           f"run.storage_path={tmp_path}/runs", "tracking.enabled=false"],  # Ray's binding only
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Ray: a local instance on 127.0.0.1" in proc.stdout, proc.stdout[-2000:]
