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


def test_decode_check_names_the_bad_sample_and_caches_what_passed(tmp_path, monkeypatch):
    """The full verify pass a DALI run gives a split whose writer did not decode its images: a
    shard that passed is not read again at the same (size, mtime); a bad one is named, every time."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from cascade_dist.data.checksums import DECODED_FILE, decode_checked, file_sha256
    from cascade_dist.data.manifest import Manifest, ShardError, ShardInfo
    from data_shards.writer import make_index

    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "cache"))
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png, format="PNG")
    shards = []
    for s, image in enumerate([png.getvalue(), b"\x89PNG\r\n\x1a\n" + b"\0" * 40]):  # the second: garbage
        tar_path = tmp_path / f"s{s}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in ((f"k{s}.png", image), (f"k{s}.cls", b"3"), (f"k{s}.lbl", (3).to_bytes(8, "little"))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        make_index(tar_path, tmp_path / f"s{s}.idx")
        shards.append(ShardInfo(f"s{s}.tar", f"s{s}.idx", 1, file_sha256(tar_path)))
    m = Manifest("t", "val", 2, 10, [str(i) for i in range(10)], [4, 4], 1, "png", [0.5], [0.5], shards)
    assert not m.images_checked  # a manifest that does not vouch for its images
    try:
        decode_checked(tmp_path, m)
    except ShardError as e:
        assert "s1.tar" in str(e) and "sample k1" in str(e) and "does not decode" in str(e)
    else:
        raise AssertionError("the garbage PNG passed the decode check")
    cached = cache_path(DECODED_FILE).read_text()
    assert "s0.tar" in cached and "s1.tar" not in cached
    m.shards = shards[:1]
    (tmp_path / "s0.idx").write_text("corrupt")  # verify_shard would refuse it: the cache answers
    decode_checked(tmp_path, m)
