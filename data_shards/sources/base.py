"""What every source yields: per split, the labels up front and a way to load sample i."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Sample:
    """One source image: a uint8 array (H×W or H×W×3) or encoded file bytes, its label, metadata."""

    image: np.ndarray | bytes
    label: int
    origin: str  # source file (and row) for error messages, e.g. "data_batch_1[17]"
    meta: dict | None = None


@dataclass
class SplitSource:
    """A split in source order: `labels[i]` is sample i's label, `load(i)` reads sample i."""

    labels: np.ndarray
    load: Callable[[int], Sample]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    """An opened data set: class names and its `train` (and usually `test`) splits."""

    dataset: str
    class_names: list[str]
    splits: dict[str, SplitSource]
    fixed_norm: tuple[list[float], list[float]] | None = None  # (mean, std); None: compute from train


def array_split(images: np.ndarray, labels, origin: Callable[[int], str],
                meta: Callable[[int], dict] | None = None) -> SplitSource:
    """A split over in-memory images (N×H×W or N×H×W×3 uint8) and labels."""
    labels = np.asarray(labels, dtype=np.int64)

    def load(i: int) -> Sample:
        return Sample(images[i], int(labels[i]), origin(i), meta(i) if meta else None)

    return SplitSource(labels, load)
