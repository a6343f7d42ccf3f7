"""The run's config: shipped configs load; a bad field is one line naming its key, exit 2, before any worker."""

from __future__ import annotations

import pytest

from cascade_dist.runtime.config import ConfigError, load_config, shipped_configs
from cascade_dist.runtime.launch import main


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_configs_load(name):
    cfg = load_config(name, check_data=False)
    assert len(cfg.model.classifiers) >= 2
    assert cfg.run.name


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.classifiers=[preact_resnet8,resnet9000]", "model.classifiers[1]: unknown classifier 'resnet9000'"),
        ("model.classifiers=[preact_resnet8]", "model.classifiers: a cascade needs K >= 2"),
        ("objective.alpha=-0.1", "objective.alpha: must be >= 0, got -0.1"),
        ("model.num_classes=7", "model.num_classes: 7 but"),
        ("data.shards=/nonexistent/shards", "data.shards: shard directory not found: /nonexistent/shards"),
        ("run.zero_stage=3", "run.zero_stage: expected 0, 1 or 2"),
        ("optim.policy_lr=fast", "optim.policy_lr"),
        ("eval.tau=[1.5]", "eval.tau"),
    ],
)
def test_bad_config_is_one_line_and_exit_2_before_any_worker(override, key, small_fashion_mnist_shards, capsys):
    import ray

    rc = main(["--config", "demo", f"data.shards={small_fashion_mnist_shards}", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and key in err[0], err
    assert not ray.is_initialized()


def test_unknown_config_name_lists_shipped():
    with pytest.raises(ConfigError, match="unknown config 'nope'; shipped: cifar10, cifar100, cifar10_subset, demo"):
        load_config("nope")
