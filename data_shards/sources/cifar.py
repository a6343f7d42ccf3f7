"""CIFAR-10 and CIFAR-100 from the official python tarballs or their extracted folders.

`cifar-10-python.tar.gz` holds `cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`;
`cifar-100-python.tar.gz` holds `cifar-100-python/{train,test,meta}`. Each batch is a pickled dict
(`b"data"`: N×3072 uint8, R plane then G then B, row-major 32×32) of any length N.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from cascade_dist.data.manifest import ShardError

from ..safe_pickle import safe_loads
from .base import Source, array_split

CIFAR10 = ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta")
CIFAR100 = ("cifar-100-python", ["train"], ["test"], "meta")


def _reader(src: Path, folder: str):
    """A function member name -> bytes over a tarball, the extracted folder, or its parent."""
    if src.is_file():
        try:
            tar = tarfile.open(src, "r:*")
            members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise ShardError(f"{src}: truncated or corrupt tar archive ({e})") from None

        def read(name: str) -> bytes:
            member = members.get(f"{folder}/{name}")
            if member is None:
                raise FileNotFoundError(f"{src}: no member {folder}/{name}")
            try:
                return tar.extractfile(member).read()
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                raise ShardError(f"{src}: member {folder}/{name} truncated or corrupt ({e})") from None

        return read, lambda name: f"{src}:{folder}/{name}"
    if not src.is_dir():
        raise FileNotFoundError(f"CIFAR source not found: {src} (expected the tarball, {folder}/ or its parent)")
    base = src / folder if (src / folder).is_dir() else src

    def read_file(name: str) -> bytes:
        path = base / name
        if not path.is_file():
            raise FileNotFoundError(f"missing CIFAR file {path}")
        return path.read_bytes()

    return read_file, lambda name: str(base / name)


def _unpickle(read, where, name: str, keys: list[bytes]) -> dict:
    try:
        d = safe_loads(read(name))
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError, AttributeError, MemoryError) as e:
        detail = " ".join(str(e).split())[:100]
        raise ShardError(f"{where(name)}: not a CIFAR pickle ({type(e).__name__}: {detail})") from None
    if not isinstance(d, dict):
        raise ShardError(f"{where(name)}: expected a pickled dict, got {type(d).__name__}")
    missing = [k.decode() for k in keys if k not in d]
    if missing:
        raise ShardError(f"{where(name)}: missing key(s) {', '.join(missing)}")
    return d


def _batches(read, where, names: list[str], label_key: bytes, extra: list[bytes]):
    """Concatenate batches; returns images N×32×32×3, labels, origins, per-sample extras."""
    images, labels, origins, extras = [], [], [], {k: [] for k in extra + [b"filenames"]}
    for name in names:
        d = _unpickle(read, where, name, [b"data", label_key, *extra])
        data, lab = d[b"data"], d[label_key]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", type(data).__name__)
            raise ShardError(f"{where(name)}: data is {getattr(data, 'dtype', '')} {shape}, expected N×3072 uint8")
        if len(lab) != len(data) or any(len(d[k]) != len(data) for k in extra):
            raise ShardError(f"{where(name)}: {len(data)} images but {len(lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(int(x) for x in lab)
        origins.extend((name, i) for i in range(len(data)))
        for k in extras:
            extras[k].extend(d.get(k, [None] * len(data)))
    return np.concatenate(images), labels, origins, extras


def _names(meta: dict, key: bytes, where: str) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list):
        raise ShardError(f"{where}: missing {key.decode()} list")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _decode(x) -> str | None:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else x


def open_cifar10(src: Path) -> Source:
    folder, train, test, meta_name = CIFAR10
    read, where = _reader(src, folder)
    class_names = _names(_unpickle(read, where, meta_name, [b"label_names"]), b"label_names", where(meta_name))
    splits = {}
    for split, names in (("train", train), ("test", test)):
        images, labels, origins, extras = _batches(read, where, names, b"labels", [])
        files = extras[b"filenames"]
        splits[split] = array_split(
            images, labels, lambda i, o=origins: f"{where(o[i][0])}[{o[i][1]}]",
            lambda i, f=files: {"filename": _decode(f[i])} if f[i] is not None else {})
    return Source("cifar10", class_names, splits)


def open_cifar100(src: Path) -> Source:
    folder, train, test, meta_name = CIFAR100
    read, where = _reader(src, folder)
    meta = _unpickle(read, where, meta_name, [b"fine_label_names", b"coarse_label_names"])
    class_names = _names(meta, b"fine_label_names", where(meta_name))
    coarse_names = _names(meta, b"coarse_label_names", where(meta_name))
    splits = {}
    for split, names in (("train", train), ("test", test)):
        images, labels, origins, extras = _batches(read, where, names, b"fine_labels", [b"coarse_labels"])
        files, coarse = extras[b"filenames"], extras[b"coarse_labels"]

        def meta_of(i, f=files, c=coarse):
            c_i = int(c[i])
            m = {"coarse_label": c_i, "coarse_name": coarse_names[c_i] if 0 <= c_i < len(coarse_names) else None}
            if f[i] is not None:
                m["filename"] = _decode(f[i])
            return m

        splits[split] = array_split(images, labels, lambda i, o=origins: f"{where(o[i][0])}[{o[i][1]}]", meta_of)
    return Source("cifar100", class_names, splits)
