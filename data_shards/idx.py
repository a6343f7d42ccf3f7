"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or not)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from cascade_dist.data.manifest import ShardError

MAX_DIMS = 8
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Return the array stored in an IDX file; a bad header, a short body or a broken gzip names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ShardError(f"{path}: truncated or corrupt gzip ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ShardError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if not 1 <= ndim <= MAX_DIMS:
        raise ShardError(f"{path}: IDX header claims {ndim} dimensions (expected 1 to {MAX_DIMS})")
    if len(raw) < 4 + 4 * ndim:
        raise ShardError(f"{path}: IDX header truncated ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow on a corrupt header
    if len(body) != expected:
        raise ShardError(f"{path}: IDX body has {len(body)} bytes, header {dims} needs {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))
