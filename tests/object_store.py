"""A real S3-compatible server for the tests: moto's standalone server (`moto_server`) on a free
loopback port, in its own process, and buckets on it (star-imported by conftest.py).

`s3_server` sets the AWS variables of this process (credentials, endpoint, region) for the session,
as a user's shell would; `s3_bucket` gives each test a new bucket's URI (`s3://name`).
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest

SECRET = "moto-secret-never-logged-7f3a"
"""The secret key the tests hand the server: it must not appear in any param, artifact or log."""
_buckets = itertools.count()


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]
    """The variables a user exports to reach this store (a subprocess gets them in its env)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer at {url} within {timeout_s} s")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"  # a file: a pipe nobody reads fills and stalls it
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": endpoint,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        _wait_until_up(f"{endpoint}/moto-api/", proc, log)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            yield S3Server(endpoint, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket on the server: its URI, `s3://<name>`."""
    import pyarrow.fs as pafs

    name = f"bucket-{os.getpid()}-{next(_buckets)}"
    fs = pafs.S3FileSystem(endpoint_override=s3_server.endpoint, scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir(name)
    return f"s3://{name}"


def upload_tree(local, uri: str) -> int:
    """Copy a local folder to `uri`; returns the number of files."""
    from cascade_dist.data import storage

    return storage.copy_tree(str(local), uri)
