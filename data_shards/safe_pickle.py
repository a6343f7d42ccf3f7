"""Load the CIFAR python batches without unpickling arbitrary objects.

The official files are pickled dicts of lists, bytes and numpy arrays; the only globals they
need rebuild a numpy array. `find_class` allows exactly those and refuses everything else.
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
import warnings

import numpy as np
from numpy._core import multiarray, numeric

def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of bytes use it (latin1), and for nothing else."""
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"bytes encoded as {encoding[:20]!r}, expected latin1")
    return codecs.encode(text, "latin1", errors)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,  # bytes in protocol-2 pickles written by Python 3
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` returns only the numpy array rebuilders in `_ALLOWED`."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def check_opcodes(data: bytes) -> None:
    """Walk the opcodes without running them (`pickletools.genops`): a memo index beyond the number
    of opcodes (the C unpickler grows its memo to any index: a flipped byte asks for gigabytes) or a
    persistent id is refused, and a truncated stream fails here."""
    count = 0
    with warnings.catch_warnings():  # a corrupt STRING opcode's escapes warn while decoded
        warnings.simplefilter("ignore", DeprecationWarning)
        for op, arg, _ in pickletools.genops(data):
            count += 1
            if op.name in _MEMO_OPS and int(arg) > count:
                raise pickle.UnpicklingError(f"memo index {arg} at opcode {count} (a corrupt pickle)")
            if op.name in ("PERSID", "BINPERSID"):
                raise pickle.UnpicklingError("persistent ids are not used by CIFAR pickles")


def safe_loads(data: bytes):
    """`pickle.loads(data, encoding="bytes")` restricted to numpy arrays and plain containers, after
    `check_opcodes`."""
    check_opcodes(data)
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
