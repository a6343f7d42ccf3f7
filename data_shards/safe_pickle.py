"""Load the CIFAR python batches without unpickling arbitrary objects.

The official files are pickled dicts of lists, bytes and numpy arrays; the only globals they
need rebuild a numpy array. `find_class` allows exactly those and refuses everything else.
"""

from __future__ import annotations

import codecs
import io
import pickle

import numpy as np
from numpy._core import multiarray, numeric

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` returns only the numpy array rebuilders in `_ALLOWED`."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def safe_loads(data: bytes):
    """`pickle.loads(data, encoding="bytes")` restricted to numpy arrays and plain containers."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
