"""The `data` config section: which shards, which loader backend, and the batch sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..method.sections import Problem, Section
from . import storage
from .contract import BACKENDS, ON_ERROR, local_files_only


@dataclass
class DataConfig(Section):
    """Shards written by `python -m data_shards` and the loader over them."""

    shards: str = "shards/fashion-mnist"
    """A local folder, or a URI (s3://bucket/shards) that the torch backend streams from."""
    backend: str = "dali"
    batch_size: int = 128
    """Per worker (a micro-batch): the global batch is batch_size × num_workers × accumulation steps."""
    global_batch_size: Optional[int] = None
    """Images per optimiser step over all workers; None: batch_size × run.num_workers at the run's
    first start. A run resumed with another run.num_workers keeps it by gradient accumulation
    (`runtime.elastic`)."""
    eval_batch_size: int = 256
    eval_split: str = "test"
    calibration_split: str = "val"
    """Held-out split on which budget mode calibrates the test-time thresholds (when the shards have it)."""
    loader_workers: int = 1
    augment: bool = True
    on_error: str = "raise"

    def problems(self) -> list[Problem]:
        out = []
        if self.backend not in BACKENDS:
            out.append(("backend", f"expected 'dali' or 'torch', got {self.backend!r}"))
        if self.on_error not in ON_ERROR:
            out.append(("on_error", f"expected 'raise' or 'skip', got {self.on_error!r}"))
        elif self.on_error == "skip" and self.backend == "dali":
            out.append(("on_error", "'skip' is not supported by data.backend='dali' (DALI cannot drop an "
                                    "undecodable image); use data.backend=torch or data.on_error=raise"))
        if problem := storage.scheme_problem(self.shards):
            out.append(("shards", problem))
        elif self.backend == "dali" and storage.is_uri(self.shards):
            out.append(("shards", local_files_only(self.shards)))
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.global_batch_size is not None and self.global_batch_size < 1:
            out.append(("global_batch_size", f"must be >= 1 (or null), got {self.global_batch_size}"))
        if self.loader_workers < 0:
            out.append(("loader_workers", f"must be >= 0, got {self.loader_workers}"))
        return out
