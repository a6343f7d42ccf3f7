"""`python -m data_shards stage SRC DIR`: copy shards from object storage (s3://, gs://, or any
location `cascade_dist.data.storage` reads) to a local folder, for the DALI loader, which reads
local files only.

SRC is a shard tree (holding `train/`, `val/`, `test/`) or one split folder. Each shard is
streamed to a temporary name while its sha256 is computed, and moved into place only when that
matches the manifest; a mismatch stops with an error naming the object. The index files follow,
their sample counts checked, and `manifest.json` is written last: a split whose manifest is there
is complete. Staging again copies only what is missing or differs (a shard already present with
the manifest's sha256 is kept; its hash is cached per node, `checksums.cached_sha256`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cascade_dist.data import storage
from cascade_dist.data.checksums import cached_sha256
from cascade_dist.data.manifest import MANIFEST_NAME, Manifest, ShardError

from .convert import SPLITS

CHUNK = 4 << 20


@dataclass
class Staged:
    """What staging one split did."""

    split_dir: Path
    copied: int
    kept: int
    num_samples: int


def split_sources(src: str) -> list[tuple[str, str]]:
    """(split folder, split name) pairs under `src`: `src` itself if it holds a manifest, else
    its train/val/test folders that do."""
    if storage.is_file(storage.join(src, MANIFEST_NAME)):
        return [(src, "")]
    found = [(storage.join(src, s), s) for s in SPLITS if storage.is_file(storage.join(src, s, MANIFEST_NAME))]
    if not found:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {src} or its {'/'.join(SPLITS)} folders")
    return found


def stage(src: str, dest: str | Path, log: Callable[[str], None] = print) -> list[Staged]:
    """Copy and verify every split under `src` into `dest` (same layout); returns one `Staged` each."""
    src, dest = storage.resolve_storage(src), Path(dest)
    if storage.is_uri(dest):
        raise ValueError(f"stage: the destination must be a local folder, got {dest}")
    done = []
    for split_src, split in split_sources(src):
        done.append(stage_split(split_src, dest / split if split else dest))
        d = done[-1]
        log(f"{split_src} -> {d.split_dir}: {d.num_samples} samples, {d.copied} shard(s) copied, {d.kept} already there")
    return done


def stage_split(src: str, dest: Path) -> Staged:
    manifest_file = storage.join(src, MANIFEST_NAME)
    manifest = Manifest.load(src)
    dest.mkdir(parents=True, exist_ok=True)
    present = [dest / s.file for s in manifest.shards if (dest / s.file).is_file()]
    have = cached_sha256(present)
    copied = 0
    for shard in manifest.shards:
        target = dest / shard.file
        if have.get(target) != shard.sha256:
            copy_verified(storage.join(src, shard.file), target, shard.sha256, manifest_file)
            copied += 1
        copy_index(storage.join(src, shard.index), dest / shard.index, shard.num_samples, shard.file)
    storage.write_text(dest / MANIFEST_NAME, storage.read_text(manifest_file))  # last: the split is complete
    return Staged(dest, copied, len(manifest.shards) - copied, manifest.num_samples)


def copy_verified(src: str, target: Path, sha256: str, manifest_file: str) -> None:
    """Stream `src` to `target` through a temporary name, kept only if its sha256 is `sha256`."""
    tmp = target.with_name(f"{target.name}.part{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with storage.open_input(src) as f, open(tmp, "wb") as out:
            while block := f.read(CHUNK):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise ShardError(f"{src}: sha256 {digest.hexdigest()} does not match {sha256} in {manifest_file} "
                             f"(changed or corrupt in storage); {target} not written")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def copy_index(src: str, target: Path, num_samples: int, shard: str) -> None:
    """Copy a shard's DALI index if it differs, checking that it counts `num_samples` samples."""
    text = storage.read_text(src)
    head = text.split("\n", 1)[0].split()
    if len(head) != 2 or head[1] != str(num_samples):
        raise ShardError(f"{src}: index header {' '.join(head)!r} does not match the manifest's {num_samples} "
                         f"samples for shard {shard}")
    if not target.is_file() or target.read_text() != text:
        storage.write_text(target, text)
