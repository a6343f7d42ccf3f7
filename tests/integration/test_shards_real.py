"""data_shards on the real data sets: full Fashion-MNIST (with a val hold-out) and the real CIFAR-10
subset round-trip exactly, pixel for pixel and label for label, with exact normalisation statistics."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from shard_reading import histogram_stats, label_of, pixels, read_split

from cascade_dist.data.manifest import Manifest, verify
from data_shards.idx import read_idx

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_fashion_mnist_real(fashion_mnist_shards, fashion_mnist_dir):
    out = fashion_mnist_shards
    train_x = read_idx(fashion_mnist_dir / "train-images-idx3-ubyte.gz")
    train_y = read_idx(fashion_mnist_dir / "train-labels-idx1-ubyte.gz").astype(int)
    test_x = read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz").astype(int)
    m = {s: Manifest.load(out / s) for s in ("train", "val", "test")}
    assert [m[s].num_samples for s in ("train", "val", "test")] == [55000, 5000, 10000]
    assert m["train"].class_names[0] == "T-shirt/top" and m["train"].class_names[9] == "Ankle boot"
    assert (m["test"].image_size, m["test"].channels, m["test"].image_format) == ([28, 28], 1, "png")
    assert [s.num_samples for s in m["train"].shards] == [10000] * 5 + [5000]
    for s in ("val", "test"):
        assert (m[s].mean, m[s].std) == (m["train"].mean, m["train"].std)

    # pixels and labels: train+val is exactly the source training set (as a multiset), test in order
    def decoded(split):
        samples = read_split(out / split)
        return np.stack([pixels(p["png"]) for p in samples.values()]), [label_of(p) for p in samples.values()], samples

    def digests(images, labels):
        return Counter(hashlib.sha1(x.tobytes() + bytes([int(y)])).digest() for x, y in zip(images, labels))

    train_imgs, train_labels, train = decoded("train")
    val_imgs, val_labels, val = decoded("val")
    assert list(train)[:2] == ["train-00000000", "train-00000001"]
    assert digests(train_imgs, train_labels) + digests(val_imgs, val_labels) == digests(train_x, train_y)
    assert Image.open(io.BytesIO(next(iter(val.values()))["png"])).mode == "L"
    assert Counter(val_labels) == {c: 500 for c in range(10)}  # stratified
    test_imgs, test_labels, _ = decoded("test")
    np.testing.assert_array_equal(test_imgs, test_x)
    np.testing.assert_array_equal(test_labels, test_y)

    # exact normalisation statistics of the written train split (from a pixel-value histogram)
    mean, std = histogram_stats(train_imgs.reshape(-1, 1))
    assert m["train"].mean == pytest.approx(mean, abs=1e-12) and m["train"].std == pytest.approx(std, abs=1e-12)
    verify(out / "val")


def test_cifar10_subset_real(cifar10_subset_shards, cifar10_subset_tarball, tmp_path):
    out = cifar10_subset_shards
    m_train, m_test = Manifest.load(out / "train"), Manifest.load(out / "test")
    assert (m_train.num_samples, m_test.num_samples) == (8336, 4599)
    assert m_train.class_names == CIFAR10_NAMES and m_train.channels == 3 and m_train.image_size == [32, 32]
    assert not (out / "val").exists()
    with tarfile.open(cifar10_subset_tarball) as tar:
        tar.extractall(tmp_path, filter="data")
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        src = {}
        for name in names:
            d = pickle.loads((tmp_path / "cifar-10-batches-py" / name).read_bytes(), encoding="bytes")
            for row, label, f in zip(d[b"data"], d[b"labels"], d[b"filenames"]):
                src[f.decode()] = (row.reshape(3, 32, 32).transpose(1, 2, 0), label)
        samples = read_split(out / split)
        assert len(samples) == len(src)
        for parts in samples.values():
            img, label = src[json.loads(parts["json"])["filename"]]
            assert label_of(parts) == label
            np.testing.assert_array_equal(pixels(parts["png"]), img)
        if split == "train":
            mean, std = histogram_stats(np.stack([v[0] for v in src.values()]).reshape(-1, 3))
            np.testing.assert_allclose(m_train.mean, mean, atol=1e-12)
            np.testing.assert_allclose(m_train.std, std, atol=1e-12)
    verify(out / "test")


# ---------------------------------------------------------------- each source, tiny inputs
