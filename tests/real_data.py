"""Real Fashion-MNIST as in-memory tensors, for tests of the method that need no shards."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from data_shards.idx import read_idx


def fashion_mnist_tensors(root, split: str, n: int, start: int = 0, size: int = 28) -> TensorDataset:
    """Images start .. start+n of a Fashion-MNIST split, read straight from its idx files
    (average-pooled to `size` px: 14 px costs a quarter of the compute)."""
    prefix = "train" if split == "train" else "t10k"
    images = torch.from_numpy(read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[start:start + n].copy())
    labels = torch.from_numpy(read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")[start:start + n].astype("int64"))
    x = (images.float().div(255) - 0.2860) / 0.3530
    x = torch.nn.functional.avg_pool2d(x[:, None], 28 // size) if size != 28 else x[:, None]
    return TensorDataset(x, labels)
