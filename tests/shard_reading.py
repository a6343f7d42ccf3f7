"""Reading written shards back, for the tests that check them sample by sample."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from cascade_dist.data.manifest import Manifest


def read_split(split_dir: Path) -> dict[str, dict[str, bytes]]:
    """All samples of a split: key -> {ext: bytes}, in shard order."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in Manifest.load(split_dir).shard_paths(split_dir):
        with tarfile.open(path) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def label_of(parts: dict[str, bytes]) -> int:
    label = int(parts["cls"])
    assert int.from_bytes(parts["lbl"], "little", signed=True) == label and len(parts["lbl"]) == 8
    return label


def histogram_stats(pixel_rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std (0-1 scale) of N×C uint8 pixels, via value counts (no big float copies)."""
    v = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(pixel_rows.shape[1]):
        counts = np.bincount(pixel_rows[:, c], minlength=256) / len(pixel_rows)
        mean.append(counts @ v)
        std.append(float(np.sqrt(counts @ (v - mean[-1]) ** 2)))
    return mean, std
