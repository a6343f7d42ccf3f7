"""Elastic restarts: a run resumed on another number of workers keeps its global batch.

The optimiser, its LR and the LR schedule were tuned for one global batch: `data.global_batch_size`,
by default `data.batch_size × run.num_workers` at the run's first start (recorded in the run
directory's config.yaml). A run resumed with another `run.num_workers` keeps it by gradient
accumulation: each optimiser step averages `global / (batch_size × num_workers)` micro-batches per
worker (DeepSpeed's `gradient_accumulation_steps`), so every epoch has the same number of optimiser
steps over the same images, and the loaders re-shard the data over the new workers (rank, world).
"""

from __future__ import annotations

from typing import Optional

KEY = "data.global_batch_size"


def accumulation_steps(global_batch: int, batch_size: int, workers: int) -> int:
    """Micro-batches per optimiser step: `global_batch / (batch_size × workers)`, a whole number."""
    per_step = batch_size * workers
    if global_batch % per_step:
        raise ValueError(f"{KEY}: {global_batch} is not a multiple of data.batch_size × run.num_workers = "
                         f"{batch_size} × {workers} = {per_step}; choose a batch_size and num_workers whose "
                         f"product divides it (the global batch of the run's first start)")
    return global_batch // per_step


def previous_global_batch(previous: Optional[dict]) -> Optional[int]:
    """The global batch of a run's last start, from its config.yaml (as plain data); None: no run yet."""
    if not previous:
        return None
    data, run = previous.get("data") or {}, previous.get("run") or {}
    if data.get("global_batch_size") is not None:
        return int(data["global_batch_size"])
    if data.get("batch_size") and run.get("num_workers"):  # a run directory older than this setting
        return int(data["batch_size"]) * int(run["num_workers"])
    return None


def resolve_global_batch(requested: Optional[int], batch_size: int, workers: int, previous: Optional[int]) -> int:
    """The run's global batch: the one asked for, else the previous start's, else batch_size × workers.
    A requested one that differs from the previous start's is refused (it would change the optimisation
    mid-run: start a new run.name)."""
    if requested is not None and previous is not None and requested != previous:
        raise ValueError(f"{KEY}: {requested}, but this run started with a global batch of {previous}; a "
                         f"resumed run keeps its global batch (leave {KEY} unset, or start a new run.name)")
    chosen = requested or previous or batch_size * workers
    accumulation_steps(chosen, batch_size, workers)
    return chosen
