"""`data.storage`: local paths and URIs, one mechanism; file operations against a real S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cascade_dist.data import storage


def test_a_uri_is_never_turned_into_a_local_path(tmp_path, monkeypatch):
    """The old bug: `Path("s3://bucket/runs").resolve()` is `<cwd>/s3:/bucket/runs`."""
    monkeypatch.chdir(tmp_path)
    assert str(Path("s3://bucket/runs").resolve()) == f"{tmp_path}/s3:/bucket/runs"  # what Path does
    for uri in ("s3://bucket/runs", "gs://bucket/runs", "s3://bucket/runs/"):
        assert storage.resolve_storage(uri) == uri.rstrip("/")
        assert storage.is_uri(storage.resolve_storage(uri))
    assert storage.resolve_storage("runs") == str(tmp_path / "runs")  # a local path: absolute, as before
    assert storage.resolve_storage(f"file://{tmp_path}/runs") == str(tmp_path / "runs")
    assert storage.resolve_storage("~/x") == str(Path.home() / "x")
    with pytest.raises(ValueError, match="file:///abs/path"):
        storage.resolve_storage("file://otherhost/runs")


def test_join_name_parent_keep_the_kind_of_location(tmp_path):
    assert storage.join("s3://bucket/runs", "demo", "config.yaml") == "s3://bucket/runs/demo/config.yaml"
    assert storage.join("s3://bucket/runs/", "/demo/") == "s3://bucket/runs/demo"
    assert storage.join(tmp_path, "demo", "config.yaml") == str(tmp_path / "demo" / "config.yaml")
    assert storage.name("s3://bucket/runs/demo/") == "demo" and storage.parent("s3://bucket/runs/demo") == "s3://bucket/runs"
    assert storage.parent(tmp_path / "a") == str(tmp_path)
    assert storage.location("s3://b/x") == "s3://b/x" and storage.location(str(tmp_path)) == tmp_path
    assert not storage.is_uri("C:/data") and not storage.is_uri("runs/s3:/x") and storage.scheme("GS://b") == "gs"
    assert storage.scheme_problem("s3://b/x") is None and storage.scheme_problem("/abs") is None
    assert "unsupported scheme 'http'" in storage.scheme_problem("http://host/runs")


def test_ray_storage_splits_a_uri_into_filesystem_and_path(s3_server):
    import pyarrow.fs as pafs

    kw = storage.ray_storage("s3://bucket/runs")
    assert kw["storage_path"] == "bucket/runs" and isinstance(kw["storage_filesystem"], pafs.S3FileSystem)
    assert storage.ray_storage("/abs/runs") == {"storage_path": "/abs/runs"}
    assert storage.to_uri(kw["storage_filesystem"], "bucket/runs/x") == "s3://bucket/runs/x"
    assert storage.to_uri(pafs.LocalFileSystem(), "/abs/x") == "/abs/x"


def test_file_operations_on_the_s3_server(s3_bucket, tmp_path):
    root = storage.join(s3_bucket, "runs")
    assert not storage.is_dir(root) and storage.list_dir(root) == []
    storage.write_text(storage.join(root, "a", "config.yaml"), "x: 1\n")
    storage.append_text(storage.join(root, "a", "log.jsonl"), "one\n")
    storage.append_text(storage.join(root, "a", "log.jsonl"), "two\n")
    assert storage.is_dir(root) and storage.is_dir(storage.join(root, "a"))
    assert storage.is_file(storage.join(root, "a", "config.yaml")) and not storage.is_file(storage.join(root, "a"))
    assert storage.list_dir(storage.join(root, "a")) == ["config.yaml", "log.jsonl"]
    assert storage.read_text(storage.join(root, "a", "log.jsonl")) == "one\ntwo\n"
    size, mtime = storage.stat(storage.join(root, "a", "config.yaml"))
    assert size == 5 and mtime > 0
    with storage.open_input(storage.join(root, "a", "log.jsonl")) as f:
        f.seek(4)
        assert f.read(3) == b"two"
    with storage.local_copy(storage.join(root, "a"), skip=lambda rel: rel.endswith(".jsonl")) as local:
        assert sorted(os.listdir(local)) == ["config.yaml"] and (local / "config.yaml").read_text() == "x: 1\n"
    assert not local.exists()  # the temporary copy is removed
    storage.delete(storage.join(root, "a", "log.jsonl"))
    assert storage.list_dir(storage.join(root, "a")) == ["config.yaml"]
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        storage.stat(storage.join(root, "a", "log.jsonl"))
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "sub" / "f.bin").write_bytes(b"\0" * 10)
    assert storage.copy_tree(tmp_path / "t", storage.join(root, "t")) == 1
    assert storage.stat(storage.join(root, "t", "sub", "f.bin"))[0] == 10


def ray_nodes(*alive: bool) -> list[dict]:
    """Nodes as `ray.nodes()` lists them (the keys the check reads, from a real 2.60 listing)."""
    return [{"NodeID": f"{i:056x}", "Alive": a, "NodeManagerAddress": "127.0.0.1", "Resources": {"CPU": 2.0}}
            for i, a in enumerate(alive)]


def test_a_node_local_storage_path_is_refused_on_a_multi_node_cluster():
    problem = storage.node_local_problem("/home/me/runs", ray_nodes(True, True))
    assert problem.startswith("run.storage_path: /home/me/runs is a node-local path") and "2 nodes" in problem
    assert "\n" not in problem and "run.storage_shared=true" in problem
    assert storage.node_local_problem("s3://bucket/runs", ray_nodes(True, True)) is None
    assert storage.node_local_problem("/home/me/runs", ray_nodes(True, False)) is None  # one node alive
    assert storage.node_local_problem("/nfs/runs", ray_nodes(True, True), shared=True) is None
