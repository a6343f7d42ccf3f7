"""Loaders over WebDataset shards: NVIDIA DALI or webdataset + torch DataLoader, one contract.

>>> loader = make_loader("shards/fashion-mnist", "train", 256, backend="dali", train=True,
...                      rank=rank, world_size=world_size, seed=0)
>>> for epoch in range(epochs):
...     loader.set_epoch(epoch)
...     for images, labels in loader:   # float32 (N, C, H, W) normalised, int64 (N,), on device
...         ...

See :mod:`cascade_dist.data.contract` for the batch contract and the sharding across ranks,
:mod:`cascade_dist.data.augment` for the augmentation spec both backends apply,
:mod:`cascade_dist.data.dali` and :mod:`cascade_dist.data.torch_loader` for the backends.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .augment import AugmentSpec, Normalization, default_augment, resolve_augment
from .config import DataConfig
from . import storage
from .contract import BACKENDS, ON_ERROR, DataError, Loader, local_files_only, open_split

__all__ = [
    "AugmentSpec",
    "DataConfig",
    "DataError",
    "Loader",
    "Normalization",
    "default_augment",
    "make_loader",
    "resolve_augment",
]


def make_loader(
    shard_dir: str | Path,
    split: str,
    batch_size: int,
    *,
    backend: str = "dali",
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    augment: AugmentSpec | bool | None = None,
    on_error: str = "raise",
) -> Loader:
    """A loader of ``shard_dir/split`` for this rank.

    Args:
        shard_dir: the directory written by ``python -m data_shards`` (holding ``train/``, ``val/``,
            ``test/`` with shards, index files and ``manifest.json``), or its URI on an object store
            (``s3://bucket/shards``: the torch backend streams it; DALI needs a local copy, made by
            ``python -m data_shards stage URI DIR``).
        split: "train", "val" or "test".
        batch_size: samples per batch (per rank).
        backend: "dali" (NVIDIA DALI; GPU decoding with ``device="cuda"``) or "torch" (webdataset +
            torch DataLoader workers).
        train: training order and augmentation (shuffled, partial batch dropped, equal batch count
            on every rank) or evaluation (fixed order, every sample once across ranks).
        rank, world_size: this process's place among the data-parallel workers.
        seed: seed of the shuffles and augmentation (the same on every rank).
        num_workers: DataLoader worker processes (torch) or DALI CPU threads (dali).
        device: where the batches are delivered ("cpu", "cuda", "cuda:1").
        augment: None = the data set's default spec for ``train``; False = no random augmentation;
            or an explicit :class:`AugmentSpec`.
        on_error: "raise" (stop on the first bad sample, naming shard and key) or "skip" (torch
            backend: skip bad samples and count them in ``loader.skipped``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown loader backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"unknown on_error {on_error!r}: expected one of {', '.join(ON_ERROR)}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= int(rank) < int(world_size):
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if backend == "dali" and storage.is_uri(shard_dir):
        raise DataError(f"data.shards: {local_files_only(str(shard_dir))}")
    info = open_split(shard_dir, split)
    if int(world_size) > info.num_samples:
        raise ValueError(f"world_size {world_size} exceeds the {info.num_samples} samples of {info.split_dir}")
    kw = dict(
        batch_size=int(batch_size),
        train=bool(train),
        rank=int(rank),
        world_size=int(world_size),
        seed=int(seed),
        num_workers=int(num_workers),
        device=torch.device(device),
        spec=resolve_augment(augment, info.manifest, bool(train)),
        on_error=on_error,
    )
    if backend == "dali":
        from .dali import DaliLoader

        return DaliLoader(info, **kw)
    from .torch_loader import TorchLoader

    return TorchLoader(info, **kw)
