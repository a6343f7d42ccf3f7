"""The offline pass on the cluster (`runtime.exit_tables`): 2 real Ray tasks, each on its shard of a
split, give the table a single process gives (every image once), top-k with the run's k."""

from __future__ import annotations

import pytest
import torch
from cascade_fixtures import load_split, spread_cascade

from cascade_dist.inference.weights import save_weights
from cascade_dist.runtime.config import load_config, save_config
from cascade_dist.runtime.exit_tables import split_tables, table_part

NAMES = ["preact_resnet8", "preact_resnet14"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_fashion_mnist_shards):
    images, _ = load_split(small_fashion_mnist_shards, "test", 256)
    ckpt = tmp_path_factory.mktemp("run") / "checkpoint_000000"
    ckpt.mkdir()
    cfg = load_config(None, [f"model.classifiers=[{','.join(NAMES)}]", "model.policy_input=sorted_softmax",
                             f"data.shards={small_fashion_mnist_shards}",
                             "data.backend=torch", "objective.topk=3", "run.num_workers=2"], check_data=False)
    save_config(cfg, ckpt / "config.yaml")
    save_weights(spread_cascade(images, names=NAMES), ckpt)
    return ckpt, cfg


def rows(table):
    """The table as a set of per-image rows (the workers' order is not the single process's)."""
    cols = [table.scores["policy"], table.scores["max_softmax"], table.correct, table.static_correct,
            table.targets[:, None]]
    return sorted(map(tuple, torch.cat([c.double() for c in cols], 1).tolist()))


def test_two_ray_tasks_give_the_single_process_table(checkpoint, ray_local):
    ckpt, cfg = checkpoint
    tables = split_tables(ckpt, cfg, ["test"], scores=("policy", "max_softmax"))
    alone = table_part(str(ckpt), cfg.data.shards, "test", 0, 1, 250, "torch", ("policy", "max_softmax"))
    got = tables["test"]
    assert got.n == alone.n == 500 and got.topk == 3  # the run's objective.topk
    assert rows(got) == rows(alone)
    # the two tasks did split the work: each one's part is a proper subset
    half = table_part(str(ckpt), cfg.data.shards, "test", 1, 2, 250, "torch", ("policy",))
    assert 0 < half.n < alone.n
