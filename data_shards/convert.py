"""`convert`: open a source, hold out a stratified val split, shuffle train, write every split.

Output: `OUT/train`, `OUT/test` (when the source has one) and `OUT/val` (with `val_split`), each
with shards, DALI indexes and `manifest.json`. Splits are written into a staging folder inside
OUT and moved into place at the end; an existing different output is refused unless `force`,
an identical one is left as it is.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from cascade_dist.data.manifest import Manifest, ShardError

from .sources import DEFAULT_SHARD_SIZE, DEFAULT_SRC, SHARD_SIZES, open_source
from .writer import SplitResult, write_split

SPLITS = ("train", "val", "test")


def stratified_holdout(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `n` samples drawn per class in proportion to class sizes (largest remainder)."""
    if not 0 < n < len(labels):
        raise ValueError(f"--val-split {n}: must be between 1 and {len(labels) - 1} (training samples)")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    by_remainder = np.argsort(-(quota - take), kind="stable")
    take[by_remainder[: n - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def _manifest(dataset: str, split: str, res: SplitResult, class_names: list[str],
              mean: list[float], std: list[float], channels: int) -> Manifest:
    image_format = ";".join(sorted(res.formats, key=["jpg", "png"].index))
    return Manifest(dataset=dataset, split=split, num_samples=res.num_samples, num_classes=len(class_names),
                    class_names=list(class_names), image_size=list(next(iter(res.sizes))) if len(res.sizes) == 1 else None,
                    channels=channels, image_format=image_format, mean=mean, std=std,
                    shards=res.shards, skipped=res.skipped, images_checked=True)  # every image decoded on write


def _same_output(existing: Path, staged: Path) -> bool:
    """True when `existing` holds the same files and manifest as the freshly staged split."""
    if not (existing / "manifest.json").is_file():
        return False
    names = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    try:
        return names(existing) == names(staged) and Manifest.load(existing) == Manifest.load(staged)
    except (ShardError, OSError):
        return False


def _check_out(out: Path, dataset: str, splits: list[str], force: bool) -> None:
    """Refuse early when OUT clearly holds something else (another data set, other splits)."""
    present = [s for s in SPLITS if (out / s).exists()]
    if force or not present:
        return
    why = None
    if sorted(present) != sorted(splits):
        why = f"it has splits {present}, this run writes {splits}"
    else:
        try:
            old = Manifest.load(out / present[0]).dataset
            if old != dataset:
                why = f"it holds {old!r}, this run writes {dataset!r}"
        except (ShardError, OSError) as e:
            why = str(e)
    if why:
        raise ShardError(f"output {out} exists and differs ({why}); pass --force to replace it")


def convert(source: str, src: str | Path | None, out: str | Path, *, val_split: int = 0,
            shard_size: int | None = None, seed: int = 0, force: bool = False, on_error: str = "raise",
            name: str | None = None, progress: bool = False, log=print,
            train_limit: int | None = None) -> dict[str, Manifest]:
    """Convert `source` (a name in `data_shards.sources.SOURCES`) at `src` into shards under `out`.

    `train_limit`: keep only a stratified, seeded subset of that many training images (after the
    val hold-out), for runs sized to a small machine."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if src is None:
        src = DEFAULT_SRC.get(source)
        if src is None:
            raise ValueError(f"--src is required for {source}")
    shard_size = shard_size or SHARD_SIZES.get(source, DEFAULT_SHARD_SIZE)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    src, out = Path(src), Path(out)
    opened = open_source(source, src)
    dataset = name or opened.dataset
    if "." in dataset or "/" in dataset:
        raise ValueError(f"dataset name {dataset!r} must not contain '.' or '/'")
    rng = np.random.default_rng(seed)
    train = opened.splits["train"]
    held = stratified_holdout(train.labels, val_split, rng) if val_split else np.empty(0, int)
    rest = np.setdiff1d(np.arange(len(train)), held)
    if train_limit is not None:
        if not 0 < train_limit <= len(rest):
            raise ValueError(f"--train-limit must lie in [1, {len(rest)}] (training images after the val split), "
                             f"got {train_limit}")
        if train_limit < len(rest):
            rest = rest[stratified_holdout(train.labels[rest], train_limit, rng)]
    plan = {"train": (train, rng.permutation(rest))}
    if val_split:
        plan["val"] = (train, held)
    if "test" in opened.splits:
        plan["test"] = (opened.splits["test"], np.arange(len(opened.splits["test"])))
    _check_out(out, dataset, list(plan), force)

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{dataset}"
    shutil.rmtree(staging, ignore_errors=True)
    manifests: dict[str, Manifest] = {}
    try:
        norm, channels = opened.fixed_norm, 3
        for split, (split_source, order) in plan.items():
            t0 = time.perf_counter()
            res = write_split(staging / split, dataset=dataset, split=split, source=split_source, order=order,
                              num_classes=len(opened.class_names), shard_size=shard_size, on_error=on_error,
                              compute_stats=split == "train" and norm is None, progress=progress, log=log)
            if split == "train":
                channels = 1 if res.all_gray else 3
                norm = norm or res.stats.mean_std(channels)
            manifests[split] = _manifest(dataset, split, res, opened.class_names, *norm, channels)
            manifests[split].save(staging / split)
            log(f"{dataset} {split}: {res.num_samples} samples in {len(res.shards)} shard(s), "
                f"{res.skipped} skipped, {time.perf_counter() - t0:.1f} s -> {out / split}")
        _install(staging, out, list(plan), force, log)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifests


def _install(staging: Path, out: Path, splits: list[str], force: bool, log) -> None:
    """Move staged splits into `out` unless they are already there; different content needs `force`."""
    stale = [s for s in SPLITS if s not in splits and (out / s).exists()]
    changed = [s for s in splits if (out / s).exists() and not _same_output(out / s, staging / s)]
    if (changed or stale) and not force:
        raise ShardError(f"output {out} exists and differs (split(s) {', '.join(changed + stale)}); "
                         f"pass --force to replace it")
    if not changed and not stale and all((out / s).exists() for s in splits):
        log(f"{out}: unchanged (identical shards already there)")
        return
    for s in stale:
        shutil.rmtree(out / s)
    for s in splits:
        if (out / s).exists() and s in changed:
            shutil.rmtree(out / s)
        if not (out / s).exists():
            (staging / s).rename(out / s)
