"""The commands as a user types them, each in a fresh process: bad input exits with status 2 and
one clear line on stderr, before any work (the in-process checks of each message live in the unit
tests of config, sweep and data_shards)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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
