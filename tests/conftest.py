"""Shared fixtures: paths to the real data sets the tests use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
