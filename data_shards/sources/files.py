"""Image files on disk: class-per-subfolder trees (`folder`) and ILSVRC-2012 (`imagenet`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cascade_dist.data.manifest import ShardError

from .base import Sample, Source, SplitSource

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
VAL_SOLUTION = "LOC_val_solution.csv"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def file_split(files: list[Path], labels: list[int], root: Path) -> SplitSource:
    """A split over image files; the sample's meta records its path relative to `root`."""

    def load(i: int) -> Sample:
        path = files[i]
        return Sample(path.read_bytes(), labels[i], str(path), {"file": path.relative_to(root).as_posix()})

    return SplitSource(np.asarray(labels, dtype=np.int64), load)


def class_tree_split(folder: Path, class_names: list[str]) -> SplitSource:
    """`folder/<class>/<image>`; a subfolder whose name is not in `class_names` is an error."""
    index = {c: i for i, c in enumerate(class_names)}
    files, labels = [], []
    for d in _class_dirs(folder):
        if d.name not in index:
            raise ShardError(f"{d}: class {d.name!r} not among the {len(class_names)} training classes")
        for f in _images_in(d):
            files.append(f)
            labels.append(index[d.name])
    return file_split(files, labels, folder)


def open_folder(src: Path) -> Source:
    """`src/train/<class>/*` and `src/test/<class>/*` if present, else `src/<class>/*` (train only)."""
    if not src.is_dir():
        raise FileNotFoundError(f"image folder not found: {src}")
    train_dir = src / "train" if (src / "train").is_dir() else src
    class_names = [d.name for d in _class_dirs(train_dir)]
    if not class_names:
        raise ShardError(f"{train_dir}: no class subfolders")
    splits = {"train": class_tree_split(train_dir, class_names)}
    if train_dir != src and (src / "test").is_dir():
        splits["test"] = class_tree_split(src / "test", class_names)
    return Source("folder", class_names, splits)


def _val_solution(root: Path) -> Path | None:
    for folder in (root / "val", root, *list(root.parents)[:3]):
        if (folder / VAL_SOLUTION).is_file():
            return folder / VAL_SOLUTION
    return None


def _flat_val(val: Path, class_names: list[str]) -> SplitSource:
    """Flat `val/*.JPEG` labelled by `LOC_val_solution.csv` (ImageId, "wnid x y x y ...")."""
    csv_path = _val_solution(val.parent)
    if csv_path is None:
        raise FileNotFoundError(f"{val} is flat (no class folders) and no {VAL_SOLUTION} was found "
                                f"in it, beside it or above it")
    index = {c: i for i, c in enumerate(class_names)}
    truth = {}
    with open(csv_path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if n == 1 and row[:1] == ["ImageId"]:
                continue
            if len(row) < 2 or not row[1].split():
                raise ShardError(f"{csv_path}:{n}: expected 'ImageId,PredictionString', got {row}")
            wnid = row[1].split()[0]
            if wnid not in index:
                raise ShardError(f"{csv_path}:{n}: image {row[0]}: wnid {wnid} is not a training class")
            truth[row[0]] = index[wnid]
    files = _images_in(val)
    unlabelled = [p for p in files if p.stem not in truth]
    if unlabelled:
        raise ShardError(f"{unlabelled[0]}: no entry for {unlabelled[0].stem} in {csv_path}")
    present = {p.stem for p in files}
    absent = sorted(set(truth) - present)
    if absent:
        raise FileNotFoundError(f"{csv_path} lists {absent[0]} but {val} has no such image file")
    return file_split(files, [truth[p.stem] for p in files], val)


def open_imagenet(src: Path) -> Source:
    """ILSVRC-2012: `train/<wnid>/*.JPEG`; `val/<wnid>/*.JPEG` or flat `val/` + LOC_val_solution.csv."""
    train, val = src / "train", src / "val"
    for d in (train, val):
        if not d.is_dir():
            raise FileNotFoundError(f"ImageNet folder not found: {d}")
    class_names = [d.name for d in _class_dirs(train)]
    if not class_names:
        raise ShardError(f"{train}: no wnid class folders")
    test = class_tree_split(val, class_names) if _class_dirs(val) else _flat_val(val, class_names)
    return Source("imagenet", class_names, {"train": class_tree_split(train, class_names), "test": test},
                  fixed_norm=(IMAGENET_MEAN, IMAGENET_STD))
