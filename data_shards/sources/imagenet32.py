"""Downsampled ImageNet (Chrabaszcz et al. 2017): `train_data_batch_1..n.npz` and `val_data.npz`.

Each npz holds `data` (N×3·S·S uint8: R plane, G, B; S = 32 for ImageNet32, 16 or 64 work too)
and `labels` (1-based; stored 0-based). Class names come from a `map_clsloc.txt` beside the
batches (lines "wnid index name"), else "class_000".. .
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cascade_dist.data.manifest import ShardError

from .base import Sample, Source, SplitSource

NUM_CLASSES = 1000


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"missing ImageNet32 batch {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            data = z["data"] if "data" in files else None
            labels = np.asarray(z["labels"]) if "labels" in files else None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise ShardError(f"{path}: truncated or corrupt npz ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})") from None
    if data is None or labels is None:
        raise ShardError(f"{path}: expected arrays 'data' and 'labels', found {sorted(files)}")
    side = int(round((data.shape[1] / 3) ** 0.5)) if data.ndim == 2 else 0
    if data.dtype != np.uint8 or data.ndim != 2 or 3 * side * side != data.shape[1]:
        raise ShardError(f"{path}: data is {data.dtype} {data.shape}, expected N×3·S·S uint8")
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise ShardError(f"{path}: labels {labels.dtype} {labels.shape} for {len(data)} images")
    return data.reshape(-1, 3, side, side), labels.astype(np.int64) - 1


def _split(paths: list[Path]) -> SplitSource:
    """Concatenated batches, kept as separate arrays (ImageNet32 train is 3.8 GB)."""
    batches = [_load_npz(p) for p in paths]
    starts = np.cumsum([0] + [len(d) for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])

    def load(i: int) -> Sample:
        b = int(np.searchsorted(starts, i, side="right")) - 1
        row = i - starts[b]
        return Sample(batches[b][0][row].transpose(1, 2, 0), int(labels[i]), f"{paths[b]}[{row}]")

    return SplitSource(labels, load)


def _class_names(src: Path) -> list[str]:
    path = src / "map_clsloc.txt"
    if not path.is_file():
        return [f"class_{i:03d}" for i in range(NUM_CLASSES)]
    names = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].isdigit():
            raise ShardError(f"{path}:{n}: expected 'wnid index [name]', got {line!r}")
        names[int(parts[1]) - 1] = parts[2] if len(parts) > 2 else parts[0]
    if sorted(names) != list(range(len(names))):
        raise ShardError(f"{path}: class indices are not 1..{len(names)}")
    return [names[i] for i in range(len(names))]


def open_imagenet32(src: Path) -> Source:
    if not src.is_dir():
        raise FileNotFoundError(f"ImageNet32 source directory not found: {src}")
    found = {int(m.group(1)): p for p in src.glob("train_data_batch_*.npz")
             if (m := re.fullmatch(r"train_data_batch_(\d+)\.npz", p.name))}
    if not found:
        raise FileNotFoundError(f"no train_data_batch_1.npz in {src}")
    missing = [i for i in range(1, max(found) + 1) if i not in found]
    if missing:
        raise FileNotFoundError(f"missing ImageNet32 batch {src / f'train_data_batch_{missing[0]}.npz'}")
    train = _split([found[i] for i in sorted(found)])
    test = _split([src / "val_data.npz"])
    return Source("imagenet32", _class_names(src), {"train": train, "test": test})
