"""Shard checksums when a run opens its shards: each shard's sha256 against its manifest, computed
once per shard per node and cached by (path, size, mtime) in `$CASCADE_CACHE_DIR`, else
`$XDG_CACHE_HOME/cascade_dist`, else `~/.cache/cascade_dist` (file `shard-sha256.json`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_FILE = "shard-sha256.json"


def cache_path() -> Path:
    root = os.environ.get("CASCADE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cascade_dist"
    return Path(root) / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable (another process mid-write): hash again


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_sha256(paths: list[Path]) -> dict[Path, str]:
    """sha256 of each file, hashed only when its (size, mtime) is not in the cache."""
    cache_file = cache_path()
    cache = _read_cache(cache_file)
    out, changed = {}, False
    for path in paths:
        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
        hit = cache.get(key)
        if hit and hit[:2] == stamp:
            out[path] = hit[2]
            continue
        out[path] = file_sha256(path)
        cache[key], changed = [*stamp, out[path]], True
    if changed:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)  # atomic: concurrent ranks never read half a file
        except OSError:
            pass  # a read-only home: correct, only slower next time
    return out
