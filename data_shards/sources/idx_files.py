"""MNIST and Fashion-MNIST from their four IDX files (`train-images-idx3-ubyte[.gz]`, ...)."""

from __future__ import annotations

from pathlib import Path

from cascade_dist.data.manifest import ShardError

from ..idx import read_idx
from .base import Source, array_split

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def find_idx(src: Path, prefix: str, kind: str, ndim: int) -> Path:
    """`train-images-idx3-ubyte.gz`, its unzipped form, or the `train-images.idx3-ubyte` spelling."""
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (src / f"{name}.gz", src / name):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"missing IDX file {src / names[0]}[.gz] (or {names[1]})")


def _split(src: Path, prefix: str):
    images_path, labels_path = find_idx(src, prefix, "images", 3), find_idx(src, prefix, "labels", 1)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype.itemsize != 1:
        raise ShardError(f"{images_path}: expected N×H×W uint8 images, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ShardError(f"{labels_path}: {labels.shape} labels for {len(images)} images in {images_path.name}")
    images = images.view("uint8")
    return array_split(images, labels, lambda i: f"{images_path}[{i}]")


def _open(src: Path, dataset: str, class_names: list[str]) -> Source:
    if not src.is_dir():
        raise FileNotFoundError(f"{dataset} source directory not found: {src}")
    return Source(dataset, class_names, {"train": _split(src, "train"), "test": _split(src, "t10k")})


def open_fashion_mnist(src: Path) -> Source:
    return _open(src, "fashion-mnist", FASHION_MNIST_CLASSES)


def open_mnist(src: Path) -> Source:
    return _open(src, "mnist", MNIST_CLASSES)
