"""The offline tools' one pass over a split, on the cluster (threshold baselines, the Table-2
protocol): `run.num_workers` Ray tasks each load the checkpoint, read their shard of the split (the
loaders' rank/world sharding: every image once) on their device, a GPU where the run uses them, and
return their `ExitTable` (N·K numbers); the parts are concatenated. Nothing of size N×K×C leaves a
batch. Without a Ray runtime the pass runs in this process.
"""

from __future__ import annotations

from typing import Sequence

from ..data import make_loader
from ..inference.calibration import collect_exit_table
from ..inference.weights import load_cascade
from ..method.exit_table import ExitTable
from .launch import worker_resources


def table_part(checkpoint: str, shards: str, split: str, rank: int, world: int, batch_size: int, backend: str,
               scores: Sequence[str], use_gpu: bool = False, loader_workers: int = 1) -> ExitTable:
    """One worker's part: its shard of `split` through the checkpoint's cascade, as exit-table rows."""
    import torch

    loaded = load_cascade(checkpoint)
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    loader = make_loader(shards, split, batch_size, backend=backend, train=False, rank=rank, world_size=world,
                         num_workers=loader_workers, device=device)
    return collect_exit_table(loaded.model.to(device), loader, loaded.topk, loaded.eval_config.ensemble,
                              tuple(scores), device)


def split_tables(checkpoint, cfg, splits: Sequence[str], scores: Sequence[str] = ("policy",),
                 num_workers: int | None = None) -> dict[str, ExitTable]:
    """Each split's `ExitTable` under the checkpoint's cascade, from `num_workers` (default
    `run.num_workers`) Ray tasks with the run's per-worker resources."""
    import ray

    world = num_workers or cfg.run.num_workers
    kw = dict(batch_size=cfg.data.eval_batch_size, backend=cfg.data.backend, scores=tuple(scores),
              use_gpu=cfg.run.use_gpu, loader_workers=cfg.data.loader_workers)
    if not ray.is_initialized():
        return {s: table_part(str(checkpoint), cfg.data.shards, s, 0, 1, **kw) for s in splits}
    held = worker_resources(cfg)  # what a Train worker of the run holds
    task = ray.remote(num_cpus=held["CPU"], num_gpus=held.get("GPU", 0))(table_part)
    refs = {s: [task.remote(str(checkpoint), cfg.data.shards, s, r, world, **kw) for r in range(world)] for s in splits}
    return {s: ExitTable.cat(ray.get(parts)) for s, parts in refs.items()}
