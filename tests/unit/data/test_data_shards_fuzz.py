"""Converter fuzz: seeded mutations (flipped bytes, truncations, insertions) of small valid IDX, CIFAR
pickle and ImageNet32 npz files. Every reader either returns or raises a `ShardError`: one line of
under 300 characters naming the file (the CLI prints it and exits 2), never another exception, and
no mutated size field makes it allocate more than a few times the file."""

from __future__ import annotations

import gzip
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cascade_dist.data.manifest import ShardError
from data_shards.idx import read_idx
from data_shards.sources.cifar import open_cifar10
from data_shards.sources.imagenet32 import _load_npz

CASES = 300  # per format: 900 in all
PEAK_LIMIT = 64 << 20  # bytes: the inputs are a few kB


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:  # flip 1-8 bytes, half of them in the first 64 (headers, pickle opcodes)
        for _ in range(rng.integers(1, 9)):
            at = rng.integers(min(64, len(data))) if rng.random() < 0.5 else rng.integers(len(data))
            data[at] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        del data[rng.integers(len(data)):]
    else:  # insert random bytes
        at = rng.integers(len(data))
        data[at:at] = rng.integers(0, 256, rng.integers(1, 16), dtype=np.uint8).tobytes()
    return bytes(data)


def idx_file(tmp_path: Path):
    arr = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    raw = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    path = tmp_path / "train-images-idx3-ubyte"
    return raw, path, lambda: read_idx(path)


def cifar_file(tmp_path: Path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    meta = {b"num_cases_per_batch": 4, b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"labels": [int(x) for x in rng.integers(0, 10, 4)],
             b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"filenames": [f"{name}_{i}.png".encode() for i in range(4)]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    path = folder / "data_batch_1"
    return path.read_bytes(), path, lambda: open_cifar10(tmp_path)


def npz_file(tmp_path: Path):
    rng = np.random.default_rng(2)
    path = tmp_path / "val_data.npz"
    np.savez(path, data=rng.integers(0, 256, (4, 3072), dtype=np.uint8), labels=[1, 2, 3, 4])
    return path.read_bytes(), path, lambda: _load_npz(path)


@pytest.mark.parametrize("make", [idx_file, cifar_file, npz_file], ids=["idx", "cifar-pickle", "npz"])
def test_mutated_sources_raise_one_line_shard_errors(make, tmp_path):
    valid, path, read = make(tmp_path)
    path.write_bytes(valid)
    read()  # the unmutated file reads
    rng = np.random.default_rng(1234)
    bad = []
    for case in range(CASES):
        data = mutate(valid, rng)
        path.write_bytes(data)
        tracemalloc.start()
        try:
            read()
        except ShardError as err:
            msg = str(err)
            if "\n" in msg or len(msg) >= 300 or str(path.name) not in msg:
                bad.append(f"case {case}: poor message {msg[:400]!r}")
        except Exception as err:  # noqa: BLE001 - what the fuzz is looking for
            bad.append(f"case {case}: {type(err).__name__}: {str(err)[:200]}")
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        if peak > PEAK_LIMIT:
            bad.append(f"case {case}: peak {peak >> 20} MiB")
    assert not bad, "\n".join(bad)
