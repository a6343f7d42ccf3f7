"""Source registry: name -> `open(src) -> Source`, default paths and shard sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .base import Sample, Source, SplitSource
from .cifar import open_cifar10, open_cifar100
from .files import open_folder, open_imagenet
from .idx_files import DEFAULT_FASHION_MNIST_DIR, open_fashion_mnist, open_mnist
from .imagenet32 import open_imagenet32

SOURCES: dict[str, Callable[[Path], Source]] = {
    "fashion-mnist": open_fashion_mnist,
    "mnist": open_mnist,
    "cifar10": open_cifar10,
    "cifar100": open_cifar100,
    "imagenet32": open_imagenet32,
    "imagenet": open_imagenet,
    "folder": open_folder,
}
DEFAULT_SRC = {"fashion-mnist": DEFAULT_FASHION_MNIST_DIR}
DEFAULT_SHARD_SIZE = 10000  # small images: ~5-30 MB shards
SHARD_SIZES = {"imagenet": 1200, "folder": 1200}  # ~110 KB per ILSVRC JPEG -> ~130 MB shards


def open_source(name: str, src: Path) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name](Path(src))


__all__ = ["DEFAULT_SHARD_SIZE", "DEFAULT_SRC", "SHARD_SIZES", "SOURCES", "Sample", "Source", "SplitSource",
           "open_source"]
