"""MLflow, written from rank 0: params (the resolved config), per-epoch metrics, final artifacts.

The store is `tracking.tracking_uri`, else $MLFLOW_TRACKING_URI, else a local sqlite store beside
the run (`<storage_path>/mlflow.db`): no server needed. With a sqlite store the artifacts go to
`<storage_path>/mlartifacts`, also when that is an object store (s3://bucket/runs/mlartifacts); a
storage_path on an object store needs a tracking URI of its own (no SQLite file can live there).
A resumed run (same run id in the checkpoint) continues the same MLflow run.

A tracking outage never stops training: metrics the server cannot take are kept in the run
directory's `unsent_metrics.jsonl` and re-sent when the run resumes (or by `resend_unsent`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from ..data import storage
from ..data.redact import redact_tree
from .config import Config, save_config, to_container
from ..method.evaluate import EvalReport
from ..inference.plots import accuracy_matrix_plot, exit_histogram, tradeoff_plot

log = logging.getLogger(__name__)
UNSENT = "unsent_metrics.jsonl"
OUTAGE = (MlflowException, OSError)  # what MLflow raises when its server is gone (requests errors are OSErrors)


def tracking_uri(cfg: Config) -> str:
    """The store's URI without any `user:password@`: credentials in an http(s) URI move to
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD of this process (MLflow's own basic-auth
    variables), so MLflow never prints them ("View run at ...") and nothing logs them."""
    uri = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        root = storage.resolve_storage(cfg.run.storage_path)
        if storage.is_uri(root):  # config validation says so first (`config._check_tracking_store`)
            raise ValueError(f"tracking.tracking_uri: no default SQLite store on object storage ({root}): set one")
        return f"sqlite:///{Path(root) / 'mlflow.db'}"
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        userinfo, _, host = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
        if password:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
        uri = urlunsplit(parts._replace(netloc=host))
    return uri


def server_problem(cfg: Config, timeout_s: float = 5.0) -> str | None:
    """One line when the tracking store is an MLflow server that does not answer its `/health`
    endpoint within `timeout_s` (checked before any worker starts; MLflow itself would retry for
    minutes inside the workers); None when it answers or the store is not a server."""
    uri = tracking_uri(cfg)
    if not cfg.tracking.enabled or not uri.startswith(("http://", "https://")):
        return None
    key = "tracking.tracking_uri" if cfg.tracking.tracking_uri else "MLFLOW_TRACKING_URI"
    parts = urlsplit(uri)  # userinfo already moved out by tracking_uri
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
    try:
        with urllib.request.urlopen(f"{shown.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return None
            reason = f"HTTP {response.status}"
    except OSError as err:  # refused, unresolvable, timed out, an HTTP error status
        reason = str(getattr(err, "reason", None) or err)
    return f"{key}: no MLflow server answers at {shown} ({reason}); start it or fix the URI"


def ensure_experiment(cfg: Config) -> str:
    """The experiment id, created on first use (artifacts beside a local store)."""
    mlflow.set_tracking_uri(tracking_uri(cfg))
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri(cfg).startswith("sqlite:"):  # a server keeps its own artifact store
        location = artifact_location(cfg.run.storage_path)
    return mlflow.create_experiment(cfg.tracking.experiment, artifact_location=location)


def artifact_location(storage_path: str) -> str:
    """`<storage_path>/mlartifacts` as MLflow takes it: a `file://` URI for a local path, the
    object-store URI itself for a remote one (MLflow writes s3:// through boto3, gs:// through
    google-cloud-storage)."""
    root = storage.resolve_storage(storage_path)
    where = storage.join(root, "mlartifacts")
    return where if storage.is_uri(where) else Path(where).as_uri()


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
    """One MLflow run per training run; `run_id` given → that run is resumed (and the metrics an
    outage kept in `spool_dir` are sent first)."""

    def __init__(self, cfg: Config, run_id: str | None = None, spool_dir: str | Path | None = None):
        self.cfg = cfg
        self.spool = storage.join(spool_dir, UNSENT) if spool_dir is not None else None
        experiment_id = ensure_experiment(cfg)
        tags = {"mlflow.parentRunId": cfg.tracking.parent_run_id} if cfg.tracking.parent_run_id else None
        self.run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=None if run_id else cfg.run.name, tags=tags)
        self.run_id = self.run.info.run_id
        if run_id is None:
            mlflow.log_params(flatten(redact_tree(to_container(cfg))))
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.log_artifact(str(save_config(cfg, Path(tmp) / "config.yaml")))
        if self.spool is not None:
            resend_unsent(self.spool, self.run_id)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Send the epoch's metrics; if the server cannot take them, keep them in the spool file."""
        values = {k: float(v) for k, v in metrics.items() if k != "epoch"}
        try:
            mlflow.log_metrics(values, step=epoch, run_id=self.run_id)
        except OUTAGE as err:
            if self.spool is None:
                raise
            storage.append_text(self.spool, json.dumps({"run_id": self.run_id, "step": epoch, "metrics": values}) + "\n")
            log.warning("tracking server unreachable (%s): epoch %d's metrics kept in %s, re-sent on resume",
                        type(err).__name__, epoch, self.spool)

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

    def finish(self, model, report: EvalReport | None) -> None:
        """The final artifacts and the end of the run; an outage here is a warning (the checkpoints
        hold report.json and the weights), not a failed run."""
        try:
            if report is not None:
                self.log_final(model, report)
            self.end()
        except OUTAGE as err:
            log.warning("tracking server unreachable (%s): final artifacts not logged; the last checkpoint "
                        "holds report.json and cascade.pt", type(err).__name__)


def resend_unsent(spool: str | Path, run_id: str | None = None) -> int:
    """Send the metrics an outage kept in `spool` (an `unsent_metrics.jsonl`) to the current
    tracking store, then remove the file; returns how many epochs were sent."""
    if not storage.is_file(spool):
        return 0
    records = [json.loads(line) for line in storage.read_text(spool).splitlines() if line.strip()]
    for rec in records:
        mlflow.log_metrics(rec["metrics"], step=rec["step"], run_id=run_id or rec["run_id"])
    storage.delete(spool)
    log.warning("re-sent %d epoch(s) of metrics kept in %s", len(records), spool)
    return len(records)


def log_cascade_model(model) -> None:
    """Log the cascade in MLflow's `pt2` (torch.export) format: loading it unpickles nothing.

    What is exported is a CPU float32 copy, whatever the device and dtype of `model` (a GPU or bf16
    engine's module): the float32 example and signature then match its weights."""
    import copy

    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    shape = (-1, *model.input_shape)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]))
    example = np.zeros((2, *model.input_shape), dtype=np.float32)  # batch > 1: a dynamic batch dim
    model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    mlflow.pytorch.log_model(model, name="model", input_example=example, signature=signature,
                             serialization_format="pt2", pip_requirements=["torch", "cascade_dist"])
