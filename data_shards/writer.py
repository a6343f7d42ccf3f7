"""The one shard writer: samples -> WebDataset tars + DALI indexes + checksums, for one split.

Tars are written with webdataset's `TarWriter` with fixed member metadata (mtime 0, uid/gid 0,
mode 0444), so the same samples give byte-identical shards. Each closed shard gets its DALI index
from `wds2idx.IndexCreator` (the module the DALI wheel installs as the `wds2idx` command).
"""

from __future__ import annotations

import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import webdataset as wds
from tqdm import tqdm
from wds2idx import IndexCreator

from cascade_dist.data.checksums import file_sha256
from cascade_dist.data.manifest import ShardError, ShardInfo

from .images import PixelStats, encode_array, encode_file
from .sources.base import SplitSource

MAX_SKIP_MESSAGES = 5


@dataclass
class SplitResult:
    """What was written for a split, for its manifest and summary line."""

    shards: list[ShardInfo] = field(default_factory=list)
    skipped: int = 0
    sizes: set = field(default_factory=set)  # (H, W) seen
    formats: set = field(default_factory=set)  # component extensions seen
    all_gray: bool = True
    stats: PixelStats | None = None

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)


def make_index(tar_path: Path, idx_path: Path) -> None:
    """Write the DALI webdataset index of a tar (`wds2idx shard.tar shard.idx`)."""
    with IndexCreator(str(tar_path), str(idx_path), verbose=False) as creator:
        creator.create_index()


class BadSample(Exception):
    """A source sample that cannot be written; `origin` names its file (and row)."""

    def __init__(self, origin: str, reason: str):
        super().__init__(reason)
        self.origin, self.reason = origin, reason


def sample_components(split: SplitSource, i: int, num_classes: int, want_pixels: bool):
    """Load source sample i and build its tar components (all but the key); `BadSample` if it is bad."""
    try:
        sample = split.load(i)
    except OSError as e:
        raise BadSample(getattr(e, "filename", None) or f"sample {i}", f"cannot read source ({e})") from None
    label = sample.label
    if not 0 <= label < num_classes:
        raise BadSample(sample.origin, f"label {label} outside [0, {num_classes})")
    try:
        if isinstance(sample.image, np.ndarray):
            enc = encode_array(sample.image)
        else:
            enc = encode_file(sample.image, want_pixels)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for corrupt images
        raise BadSample(sample.origin, f"image does not decode ({type(e).__name__}: {e})") from None
    parts = {enc.ext: enc.data, "cls": str(label).encode("ascii"), "lbl": np.int64(label).astype("<i8").tobytes()}
    if sample.meta:
        parts["json"] = json.dumps(sample.meta, sort_keys=True, separators=(",", ":")).encode()
    return parts, enc


def prefetched(fn, items, depth: int = 64):
    """`(fn(x) or the exception it raised) for x in items`, computed one thread ahead of the consumer
    (PNG encoding and JPEG decoding release the GIL while the tar is written), at most `depth` ahead."""
    def call(x):
        try:
            return fn(x)
        except BadSample as e:
            return e

    with ThreadPoolExecutor(max_workers=1) as pool:
        queue = deque()
        for x in items:
            queue.append(pool.submit(call, x))
            if len(queue) >= depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def write_split(split_dir: Path, *, dataset: str, split: str, source: SplitSource, order: Iterable[int],
                num_classes: int, shard_size: int, on_error: str = "raise", compute_stats: bool = False,
                progress: bool = False, log=print) -> SplitResult:
    """Write `source` samples in `order` as `{dataset}-{split}-{n:06d}.tar` shards under `split_dir`.

    Keys are `{split}-{i:08d}` over the samples written. With `on_error="skip"` a bad sample
    (unreadable, undecodable image, label out of range) is left out and counted, else it raises.
    """
    split_dir.mkdir(parents=True, exist_ok=True)
    order = list(order)
    result = SplitResult(stats=PixelStats() if compute_stats else None)
    writer, count, written, tar_path = None, 0, 0, None  # count: in this shard; written: in the split

    def close_shard():
        writer.close()
        f.close()
        idx_path = tar_path.with_suffix(".idx")
        make_index(tar_path, idx_path)
        result.shards.append(ShardInfo(tar_path.name, idx_path.name, count, file_sha256(tar_path)))

    bar = tqdm(total=len(order), desc=f"{dataset} {split}", unit="img", disable=not progress, file=sys.stderr)
    try:
        for prepared in prefetched(lambda i: sample_components(source, i, num_classes, compute_stats), order):
            bar.update()
            key = f"{split}-{written:08d}"
            if isinstance(prepared, BadSample):
                error = ShardError(f"{prepared.origin} (sample {key}): {prepared.reason}")
                if on_error != "skip":
                    raise error
                result.skipped += 1
                if result.skipped <= MAX_SKIP_MESSAGES:
                    log(f"skipped: {error}")
                continue
            parts, enc = prepared
            parts["__key__"] = key
            if writer is None:
                tar_path = split_dir / f"{dataset}-{split}-{len(result.shards):06d}.tar"
                f = open(tar_path, "wb")
                writer = wds.TarWriter(f, user="", group="", mode=0o444, mtime=0, encoder=False)
            writer.write(parts)
            count += 1
            written += 1
            result.sizes.add(tuple(enc.size))
            result.formats.add(enc.ext)
            result.all_gray &= enc.gray
            if result.stats is not None:
                result.stats.add(enc.pixels)
            if count == shard_size:
                close_shard()
                writer, count = None, 0
        if writer is not None:
            close_shard()
            writer = None
    finally:
        bar.close()
        if writer is not None:  # an error left this shard half-written; the caller drops the split
            writer.close()
            f.close()
    if not result.shards:
        raise ShardError(f"{dataset} {split}: no samples written ({result.skipped} skipped)")
    return result
