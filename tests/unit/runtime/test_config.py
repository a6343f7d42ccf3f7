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
        ("eval.tau=1.5", "eval.tau: expected a list"),
        ("run.fp16=true", "run.fp16: fp16 needs run.use_gpu=true"),
        ("run.zero_stage=1", "run.channels_last: needs float32 and zero_stage 0"),
        ("run.cpus_per_worker=0", "run.cpus_per_worker: must be > 0, got 0"),
        ("run.cpus_per_worker=-1", "run.cpus_per_worker: must be > 0, got -1"),
        ("objective.budget=1e9", "objective.budget: 1000000000.0 % is above the whole cascade's cost"),
        ("data.batch_size=100000", "data.batch_size: 100000 exceeds a rank's share"),
        ("tracking.tracking_uri=ftp://x", "tracking.tracking_uri: unsupported scheme 'ftp'"),
        ("run.name=..", "run.name: must be a non-empty name"),
        ("run.storage_path=ftp://host/runs", "run.storage_path: unsupported scheme 'ftp' in 'ftp://host/runs'"),
        ("model.image_size=32", "model.image_size: 32 but"),
        ("model.in_channels=3", "model.in_channels: 3 but"),
        ("data.on_error=skip", "data.on_error: 'skip' is not supported by data.backend='dali'"),
        ("run.checkpoint_every_steps=0", "run.checkpoint_every_steps: must be >= 1 (or null: per epoch only), got 0"),
    ],
)
def test_bad_config_is_one_line_and_exit_2_before_any_worker(override, key, small_fashion_mnist_shards, capsys):
    import ray

    rc = main(["--config", "demo", f"data.shards={small_fashion_mnist_shards}", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and key in err[0], err
    assert not ray.is_initialized()


def test_a_changed_shard_is_one_line_and_exit_2_before_any_worker(small_fashion_mnist_shards, tmp_path, capsys,
                                                                    monkeypatch):
    import shutil

    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "cache"))
    shards = tmp_path / "shards"
    shutil.copytree(small_fashion_mnist_shards, shards)
    tar = sorted((shards / "test").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF  # size, count and index unchanged: only the checksum can tell
    tar.write_bytes(bytes(data))
    rc = main(["--config", "demo", f"data.shards={shards}", "data.eval_split=test"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"data.shards: shard {tar}: sha256" in err[0], err


def test_unknown_config_name_lists_shipped():
    with pytest.raises(ConfigError, match="unknown config 'nope'; shipped: cifar10, cifar100, cifar10_subset, demo"):
        load_config("nope")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model:\n  classifiers: [a, b\n", r"bad.yaml:\d+:\d+: malformed YAML"),
        ("- model\n- data\n", "bad.yaml: the top level must be a mapping of sections"),
    ],
)
def test_bad_yaml_file_is_one_line_naming_the_file(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path, check_data=False)
    assert len(info.value.problems) == 1 and "\n" not in str(info.value)


def test_bf16_is_allowed_on_cpu_workers_and_reaches_deepspeed():
    from cascade_dist.runtime.worker import deepspeed_config

    cfg = load_config("demo", ["run.bf16=true", "run.channels_last=false"], check_data=False)
    assert cfg.run.bf16 and not cfg.run.use_gpu
    ds = deepspeed_config(cfg, world=2)
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (2 * cfg.data.batch_size, 1)


def test_object_store_options_are_checked_before_any_worker(small_fashion_mnist_shards, capsys, monkeypatch):
    """An s3:// storage_path with the default (SQLite) tracking store, and s3:// shards with DALI:
    one line each, naming the option to set, exit 2 before Ray starts."""
    import ray

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = main(["--config", "demo", f"data.shards={small_fashion_mnist_shards}", "run.storage_path=s3://bucket/runs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("cascade_dist.train: config error: tracking.tracking_uri: run.storage_path=s3://bucket/runs")
    cfg = load_config("demo", ["run.storage_path=s3://bucket/runs", "tracking.enabled=false"], check_data=False)
    assert cfg.run.storage_path == "s3://bucket/runs"  # no tracking: nothing to refuse
    with pytest.raises(ConfigError, match=r"^data\.shards: s3://bucket/shards is on object storage, and data\.backend="
                                          r"dali reads local files only: stage .*`python -m data_shards stage "
                                          r"s3://bucket/shards /local/shards`"):
        load_config("demo", ["data.shards=s3://bucket/shards", "data.backend=dali"], check_data=False)
    assert not ray.is_initialized()
