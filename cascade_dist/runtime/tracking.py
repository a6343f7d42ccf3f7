"""MLflow, written from rank 0: params (the resolved config), per-epoch metrics, final artifacts.

The store is `tracking.tracking_uri`, else $MLFLOW_TRACKING_URI, else a local sqlite store beside
the run (`<storage_path>/mlflow.db`, artifacts in `<storage_path>/mlartifacts`): no server needed.
A resumed run (same run id in the checkpoint) continues the same MLflow run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from .config import Config, save_config, to_container
from ..method.evaluate import EvalReport
from ..inference.plots import accuracy_matrix_plot, exit_histogram, tradeoff_plot


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.run.storage_path).resolve() / 'mlflow.db'}"


def ensure_experiment(cfg: Config) -> str:
    """The experiment id, created on first use (artifacts beside a local store)."""
    mlflow.set_tracking_uri(tracking_uri(cfg))
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri(cfg).startswith("sqlite:"):
        location = (Path(cfg.run.storage_path).resolve() / "mlartifacts").as_uri()
    return mlflow.create_experiment(cfg.tracking.experiment, artifact_location=location)


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


class RunTracker:
    """One MLflow run per training run; `run_id` given → that run is resumed."""

    def __init__(self, cfg: Config, run_id: str | None = None):
        self.cfg = cfg
        experiment_id = ensure_experiment(cfg)
        tags = {"mlflow.parentRunId": cfg.tracking.parent_run_id} if cfg.tracking.parent_run_id else None
        self.run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=None if run_id else cfg.run.name, tags=tags)
        self.run_id = self.run.info.run_id
        if run_id is None:
            mlflow.log_params(flatten(to_container(cfg)))
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.log_artifact(str(save_config(cfg, Path(tmp) / "config.yaml")))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch, run_id=self.run_id)

    def log_final(self, model, report: EvalReport) -> None:
        """report.json, the summary table, the three figures and the model."""
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "report.json").write_text(json.dumps(report.__dict__, indent=1))
            (tmp / "summary.txt").write_text(report.table(self.cfg.model.classifiers) + "\n")
            tradeoff_plot(report, tmp / "tradeoff.png", self.cfg.model.classifiers)
            accuracy_matrix_plot(report, tmp / "accuracy_matrix.png")
            exit_histogram(report, tmp / "exit_histogram.png")
            mlflow.log_artifacts(str(tmp), run_id=self.run_id)
        if self.cfg.tracking.log_model:
            log_cascade_model(model)

    def end(self) -> None:
        mlflow.end_run()


def log_cascade_model(model) -> None:
    """Log the cascade in MLflow's `pt2` (torch.export) format: loading it unpickles nothing."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    shape = (-1, *model.input_shape)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]))
    example = np.zeros((2, *model.input_shape), dtype=np.float32)  # batch > 1: a dynamic batch dim
    mlflow.pytorch.log_model(model.eval(), name="model", input_example=example, signature=signature,
                             serialization_format="pt2", pip_requirements=["torch", "cascade_dist"])
