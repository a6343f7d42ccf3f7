"""`python -m cascade_dist.train [--config NAME|FILE] [dotted.key=value ...]`

Parse and validate the config → launch a Ray `TorchTrainer` whose workers run
`worker.train_loop_per_worker` → print the summary. The same command runs on a laptop (a local
Ray instance), under `ray job submit` (it joins the cluster through RAY_ADDRESS) and in a Tune trial.
A run whose name already has state under `run.storage_path` resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data import storage
from ..data.redact import redact_tree
from .config import DEFAULT_CONFIG, Config, ConfigError, load_config, save_config, shipped_configs, to_container
from ..method.evaluate import EvalReport


@dataclass
class TrainResult:
    report: EvalReport | None
    checkpoint_path: str | None
    """A local path, or the checkpoint's URI when run.storage_path is one."""
    metrics: dict | None
    run_dir: Path | str
    trained: bool = True
    """False when the run was already trained to its end and was only read back (no worker started)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cascade_dist.train", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"a shipped config ({', '.join(shipped_configs())}) or a YAML file (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. objective.alpha=0.05 run.num_workers=4")
    return parser.parse_args(argv)


def run(cfg: Config, callbacks: Sequence = ()) -> TrainResult:
    """Train `cfg` on Ray; returns the final evaluation report and checkpoint. `callbacks`: Ray Train
    callbacks (`ray.train.UserCallback`) for the run, e.g. the Tune sweep's per-epoch reports."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .checkpoint import drop_missing_checkpoints
    from .worker import train_loop_per_worker

    cfg.run.storage_path = storage.resolve_storage(cfg.run.storage_path)
    cfg.data.shards = storage.resolve_storage(cfg.data.shards)
    cfg.tracking.tracking_uri = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    run_dir = storage.location(storage.join(cfg.run.storage_path, cfg.run.name))
    drop_missing_checkpoints(run_dir)  # a checkpoint deleted by hand: resume from the newest left
    keep_the_runs_batch(cfg, run_dir)
    done = finished(cfg, run_dir)
    if done is not None:
        return done
    init_ray(cfg)
    problem = storage.node_local_problem(cfg.run.storage_path, ray.nodes(), shared=cfg.run.storage_shared)
    if problem:
        raise ConfigError([problem])
    save_config(cfg, storage.join(run_dir, "config.yaml"))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=to_container(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker=worker_resources(cfg),
                                     placement_strategy=cfg.run.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run.name,
            **storage.ray_storage(cfg.run.storage_path),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep),
            callbacks=list(callbacks),
        ),
    )
    return train_result(trainer.fit(), run_dir)


def keep_the_runs_batch(cfg: Config, run_dir: Path | str) -> None:
    """Set `data.global_batch_size`: the one this run started with (its config.yaml in `run_dir`),
    so that a resume on another `run.num_workers` accumulates gradients to the same global batch
    (`runtime.elastic`). A conflicting global batch, or a world change under ZeRO (whose optimiser
    partitions are saved per rank), is a ConfigError naming the key."""
    from omegaconf import OmegaConf

    from .elastic import previous_global_batch, resolve_global_batch

    config_file = storage.join(run_dir, "config.yaml")
    previous = None
    if storage.is_file(config_file):
        previous = OmegaConf.to_container(OmegaConf.create(storage.read_text(config_file)))
    try:
        cfg.data.global_batch_size = resolve_global_batch(cfg.data.global_batch_size, cfg.data.batch_size,
                                                          cfg.run.num_workers, previous_global_batch(previous))
    except ValueError as err:
        raise ConfigError([f"{err} ({config_file})"]) from None
    before = ((previous or {}).get("run") or {}).get("num_workers")
    if before is not None and before != cfg.run.num_workers and cfg.run.zero_stage > 0:
        raise ConfigError([f"run.num_workers: {cfg.run.num_workers}, but {config_file} ran on {before} workers "
                           f"with run.zero_stage={cfg.run.zero_stage}: ZeRO saves each rank's optimiser partition, "
                           f"so resume on {before} workers (or train with run.zero_stage=0)"])


def worker_resources(cfg: Config) -> dict[str, float]:
    """What one Train worker holds: `run.cpus_per_worker` CPUs, and one GPU with `run.use_gpu`."""
    return {"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if cfg.run.use_gpu else {})}


def finished(cfg: Config, run_dir: Path | str) -> TrainResult | None:
    """The result of a run already trained to its last epoch with this very config, read back
    without starting any worker (so `make demo` run again prints its result at once); else None."""
    from omegaconf import OmegaConf
    from ray.train import Result

    from .checkpoint import SNAPSHOT

    config_file = storage.join(run_dir, "config.yaml")
    if not storage.is_file(storage.join(run_dir, SNAPSHOT)) or not storage.is_file(config_file):
        return None
    if OmegaConf.to_container(OmegaConf.create(storage.read_text(config_file))) != redact_tree(to_container(cfg)):
        return None
    where = storage.ray_storage(str(run_dir))
    try:
        result = Result.from_path(where["storage_path"], storage_filesystem=where.get("storage_filesystem"))
    except (RuntimeError, OSError, ValueError):
        return None
    metrics = result.metrics or {}
    if metrics.get("epoch") != cfg.optim.epochs - 1 or "epoch_step" in metrics:  # a step checkpoint: mid-epoch
        return None
    return train_result(result, run_dir, trained=False)


def train_result(result, run_dir: Path | str, trained: bool = True) -> TrainResult:
    """The final report (report.json of the last checkpoint), checkpoint and metrics of a Ray result."""
    report, path = None, None
    if result.checkpoint is not None:
        path = storage.to_uri(result.checkpoint.filesystem, result.checkpoint.path)
        report_file = storage.join(path, "report.json")
        if storage.is_file(report_file):
            report = EvalReport(**json.loads(storage.read_text(report_file)))
    return TrainResult(report, path, result.metrics, run_dir, trained)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray reads it at import: "0" makes a local instance listen on 127.0.0.1 only (Ray 2.60 on Linux
binds the interface address without it)."""


def local_ray_on_loopback() -> None:
    """With no cluster to join (no RAY_ADDRESS), the Ray instance a command starts binds loopback
    only (DESIGN §4). Call it before `import ray`: the entry points' first step."""
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(LOOPBACK_ENV, "0")


def init_ray(cfg: Config) -> bool:
    """Join the cluster in RAY_ADDRESS, or start a local instance; True when this call started Ray."""
    local_ray_on_loopback()
    import ray

    if ray.is_initialized():
        return False
    ray.init(runtime_env={"env_vars": worker_env(cfg)})
    if not os.environ.get("RAY_ADDRESS"):
        print(f"Ray: a local instance on {ray.util.get_node_ip_address()}", flush=True)
    return True


STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
"""Object-store settings the workers get from the driver: where, never who. Credentials
(AWS_SECRET_ACCESS_KEY, ...) are not forwarded (Ray logs a job's runtime env): a local Ray instance's
workers inherit them with the driver's environment, a cluster's nodes have their own (cluster/README.md)."""


def worker_env(cfg: Config) -> dict[str, str]:
    """Environment the workers need (DeepSpeed's accelerator, the tracking store, the object store's endpoint)."""
    accelerator = os.environ.get("DS_ACCELERATOR", "cuda" if cfg.run.use_gpu else "cpu")
    env = {"DS_ACCELERATOR": accelerator, "PYTHONUNBUFFERED": "1",
           # an unreachable tracking server costs a request ~1 min, not MLflow's default ~5 (7 retries)
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
           "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")}
    env.update({k: os.environ[k] for k in STORAGE_ENV if os.environ.get(k)})
    # MLFLOW_TRACKING_URI is not forwarded: Ray logs a runtime env, and the URI may hold a password.
    # `run` puts it in the config, which reaches the workers unlogged and is redacted wherever written.
    return env


def main(argv=None) -> int:
    local_ray_on_loopback()
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        from .tracking import server_problem

        problem = server_problem(cfg)
        if problem:
            raise ConfigError([problem])
        controlled = None
        if cfg.run.control and cfg.optim.joint_epochs > 0 and cfg.run.warm_start is None:
            from .control import run_with_control

            controlled = run_with_control(cfg, run)
            result = controlled.cascade
        else:
            result = run(cfg)
    except ConfigError as err:  # also a node-local storage_path met on a multi-node cluster
        return err.print_lines("cascade_dist.train")
    if result.report is None or (controlled and controlled.static.report is None):
        print("cascade_dist.train: the run produced no evaluation report", file=sys.stderr)
        return 1
    print(f"\n{result.report.table(cfg.model.classifiers)}")
    if controlled:
        print(f"\nthe static control, each classifier trained alone for the same epochs:\n{controlled.table(cfg)}")
    print(f"\ncheckpoint: {result.checkpoint_path}\nrun directory: {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
