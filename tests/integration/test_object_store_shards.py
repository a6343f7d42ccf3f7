"""Shards on a real S3-compatible server (moto_server): the torch backend streams them, sha256 still
checked; `python -m data_shards stage` makes the verified local copy DALI needs."""

from __future__ import annotations

import pytest
import torch

from cascade_dist.data import DataError, make_loader, storage
from cascade_dist.data.manifest import Manifest
from data_shards.__main__ import main as data_shards_main
from object_store import upload_tree


@pytest.fixture
def remote_shards(s3_bucket, small_fashion_mnist_shards, tmp_path, monkeypatch) -> str:
    """The small real Fashion-MNIST tree (1,000 train, 500 test) uploaded; a fresh checksum cache."""
    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "cache"))
    uri = storage.join(s3_bucket, "shards", "fashion-mnist")
    assert upload_tree(small_fashion_mnist_shards, uri) > 4
    return uri


def batches(shards, split: str, train: bool, num_workers: int):
    loader = make_loader(shards, split, 100, backend="torch", train=train, num_workers=num_workers, seed=3)
    loader.set_epoch(1)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_torch_backend_reads_the_same_samples_from_s3_as_from_disk(remote_shards, small_fashion_mnist_shards):
    for split, train, workers in (("test", False, 0), ("train", True, 2)):  # 2 forked workers, each its own S3 client
        local, remote = batches(small_fashion_mnist_shards, split, train, workers), batches(remote_shards, split, train, workers)
        assert len(remote) == len(local) > 3
        for (xl, yl), (xr, yr) in zip(local, remote):
            assert torch.equal(yl, yr) and torch.equal(xl, xr)  # same samples, same order, same augmentation
    assert sum(len(y) for _, y in batches(remote_shards, "test", False, 0)) == 500


def test_a_changed_object_fails_its_sha256_check(remote_shards, small_fashion_mnist_shards):
    manifest = Manifest.load(small_fashion_mnist_shards / "test")
    shard = storage.join(remote_shards, "test", manifest.shards[0].file)
    data = bytearray((small_fashion_mnist_shards / "test" / manifest.shards[0].file).read_bytes())
    data[1000] ^= 0xFF
    fs, inner = storage.filesystem(shard)
    with fs.open_output_stream(inner) as out:
        out.write(bytes(data))
    with pytest.raises(DataError, match=rf"shard {shard}: sha256 .* differs"):
        make_loader(remote_shards, "test", 100, backend="torch", train=False, num_workers=0)


def test_dali_refuses_remote_shards_and_names_the_staging_command(remote_shards):
    with pytest.raises(DataError, match=r"data\.shards: s3://.* `python -m data_shards stage s3://"):
        make_loader(remote_shards, "test", 100, backend="dali", train=False)


def test_stage_copies_verifies_and_is_idempotent(remote_shards, small_fashion_mnist_shards, tmp_path, capsys):
    dest = tmp_path / "staged"
    assert data_shards_main(["stage", remote_shards, str(dest)]) == 0
    first = capsys.readouterr().out
    for split in ("train", "test"):
        names = sorted(p.name for p in (small_fashion_mnist_shards / split).iterdir())
        assert sorted(p.name for p in (dest / split).iterdir()) == names
        for name in names:
            assert (dest / split / name).read_bytes() == (small_fashion_mnist_shards / split / name).read_bytes()
    assert "1000 samples, 1 shard(s) copied, 0 already there" in first
    assert data_shards_main(["stage", remote_shards, str(dest)]) == 0  # again: nothing copied
    assert "1 shard(s) copied" not in capsys.readouterr().out
    loader = make_loader(dest, "test", 100, backend="dali", train=False)  # the staged copy: DALI reads it
    assert sum(len(y) for _, y in loader) == 500


def test_stage_stops_on_a_tampered_object_naming_it(remote_shards, small_fashion_mnist_shards, tmp_path, capsys):
    manifest = Manifest.load(small_fashion_mnist_shards / "train")
    shard = storage.join(remote_shards, "train", manifest.shards[0].file)
    fs, inner = storage.filesystem(shard)
    with fs.open_output_stream(inner) as out:
        out.write(b"not the shard the manifest describes")
    assert data_shards_main(["stage", remote_shards, str(tmp_path / "staged")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"data_shards: error: {shard}: sha256") and "does not match" in err and "\n" not in err
    assert not (tmp_path / "staged" / "train" / manifest.shards[0].file).exists()
    assert not (tmp_path / "staged" / "train" / "manifest.json").exists()  # the split is not marked complete
