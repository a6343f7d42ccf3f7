"""Elastic restarts: the global batch a resumed run keeps, and the checkpoint it resumes from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cascade_dist.runtime.checkpoint import resumable_checkpoint, write_position
from cascade_dist.runtime.config import ConfigError, load_config, save_config
from cascade_dist.runtime.elastic import accumulation_steps, resolve_global_batch
from cascade_dist.runtime.launch import keep_the_runs_batch


def test_the_first_start_fixes_the_global_batch_and_a_resume_accumulates_to_it():
    assert resolve_global_batch(None, 50, 2, previous=None) == 100
    assert resolve_global_batch(None, 50, 1, previous=100) == 100
    assert accumulation_steps(100, 50, 1) == 2 and accumulation_steps(100, 50, 2) == 1
    assert accumulation_steps(400, 50, 2) == 4
    with pytest.raises(ValueError, match=r"data.global_batch_size: 100 is not a multiple of .* 3 = 150"):
        resolve_global_batch(None, 50, 3, previous=100)
    with pytest.raises(ValueError, match=r"data.global_batch_size: 200, but this run started with .* 100"):
        resolve_global_batch(200, 50, 2, previous=100)


def test_the_run_directory_decides_the_global_batch(tmp_path):
    first = load_config("demo", ["data.batch_size=50", "run.num_workers=2"], check_data=False)
    keep_the_runs_batch(first, tmp_path)  # a new run: batch_size x num_workers
    assert first.data.global_batch_size == 100
    save_config(first, tmp_path / "config.yaml")

    one = load_config("demo", ["data.batch_size=50", "run.num_workers=1"], check_data=False)
    keep_the_runs_batch(one, tmp_path)
    assert one.data.global_batch_size == 100  # the first start's, not 50

    bad = load_config("demo", ["data.batch_size=50", "run.num_workers=1", "data.global_batch_size=50"],
                      check_data=False)
    with pytest.raises(ConfigError, match=rf"data.global_batch_size: 50, but .* of 100;.*{re.escape(str(tmp_path / 'config.yaml'))}"):
        keep_the_runs_batch(bad, tmp_path)

    zero = load_config("demo", ["data.batch_size=50", "run.num_workers=1", "run.zero_stage=1",
                                "run.channels_last=false"], check_data=False)
    with pytest.raises(ConfigError, match=r"run.num_workers: 1, but .* ran on 2 workers with run.zero_stage=1"):
        keep_the_runs_batch(zero, tmp_path)


def test_a_global_batch_that_no_worker_count_divides_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.global_batch_size: 150 is not a multiple of"):
        load_config("demo", ["data.batch_size=50", "run.num_workers=2", "data.global_batch_size=150"],
                    check_data=False)
    with pytest.raises(ConfigError, match=r"run.placement_strategy: expected one of PACK, SPREAD"):
        load_config("demo", ["run.placement_strategy=ROUND_ROBIN"], check_data=False)


def _checkpoint(run_dir: Path, name: str, epoch: int, step: int | None, world: int) -> str:
    path = run_dir / name
    path.mkdir(parents=True)
    write_position(path, epoch, step, world)
    return str(path)


def test_a_step_checkpoint_of_other_workers_resumes_from_the_epoch_before(tmp_path, caplog):
    epoch_end = _checkpoint(tmp_path, "checkpoint_2026-12-04_10-00-00.000000", 0, None, 2)
    _checkpoint(tmp_path, "checkpoint_2026-12-04_10-01-00.000000", 1, 3, 2)
    latest = _checkpoint(tmp_path, "checkpoint_2026-12-04_10-02-00.000000", 1, 6, 2)
    assert resumable_checkpoint(latest, world=2) == latest  # the same workers: mid-epoch, exactly
    assert resumable_checkpoint(latest, world=1) == epoch_end  # not the older step checkpoint either
    assert "trained again on 1 workers" in caplog.text
    assert resumable_checkpoint(epoch_end, world=4) == epoch_end  # an epoch's end suits any workers

    only_steps = tmp_path / "other"
    latest = _checkpoint(only_steps, "checkpoint_2026-12-04_11-00-00.000000", 1, 3, 2)
    with pytest.raises(ValueError, match=r"keeps no epoch checkpoint .* run.checkpoints_to_keep"):
        resumable_checkpoint(latest, world=1)


ACCUMULATE_SCRIPT = r'''
import json, os, sys, socket
import torch, deepspeed
from cascade_dist.runtime.config import load_config
from cascade_dist.runtime.worker import deepspeed_config

with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))

def engine(global_batch, batch):
    cfg = load_config("demo", [f"data.batch_size={batch}", f"data.global_batch_size={global_batch}",
                               "run.num_workers=1"], check_data=False)
    torch.manual_seed(1)
    model = torch.nn.Linear(10, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(cfg, 1))[0]

def step(e, xb, yb):
    e.backward(torch.nn.functional.cross_entropy(e(xb), yb))
    e.step()

one = engine(8, 8)  # one micro-batch of 8 per optimiser step
start = one.module.weight.detach().clone()
step(one, x, y)
two = engine(8, 4)  # two micro-batches of 4 accumulated to the same global batch
step(two, x[:4], y[:4])
after_first = (two.module.weight - start).abs().max().item()
step(two, x[4:], y[4:])
print(json.dumps({"gas": [one.gradient_accumulation_steps(), two.gradient_accumulation_steps()],
                  "after_first_micro_step": after_first,
                  "moved": (one.module.weight - start).abs().max().item(),
                  "diff": (one.module.weight - two.module.weight).abs().max().item(),
                  "optimizer_steps": [one.global_steps, two.global_steps]}))
'''


def test_two_accumulated_half_batches_are_one_step_on_the_whole_batch():
    """A real DeepSpeed engine (gloo, world 1) with the run's DeepSpeed config: half the per-worker
    batch and two accumulation steps take the optimiser step one engine takes on the whole batch."""
    env = {**__import__("os").environ, "DS_ACCELERATOR": "cpu"}
    out = subprocess.run([sys.executable, "-c", ACCUMULATE_SCRIPT], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["gas"] == [1, 2] and result["optimizer_steps"] == [1, 1]
    assert result["after_first_micro_step"] == 0.0  # no optimiser step before the window is full
    assert result["moved"] > 1e-3  # the step is not a no-op ...
    assert result["diff"] < 3e-5, result  # ... and both engines took the same one
