"""Shard checksums: hashed once per (path, size, mtime) and cached; a changed file is hashed again."""

from __future__ import annotations

import hashlib
import os

from cascade_dist.data.checksums import cache_path, cached_sha256


def test_sha256_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "cache"))
    shard = tmp_path / "a.tar"
    shard.write_bytes(b"x" * 1000)
    assert cached_sha256([shard])[shard] == hashlib.sha256(b"x" * 1000).hexdigest()
    assert cache_path().is_file()
    stamp = shard.stat()
    shard.write_bytes(b"y" * 1000)  # same size; mtime put back: the cache answers (it is not re-read)
    os.utime(shard, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert cached_sha256([shard])[shard] == hashlib.sha256(b"x" * 1000).hexdigest()
    os.utime(shard, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))  # touched: hashed again
    assert cached_sha256([shard])[shard] == hashlib.sha256(b"y" * 1000).hexdigest()


def test_an_unwritable_cache_still_hashes(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "file" / "cache"))
    shard = tmp_path / "b.tar"
    shard.write_bytes(b"z")
    assert cached_sha256([shard])[shard] == hashlib.sha256(b"z").hexdigest()
