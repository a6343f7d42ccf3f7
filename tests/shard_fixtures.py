"""Session fixtures that build real shards once per test run (star-imported by conftest.py).

`fashion_mnist_shards`: the full real Fashion-MNIST (60k/10k) with `--val-split 5000`
(train 55000, val 5000, test 10000). `cifar10_subset_shards`: the real CIFAR-10 subset
(train 8336, test 4599). Both return the output folder holding `train/`, `test/` (and `val/`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data_shards import convert


@pytest.fixture(scope="session")
def fashion_mnist_shards(tmp_path_factory, fashion_mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("shards") / "fashion-mnist"
    convert("fashion-mnist", fashion_mnist_dir, out, val_split=5000, log=lambda msg: None)
    return out


@pytest.fixture(scope="session")
def cifar10_subset_shards(tmp_path_factory, cifar10_subset_tarball) -> Path:
    out = tmp_path_factory.mktemp("shards") / "cifar10-subset"
    convert("cifar10", cifar10_subset_tarball, out, log=lambda msg: None)
    return out
