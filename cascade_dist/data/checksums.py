"""What a node has checked of a shard, done once per shard per node and cached by (path, size,
mtime) -- a shard at a URI by (URI, size, last-modified) -- in `$CASCADE_CACHE_DIR`, else
`$XDG_CACHE_HOME/cascade_dist`, else `~/.cache/cascade_dist`:

- `cached_sha256`: each shard's sha256, checked against its manifest when a run opens its shards
  (file `shard-sha256.json`);
- `decode_checked`: the full `verify_shard` pass (components, `.cls`/`.lbl` agreement, every image
  decoded by PIL, sha256) of a split whose manifest does not say its writer decoded every image,
  before DALI reads it: DALI's CPU decoder can crash on a corrupt image instead of raising
  (file `shard-decoded.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from typing import Callable

from . import storage

CACHE_FILE = "shard-sha256.json"
DECODED_FILE = "shard-decoded.json"


def cache_path(name: str = CACHE_FILE) -> Path:
    root = os.environ.get("CASCADE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cascade_dist"
    return Path(root) / name


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable (another process mid-write): hash again


def file_sha256(path: Path | str, chunk: int = 1 << 22) -> str:
    """sha256 of a local file or of an object at a URI (read once, in chunks)."""
    h = hashlib.sha256()
    with storage.open_input(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_sha256(paths: list[Path | str]) -> dict[Path | str, str]:
    """sha256 of each file, hashed only when its (size, mtime) is not in the cache. A shard at a
    URI is keyed by its URI and the object's (size, last-modified): it is read once per node and
    object version, like a local shard (a rewritten object has a new last-modified time)."""
    return _cached(paths, CACHE_FILE, file_sha256)


def decode_checked(split_dir: Path, manifest) -> None:
    """`verify_shard` every shard of a split (raises `ShardError` naming shard and sample), skipping
    the shards this node has already passed at the same (size, mtime)."""
    from .manifest import verify_shard

    shards = {split_dir / s.file: s for s in manifest.shards}

    def check(path: Path) -> str:
        verify_shard(split_dir, shards[path], manifest, decode_images=True)
        return shards[path].sha256

    _cached(list(shards), DECODED_FILE, check)


def _cached(paths: list, name: str, compute: Callable) -> dict:
    """`compute(path)` of each file, run only when its (size, mtime) is not in cache file `name`."""
    cache_file = cache_path(name)
    cache = _read_cache(cache_file)
    out, changed = {}, False
    try:
        for path in paths:
            size, mtime_ns = storage.stat(path)
            key, stamp = storage.resolve_storage(path), [size, mtime_ns]
            hit = cache.get(key)
            if hit and hit[:2] == stamp:
                out[path] = hit[2]
                continue
            out[path] = compute(path)
            cache[key], changed = [*stamp, out[path]], True
    finally:  # what passed before a failure stays cached
        if changed:
            _write_cache(cache_file, cache)
    return out


def _write_cache(cache_file: Path, cache: dict) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)  # atomic: concurrent ranks never read half a file
    except OSError:
        pass  # a read-only home: correct, only slower next time
