"""Shared fixtures: paths to the real data sets the tests use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from object_store import *  # noqa: F401,F403  (a real S3-compatible server, moto_server)
from shard_fixtures import *  # noqa: F401,F403  (session fixtures over real shards)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CASCADE_SHARED_DIR", REPO.parent / "shared"))
FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CIFAR10_SUBSET = SHARED / "data" / "cifar10-subset" / "cifar-10-subset-python.tar.gz"


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST idx files (Debian `dataset-fashion-mnist`, installed by `make data`)."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"Fashion-MNIST missing under {FASHION_MNIST_DIR}: run `make data`")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def cifar10_subset_tarball() -> Path:
    """The real CIFAR-10 subset in the official python format (../shared/data/cifar10-subset)."""
    if not CIFAR10_SUBSET.is_file():
        pytest.fail(f"CIFAR-10 subset missing at {CIFAR10_SUBSET} (set CASCADE_SHARED_DIR)")
    return CIFAR10_SUBSET


# Ray binds loopback only, DeepSpeed takes the CPU accelerator (inherited by Ray's workers).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def write_idx(path: Path, array) -> None:
    """Write `array` (uint8) in the IDX format, gzipped, as the official files are."""
    import gzip
    import struct

    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


@pytest.fixture(scope="session")
def small_fashion_mnist_shards(tmp_path_factory, fashion_mnist_dir) -> Path:
    """Shards of a real Fashion-MNIST subset (first 1,000 train, 500 test images) for fast runs."""
    return fashion_mnist_subset_shards(tmp_path_factory, fashion_mnist_dir, "fashion-mnist-small", 1000, 500)


def fashion_mnist_subset_shards(tmp_path_factory, fashion_mnist_dir, name: str, n_train: int, n_test: int,
                                val_split: int = 0) -> Path:
    """Shards of the first n_train / n_test real Fashion-MNIST images (val_split of train held out)."""
    from data_shards.convert import convert
    from data_shards.idx import read_idx

    src = tmp_path_factory.mktemp(f"{name}-idx")
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3", "labels-idx1"):
            file = f"{prefix}-{kind}-ubyte.gz"
            write_idx(src / file, read_idx(fashion_mnist_dir / file)[:n])
    out = tmp_path_factory.mktemp(name) / "shards"
    convert("fashion-mnist", src, out, val_split=val_split, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray instance for the session's in-process training runs. Started after the S3 test
    server, whose AWS variables its workers inherit (as a user's local instance inherits the shell's)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()
