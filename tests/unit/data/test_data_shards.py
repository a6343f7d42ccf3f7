"""data_shards: every source round-trips exactly; verify and bad input fail naming file and key.

Tiny inputs are built in the exact official formats (pickled CIFAR dicts with bytes keys in
tarballs, ImageNet32 npz, ILSVRC folders, IDX files); the round trips of the real Fashion-MNIST and
CIFAR-10 subset are in tests/integration/test_shards_real.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cascade_dist.data.manifest import Manifest, ShardError, read_index, verify
from shard_reading import label_of, pixels, read_split
from data_shards import convert, stratified_holdout
from data_shards.__main__ import main
from data_shards.idx import read_idx
from data_shards.images import encode_file
from data_shards.safe_pickle import safe_loads

QUIET = {"log": lambda msg: None}
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- tiny official-format inputs

def cifar_rows(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar10(path: Path, lengths=(7, 5, 6, 4, 3), n_test=9, bad_label_at=None, skip_member=None, seed=0):
    """cifar-10-python.tar.gz with uneven batches; returns {split: (rows, labels, filenames)}."""
    rng = np.random.default_rng(seed)
    truth = {"train": ([], [], []), "test": ([], [], [])}
    batches = [(f"data_batch_{i + 1}", n, "train") for i, n in enumerate(lengths)] + [("test_batch", n_test, "test")]
    with tarfile.open(path, "w:gz") as tar:
        meta = {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
        add_member(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for name, n, split in batches:
            rows, labels = cifar_rows(rng, n), [int(x) for x in rng.integers(0, 10, n)]
            if bad_label_at == (name, 2):
                labels[2] = 10
            files = [f"{name}_{i}.png".encode() for i in range(n)]
            d = {b"batch_label": name.encode(), b"labels": labels, b"data": rows, b"filenames": files}
            if name != skip_member:
                add_member(tar, f"cifar-10-batches-py/{name}", pickle.dumps(d, protocol=2))
            for lst, v in zip(truth[split], (rows, labels, files)):
                lst.extend(v)
    return truth


def make_cifar100(path: Path, n_train=30, n_test=10):
    rng = np.random.default_rng(1)
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
        add_member(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
        for split, n in (("train", n_train), ("test", n_test)):
            rows = cifar_rows(rng, n)
            fine = [int(x) for x in rng.integers(0, 100, n)]
            coarse = [f // 5 for f in fine]
            files = [f"{split}_{i}.png".encode() for i in range(n)]
            d = {b"filenames": files, b"batch_label": split.encode(), b"fine_labels": fine,
                 b"coarse_labels": coarse, b"data": rows}
            add_member(tar, f"cifar-100-python/{split}", pickle.dumps(d, protocol=2))
            truth[split] = (rows, fine, coarse, files)
    return truth


def write_idx(path: Path, arr: np.ndarray) -> None:
    raw = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def jpeg_bytes(rng, h, w, mode="RGB") -> bytes:
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ---------------------------------------------------------------- real data sets (fixtures)

def test_cifar10_tarball_and_folder_roundtrip(tmp_path):
    truth = make_cifar10(tmp_path / "cifar-10-python.tar.gz")
    ms = convert("cifar10", tmp_path / "cifar-10-python.tar.gz", tmp_path / "a", val_split=5, shard_size=8, **QUIET)
    assert [ms[s].num_samples for s in ("train", "val", "test")] == [20, 5, 9]
    assert [s.num_samples for s in ms["train"].shards] == [8, 8, 4]
    rows, labels, files = truth["train"]
    by_name = {f.decode(): (r, lab) for r, lab, f in zip(rows, labels, files)}
    seen = []
    for split in ("train", "val"):
        for key, parts in read_split(tmp_path / "a" / split).items():
            assert key.startswith(split + "-") and "." not in key
            row, label = by_name[json.loads(parts["json"])["filename"]]
            assert label_of(parts) == label
            np.testing.assert_array_equal(pixels(parts["png"]), row.reshape(3, 32, 32).transpose(1, 2, 0))
            seen.append(json.loads(parts["json"])["filename"])
    assert sorted(seen) == sorted(by_name)
    # the extracted folder gives the same shards
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    convert("cifar10", tmp_path / "x", tmp_path / "b", val_split=5, shard_size=8, **QUIET)
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")
    for s in ("train", "val", "test"):
        verify(tmp_path / "b" / s)


def test_cifar100_fine_and_coarse(tmp_path):
    truth = make_cifar100(tmp_path / "cifar-100-python.tar.gz")
    ms = convert("cifar100", tmp_path / "cifar-100-python.tar.gz", tmp_path / "out", **QUIET)
    assert ms["train"].num_classes == 100 and ms["train"].class_names[7] == "fine7"
    rows, fine, coarse, files = truth["test"]
    for i, parts in enumerate(read_split(tmp_path / "out" / "test").values()):
        meta = json.loads(parts["json"])
        assert label_of(parts) == fine[i]
        assert meta == {"coarse_label": coarse[i], "coarse_name": f"coarse{coarse[i]}", "filename": files[i].decode()}
        np.testing.assert_array_equal(pixels(parts["png"]), rows[i].reshape(3, 32, 32).transpose(1, 2, 0))


def test_imagenet32_npz(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "imagenet32"
    src.mkdir()
    data = {}
    for name, n, save in (("train_data_batch_1", 6, np.savez), ("train_data_batch_2", 4, np.savez_compressed),
                          ("val_data", 5, np.savez)):
        x, y = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(1, 1001, n)
        save(src / f"{name}.npz", data=x, labels=list(y), mean=x.mean(0))
        data[name] = (x, y)
    (src / "map_clsloc.txt").write_text("".join(f"n{i:08d} {i + 1} name_{i}\n" for i in range(1000)))
    ms = convert("imagenet32", src, tmp_path / "out", **QUIET)
    assert ms["train"].num_samples == 10 and ms["test"].num_samples == 5
    assert ms["train"].class_names[:2] == ["name_0", "name_1"] and ms["train"].image_size == [32, 32]
    x, y = data["val_data"]
    for i, parts in enumerate(read_split(tmp_path / "out" / "test").values()):
        assert label_of(parts) == y[i] - 1  # 1-based in the npz, 0-based in shards
        np.testing.assert_array_equal(pixels(parts["png"]), x[i].reshape(3, 32, 32).transpose(1, 2, 0))
    train = Counter((pixels(p["png"]).tobytes(), label_of(p)) for p in read_split(tmp_path / "out" / "train").values())
    xs = [*data["train_data_batch_1"][0], *data["train_data_batch_2"][0]]
    ys = [*data["train_data_batch_1"][1], *data["train_data_batch_2"][1]]
    assert train == Counter((r.reshape(3, 32, 32).transpose(1, 2, 0).tobytes(), int(lab) - 1) for r, lab in zip(xs, ys))


def make_ilsvrc(root: Path, flat_val=True):
    rng = np.random.default_rng(3)
    wnids = ["n01443537", "n01440764", "n01484850"]  # written unsorted: classes get sorted
    files = {}
    for w in wnids:
        (root / "train" / w).mkdir(parents=True)
        for i in range(3):
            p = root / "train" / w / f"{w}_{i}.JPEG"
            p.write_bytes(jpeg_bytes(rng, 12 + i, 16))
            files[p] = w
    (root / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for i, w in enumerate(["n01484850", "n01440764", "n01443537", "n01440764"]):
        image_id = f"ILSVRC2012_val_{i + 1:08d}"
        folder = root / "val" if flat_val else root / "val" / w
        folder.mkdir(exist_ok=True)
        p = folder / f"{image_id}.JPEG"
        p.write_bytes(jpeg_bytes(rng, 10, 10 + i, "L" if i == 3 else "RGB"))
        files[p] = w
        rows.append(f"{image_id},{w} 1 2 30 40 {w} 5 6 7 8")
    if flat_val:
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return files, sorted(wnids)


@pytest.mark.parametrize("flat_val", [True, False], ids=["flat-val-csv", "per-class-val"])
def test_imagenet_tree_keeps_jpeg_bytes(tmp_path, flat_val):
    files, wnids = make_ilsvrc(tmp_path / "ilsvrc", flat_val)
    ms = convert("imagenet", tmp_path / "ilsvrc", tmp_path / "out", **QUIET)
    assert ms["train"].class_names == wnids and ms["train"].image_format == "jpg"
    assert ms["train"].mean == [0.485, 0.456, 0.406] and ms["train"].image_size is None
    assert (ms["train"].num_samples, ms["test"].num_samples) == (9, 4)
    by_bytes = {p.read_bytes(): w for p, w in files.items()}
    for split in ("train", "test"):
        for parts in read_split(tmp_path / "out" / split).values():
            assert set(parts) == {"jpg", "cls", "lbl", "json"}
            assert wnids[label_of(parts)] == by_bytes[parts["jpg"]]  # bytes identical, label right
        verify(tmp_path / "out" / split)


def test_mnist_idx_gz_and_raw(tmp_path):
    rng = np.random.default_rng(4)
    arrays = {}
    for prefix, n, suffix in (("train", 12, ".gz"), ("t10k", 5, "")):
        x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        arrays[prefix] = (x, y)
    ms = convert("mnist", tmp_path, tmp_path / "out", val_split=2, **QUIET)
    assert ms["test"].class_names == [str(d) for d in range(10)] and ms["train"].num_samples == 10
    x, y = arrays["t10k"]
    for i, parts in enumerate(read_split(tmp_path / "out" / "test").values()):
        assert label_of(parts) == y[i]
        np.testing.assert_array_equal(pixels(parts["png"]), x[i])


def test_folder_tree_formats_and_stats(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "tree"
    src_pixels, jpgs = {}, {}
    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                if i % 3 == 0:  # PNG, kept as is
                    Image.fromarray(arr).save(root / split / c / f"{i}.png")
                elif i % 3 == 1:  # BMP -> converted to PNG, lossless
                    Image.fromarray(arr).save(root / split / c / f"{i}.bmp")
                else:  # JPEG, kept as is
                    data = jpeg_bytes(rng, 8, 8)
                    (root / split / c / f"{i}.jpg").write_bytes(data)
                    jpgs[f"{c}/{i}.jpg"] = data
                    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                src_pixels[f"{split}/{c}/{i}"] = (arr, c)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    ms = convert("folder", root, tmp_path / "out", **QUIET)
    assert ms["train"].class_names == ["cat", "dog"] and ms["train"].image_format == "jpg;png"
    assert (ms["train"].num_samples, ms["test"].num_samples, ms["train"].image_size) == (8, 4, [8, 8])
    train_pix = []
    for split in ("train", "test"):
        for parts in read_split(tmp_path / "out" / split).values():
            rel = json.loads(parts["json"])["file"]
            arr, c = src_pixels[f"{split}/{rel.rsplit('.', 1)[0]}"]
            assert ms["train"].class_names[label_of(parts)] == c
            if "jpg" in parts:
                assert parts["jpg"] == jpgs[rel]
            np.testing.assert_array_equal(pixels(parts.get("png") or parts["jpg"]), arr)
            if split == "train":
                train_pix.append(arr)
    allpix = np.stack(train_pix).reshape(-1, 3) / 255
    np.testing.assert_allclose(ms["train"].mean, allpix.mean(0), atol=1e-12)
    np.testing.assert_allclose(ms["train"].std, allpix.std(0), atol=1e-12)


# ---------------------------------------------------------------- determinism, idempotence, force

def test_deterministic_idempotent_and_force(tmp_path):
    make_cifar10(tmp_path / "c.tar.gz")
    args = ("cifar10", tmp_path / "c.tar.gz")
    convert(*args, tmp_path / "a", val_split=4, seed=7, **QUIET)
    convert(*args, tmp_path / "b", val_split=4, seed=7, **QUIET)
    first = shard_hashes(tmp_path / "a")
    assert first == shard_hashes(tmp_path / "b")
    manifest = Manifest.load(tmp_path / "a" / "train")
    assert manifest.shards[0].sha256 == first["train/cifar10-train-000000.tar"]
    convert(*args, tmp_path / "a", val_split=4, seed=7, **QUIET)  # identical rerun: fine, untouched
    assert shard_hashes(tmp_path / "a") == first
    with pytest.raises(ShardError, match=r"exists and differs.*--force"):
        convert(*args, tmp_path / "a", val_split=4, seed=8, **QUIET)
    with pytest.raises(ShardError, match=r"exists and differs.*--force"):
        convert(*args, tmp_path / "a", **QUIET)  # no val split: stale val/
    assert shard_hashes(tmp_path / "a") == first
    convert(*args, tmp_path / "a", seed=8, force=True, **QUIET)
    assert not (tmp_path / "a" / "val").exists() and shard_hashes(tmp_path / "a") != first
    assert not list(tmp_path.glob("a/.staging*"))


def test_stratified_holdout():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    held = stratified_holdout(labels, 10, np.random.default_rng(0))
    assert len(set(held)) == 10 and Counter(labels[held]) == {0: 5, 1: 3, 2: 2}
    np.testing.assert_array_equal(held, stratified_holdout(labels, 10, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="val-split"):
        stratified_holdout(labels, 100, np.random.default_rng(0))


def test_train_limit_keeps_a_stratified_subset_after_the_holdout(tmp_path):
    make_cifar10(tmp_path / "c.tar.gz", lengths=(20, 20, 20, 20, 20))
    full = convert("cifar10", tmp_path / "c.tar.gz", tmp_path / "full", val_split=10, **QUIET)
    part = convert("cifar10", tmp_path / "c.tar.gz", tmp_path / "part", val_split=10, train_limit=30, **QUIET)
    assert [part[s].num_samples for s in ("train", "val", "test")] == [30, 10, 9]
    val_full, val_part = read_split(tmp_path / "full" / "val"), read_split(tmp_path / "part" / "val")
    assert [p["json"] for p in val_full.values()] == [p["json"] for p in val_part.values()]  # the same hold-out
    names = {json.loads(p["json"])["filename"] for p in read_split(tmp_path / "part" / "train").values()}
    assert names <= {json.loads(p["json"])["filename"] for p in read_split(tmp_path / "full" / "train").values()}
    train_labels = Counter(label_of(p) for p in read_split(tmp_path / "full" / "train").values())
    kept = Counter(label_of(p) for p in read_split(tmp_path / "part" / "train").values())
    assert all(abs(kept[c] - 30 * n / 90) < 1 for c, n in train_labels.items())  # in proportion to the classes
    with pytest.raises(ValueError, match="--train-limit must lie in"):
        convert("cifar10", tmp_path / "c.tar.gz", tmp_path / "bad", val_split=10, train_limit=91, **QUIET)


# ---------------------------------------------------------------- verify catches damaged shards

@pytest.fixture
def small_shards(tmp_path):
    make_cifar10(tmp_path / "c.tar.gz")
    convert("cifar10", tmp_path / "c.tar.gz", tmp_path / "out", shard_size=10, **QUIET)
    return tmp_path / "out" / "train"


def test_verify_ok_and_index_matches_wds2idx(small_shards):
    m = verify(small_shards)
    assert m.num_samples == 25 and len(m.shards) == 3
    for tar_path, idx_path in zip(m.shard_paths(small_shards), m.index_paths(small_shards)):
        index = read_index(idx_path)
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
        flat = [c for sample in index for c in sample]
        assert [(e, off, size, name) for e, off, size, name in flat] == \
            [(m_.name.split(".", 1)[1], m_.offset_data, m_.size, m_.name) for m_ in members]


def test_verify_truncated_shard(small_shards):
    tar = small_shards / "cifar10-train-000001.tar"
    with tarfile.open(tar) as t:
        png = t.getmember("train-00000012.png")
    tar.write_bytes(tar.read_bytes()[: png.offset_data + png.size // 2])
    with pytest.raises(ShardError, match=r"cifar10-train-000001\.tar, sample train-00000012: truncated"):
        verify(small_shards)


def test_verify_corrupt_image_and_label(small_shards):
    tar = small_shards / "cifar10-train-000000.tar"
    original = tar.read_bytes()
    with tarfile.open(tar) as t:
        png = t.getmember("train-00000004.png")
        cls = t.getmember("train-00000006.cls")
    data = bytearray(original)
    data[png.offset_data + 60] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"cifar10-train-000000\.tar, sample train-00000004: \.png does not decode"):
        verify(small_shards)
    data = bytearray(original)
    data[cls.offset_data] = ord("x")
    tar.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"sample train-00000006: \.cls is not a decimal"):
        verify(small_shards)


def test_verify_missing_component_and_checksum(small_shards):
    tar = small_shards / "cifar10-train-000002.tar"
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    good = tar.read_bytes()
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in members:
            if m.name != "train-00000021.lbl":
                t.addfile(m, io.BytesIO(data))
    with pytest.raises(ShardError, match=r"cifar10-train-000002\.tar, sample train-00000021: components"):
        verify(small_shards)
    tar.write_bytes(good[:-1] + b"\x01")  # inside the end-of-archive padding: only the checksum sees it
    with pytest.raises(ShardError, match=r"cifar10-train-000002\.tar: sha256 .* does not match"):
        verify(small_shards)
    tar.write_bytes(good)
    m = Manifest.load(small_shards)
    m.shards[2] = type(m.shards[2])(**{**m.shards[2].__dict__, "num_samples": 6})
    m.num_samples += 1
    m.save(small_shards)
    with pytest.raises(ShardError, match=r"000002\.tar: 5 samples, manifest says 6"):
        verify(small_shards)


def test_manifest_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "manifest.json")):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json: not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "x", "split": "train"}))
    with pytest.raises(ShardError, match="manifest.json: missing key.*num_classes"):
        Manifest.load(tmp_path)


# ---------------------------------------------------------------- bad source input

def test_missing_and_truncated_sources(tmp_path):
    make_cifar10(tmp_path / "c.tar.gz", skip_member="data_batch_3")
    with pytest.raises(FileNotFoundError, match=r"c\.tar\.gz: no member cifar-10-batches-py/data_batch_3"):
        convert("cifar10", tmp_path / "c.tar.gz", tmp_path / "o", **QUIET)
    make_cifar10(tmp_path / "d.tar.gz")
    data = (tmp_path / "d.tar.gz").read_bytes()
    (tmp_path / "d.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"d\.tar\.gz.*truncated or corrupt"):
        convert("cifar10", tmp_path / "d.tar.gz", tmp_path / "o", **QUIET)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes((tmp_path / "train-images-idx3-ubyte.gz").read_bytes()[:-8])
    with pytest.raises(ShardError, match=r"train-images-idx3-ubyte\.gz: truncated or corrupt gzip"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte"):
        convert("mnist", tmp_path, tmp_path / "o", **QUIET)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_label_out_of_range_raises_or_skips(tmp_path):
    make_cifar10(tmp_path / "c.tar.gz", bad_label_at=("data_batch_2", 2))
    with pytest.raises(ShardError, match=r"data_batch_2\[2\] \(sample train-\d{8}\): label 10 outside \[0, 10\)"):
        convert("cifar10", tmp_path / "c.tar.gz", tmp_path / "o", **QUIET)
    assert not (tmp_path / "o" / "train").exists()
    ms = convert("cifar10", tmp_path / "c.tar.gz", tmp_path / "o", on_error="skip", **QUIET)
    assert (ms["train"].num_samples, ms["train"].skipped, ms["test"].skipped) == (24, 1, 0)
    assert json.loads((tmp_path / "o" / "train" / "manifest.json").read_text())["skipped"] == 1
    verify(tmp_path / "o" / "train")
    # a 1-based ImageNet32 label of 0 becomes -1
    src = tmp_path / "i32"
    src.mkdir()
    for name in ("train_data_batch_1", "val_data"):
        np.savez(src / f"{name}.npz", data=np.zeros((3, 3072), np.uint8), labels=[1, 0, 5])
    with pytest.raises(ShardError, match=r"train_data_batch_1\.npz\[1\] \(sample train-\d{8}\): label -1 outside"):
        convert("imagenet32", src, tmp_path / "o2", **QUIET)
    (src / "val_data.npz").write_bytes((src / "val_data.npz").read_bytes()[:300])
    with pytest.raises(ShardError, match=r"val_data\.npz: truncated or corrupt npz"):
        convert("imagenet32", src, tmp_path / "o2", **QUIET)


def test_corrupt_image_raises_or_skips(tmp_path):
    root = tmp_path / "tree"
    rng = np.random.default_rng(6)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{i}.jpg").write_bytes(jpeg_bytes(rng, 16, 16))
    good = (root / "b" / "1.jpg").read_bytes()
    (root / "b" / "1.jpg").write_bytes(good[: len(good) // 2])
    for want_pixels in (True, False):  # full decode, and the 1/8-scale decode used when no stats are needed
        with pytest.raises(OSError, match="truncated"):
            encode_file(good[: len(good) - 10], want_pixels)
    with pytest.raises(ShardError, match=r"b/1\.jpg \(sample train-\d{8}\): image does not decode"):
        convert("folder", root, tmp_path / "o", val_split=2, **QUIET)
    messages = []
    ms = convert("folder", root, tmp_path / "o", val_split=2, on_error="skip", log=messages.append)
    assert ms["train"].skipped + ms["val"].skipped == 1
    assert ms["train"].num_samples + ms["val"].num_samples == 5
    assert any("b/1.jpg" in msg and "skipped" in msg for msg in messages)


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
        safe_loads(pickle.dumps({b"data": Evil()}, protocol=2))
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for protocol in (2, 5):
        np.testing.assert_array_equal(safe_loads(pickle.dumps({b"data": arr}, protocol=protocol))[b"data"], arr)
    make_cifar10(tmp_path / "c.tar.gz")
    with tarfile.open(tmp_path / "c.tar.gz") as tar, tarfile.open(tmp_path / "e.tar.gz", "w:gz") as out:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()
            if m.name.endswith("data_batch_1"):
                data = pickle.dumps({b"data": Evil()}, protocol=2)
            add_member(out, m.name, data)
    with pytest.raises(ShardError, match=r"e\.tar\.gz:cifar-10-batches-py/data_batch_1: not a CIFAR pickle.*forbidden"):
        convert("cifar10", tmp_path / "e.tar.gz", tmp_path / "o", **QUIET)


# ---------------------------------------------------------------- CLI

def test_cli(tmp_path, capsys):
    """`main` in-process for conversion and verify (the real process: tests/integration/test_commands.py)."""
    make_cifar10(tmp_path / "c.tar.gz")
    out = tmp_path / "o"
    assert main(["cifar10", "--src", str(tmp_path / "c.tar.gz"), "--out", str(out), "--val-split", "5"]) == 0
    assert "cifar10 train: 20 samples in 1 shard(s), 0 skipped" in capsys.readouterr().out
    with open(out / "test" / "cifar10-test-000000.tar", "r+b") as f:
        f.truncate(4000)
    assert main(["verify", str(out)]) == 2
    captured = capsys.readouterr()
    assert "train: ok, 20 samples" in captured.out
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("data_shards: error:") and "cifar10-test-000000.tar, sample test-" in captured.err

