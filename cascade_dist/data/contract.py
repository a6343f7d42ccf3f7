"""The batch contract and the split bookkeeping that both loader backends share.

Batch contract: iterating a loader yields ``(images, labels)`` with ``images`` float32
``(N, C, H, W)`` normalised by the manifest's mean/std and ``labels`` int64 ``(N,)``, both on the
loader's device. ``len(loader)`` is the number of batches this rank yields in the current epoch.

Sharding across ranks (both backends, identical): the split's samples, in shard order, form one
list of ``N`` samples; rank ``r`` of ``W`` reads the contiguous range
``[floor(r*N/W), floor((r+1)*N/W))`` -- the rule of DALI's readers. Rank sizes differ by at most
one sample, so an evaluation epoch (partial last batch kept) sees every sample exactly once across
ranks with no padding, and a training epoch (partial last batch dropped) has the same number of
batches, ``floor(floor(N/W)/B)``, on every rank -- what data-parallel training needs to not hang.
In training the shard order is reshuffled every epoch with a seed that all ranks share, so a rank
reads different samples each epoch.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .augment import AugmentSpec, Normalization
from . import storage
from .checksums import cached_sha256
from .manifest import Manifest, ShardError

__all__ = ["DataError", "Loader", "SplitInfo", "open_split", "rank_range", "SPLITS", "BACKENDS"]

SPLITS = ("train", "val", "test")
BACKENDS = ("dali", "torch")
ON_ERROR = ("raise", "skip")


class DataError(ShardError):
    """Bad input data met by a loader (corrupt image, label out of range, missing component,
    truncated shard, manifest/shard mismatch). The message names the file and, where known, the
    sample key. A :class:`~cascade_dist.data.manifest.ShardError`, like the shard writer's errors."""


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


@dataclass(frozen=True)
class SplitInfo:
    """One split on disk, checked against its manifest."""

    split_dir: Path | str
    """A local folder (Path), or a URI (str) whose shards the torch backend streams."""
    manifest: Any
    shard_paths: tuple[Path | str, ...]
    index_paths: tuple[Path | str, ...]
    shard_counts: tuple[int, ...]

    @property
    def num_samples(self) -> int:
        return int(self.manifest.num_samples)


def open_split(shard_dir: str | Path, split: str) -> SplitInfo:
    """Load ``shard_dir/split/manifest.json`` and check that every shard and index file it names is
    there with the sample count and sha256 the manifest says (`checksums`: hashed once per node).
    ``shard_dir`` is a local folder or a URI (`storage`: s3://bucket/shards); the paths of a
    remote split stay URIs. Errors name the path and what was expected."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    shard_dir = storage.location(shard_dir)
    if not storage.is_dir(shard_dir):
        raise FileNotFoundError(
            f"shard directory {shard_dir} does not exist: write it with `python -m data_shards SOURCE --out {shard_dir}`"
        )
    split_dir = storage.location(storage.join(shard_dir, split))
    manifest_path = storage.join(split_dir, "manifest.json")
    if not storage.is_file(manifest_path):
        have = [p for p in storage.list_dir(shard_dir) if storage.is_file(storage.join(shard_dir, p, "manifest.json"))]
        raise FileNotFoundError(
            f"no split {split!r} under {shard_dir}: {manifest_path} is missing "
            f"(splits present: {', '.join(have) or 'none'})"
        )
    manifest = Manifest.load(split_dir)
    if str(manifest.split) != split:
        raise DataError(f"{manifest_path}: manifest is for split {manifest.split!r}, not {split!r}")
    shards = list(manifest.shards)
    if not shards:
        raise DataError(f"{manifest_path}: lists no shards")
    shard_paths = tuple(manifest.shard_paths(split_dir))
    index_paths = tuple(manifest.index_paths(split_dir))
    counts = tuple(int(_field(s, "num_samples")) for s in shards)
    if sum(counts) != int(manifest.num_samples):
        raise DataError(
            f"{manifest_path}: shard sample counts sum to {sum(counts)}, "
            f"num_samples says {manifest.num_samples}"
        )
    for tar, idx, count in zip(shard_paths, index_paths, counts):
        if not storage.is_file(tar):
            raise DataError(f"shard {tar} listed in {manifest_path} is missing")
        if not storage.is_file(idx):
            raise DataError(f"index {idx} of shard {storage.name(tar)} is missing (rewrite it with `wds2idx {tar} {idx}`)")
        with storage.open_input(idx) as f:
            header = f.read(64).split(b"\n", 1)[0].decode("ascii", "replace").split()
        if len(header) != 2 or not header[1].isdigit() or int(header[1]) != count:
            raise DataError(
                f"index {idx} (header {' '.join(header)!r}) does not match the manifest's "
                f"{count} samples for shard {storage.name(tar)}"
            )
    expected = {tar: str(_field(s, "sha256") or "") for tar, s in zip(shard_paths, shards)}
    for tar, digest in cached_sha256([t for t, e in expected.items() if e]).items():
        if digest != expected[tar]:
            raise DataError(f"shard {tar}: sha256 {digest[:16]}… differs from {expected[tar][:16]}… in "
                            f"{manifest_path} (changed since written: rewrite or re-verify it)")
    if int(manifest.channels) not in (1, 3):
        raise DataError(f"{manifest_path}: channels must be 1 or 3, got {manifest.channels}")
    return SplitInfo(split_dir, manifest, shard_paths, index_paths, counts)


def local_files_only(shards: str) -> str:
    """Why the DALI backend cannot read the shards at URI `shards`, and what to do instead."""
    return (f"{shards} is on object storage, and data.backend=dali reads local files only: stage a copy on "
            f"each node with `python -m data_shards stage {shards} /local/shards` and set "
            f"data.shards=/local/shards, or stream it with data.backend=torch")


def rank_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[begin, end) of the global sample range that ``rank`` reads (DALI's sharding rule)."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def mix_seed(*parts: int) -> int:
    """One seed from several integers (run seed, epoch, rank, worker...), the same in every process."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + 1) % (2**61 - 1)
    return h


def shard_order(num_shards: int, seed: int, epoch: int, train: bool) -> list[int]:
    """The order the split's shards are read in: as written for evaluation; in training shuffled
    by (seed, epoch), the same on every rank and in every process (a resumed run included)."""
    order = list(range(num_shards))
    if train:
        random.Random(mix_seed(seed, epoch)).shuffle(order)
    return order


def sample_key(source: str) -> str:
    """A sample's webdataset key from where a reader found it (`shard.tar:offset:key.png`, DALI's
    source_info, or a plain key)."""
    name = source.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    return name.split(".", 1)[0]


def batches_per_epoch(num_samples: int, rank: int, world_size: int, batch_size: int, train: bool) -> int:
    if train:  # the same on every rank: the smallest rank range, partial batch dropped
        return (num_samples // world_size) // batch_size
    begin, end = rank_range(num_samples, rank, world_size)
    return math.ceil((end - begin) / batch_size)


class Loader:
    """Base of both backends: holds the options, the manifest and the resolved spec."""

    backend = ""

    def __init__(
        self,
        info: SplitInfo,
        *,
        batch_size: int,
        train: bool,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int,
        device: torch.device,
        spec: AugmentSpec,
        on_error: str,
    ) -> None:
        self.info = info
        self.manifest = info.manifest
        self.split = str(info.manifest.split)
        self.batch_size = batch_size
        self.train = train
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_workers = num_workers
        self.device = device
        self.spec = spec
        self.norm = Normalization.from_manifest(info.manifest)
        self.on_error = on_error
        self.epoch = 0
        self.start_batch = 0
        self.track_keys = False
        """Set True to have `last_keys` hold the sample keys of the batch last yielded."""
        self.last_keys: list[str] | None = None
        self.skipped = 0  # bad samples skipped so far (on_error="skip")
        self.num_classes = int(info.manifest.num_classes)
        if self.spec.output_size(info.manifest.image_size) is None:
            raise ValueError(
                f"{info.split_dir}: images have no fixed size (manifest image_size is null), so the "
                f"augmentation {spec} cannot make equal-sized batches: add resize+center_crop or random_resized_crop"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (the seed of its shard order, shuffle and augmentation) and the first
        batch to yield. Call before iterating.

        `start_batch` > 0 resumes mid-epoch: the batches before it are read and dropped, so the
        rest is exactly what the uninterrupted epoch yields from there (orders and augmentations
        are functions of seed, epoch, rank and position only). The dropped batches cost their
        decoding, not a training step."""
        if not 0 <= int(start_batch) <= len(self):
            raise ValueError(f"start_batch {start_batch} is not in [0, {len(self)}] (batches in this epoch)")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        return batches_per_epoch(self.info.num_samples, self.rank, self.world_size, self.batch_size, self.train)

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank yields per epoch (eval: its whole range; train: full batches only)."""
        if self.train:
            return len(self) * self.batch_size
        begin, end = rank_range(self.info.num_samples, self.rank, self.world_size)
        return end - begin

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_labels(self, labels: torch.Tensor, where: Any = None) -> None:
        """Stop on a label outside [0, num_classes); ``where(i)`` names sample i (shard and key)."""
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            origin = f" at {where(i)}" if where is not None else ""
            raise DataError(
                f"label {int(labels[i])} out of range [0, {self.num_classes}) in split "
                f"{self.split!r} of {self.info.split_dir}{origin}"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.info.split_dir}, batch_size={self.batch_size}, train={self.train}, "
            f"rank={self.rank}/{self.world_size}, device={self.device}, spec={self.spec})"
        )


_IDX_LINE = re.compile(r'index file at "(?P<idx>[^"]+)" line (?P<line>\d+)(?: - (?P<why>[^\n]*))?')


def explain_index_error(message: str) -> str:
    """DALI's webdataset reader reports a bad sample as a line of an index file: name its shard
    and key (a missing component, or a shard shorter than its index: truncated)."""
    m = _IDX_LINE.search(message)
    if not m:
        return ""
    idx, line = Path(m.group("idx")), int(m.group("line"))
    tar = idx.with_suffix(".tar")
    try:
        fields = idx.read_text().splitlines()[line].split()  # line 0 is the header; DALI counts from 0
    except (OSError, IndexError):
        fields = []
    names = fields[3::4]
    key = names[0].split(".", 1)[0] if names else f"at index line {line}"
    if "Underful" in message:
        exts = sorted(n.split(".", 1)[1] for n in names if "." in n)
        return f"sample {key!r} in shard {tar} is missing a component: it has only {exts}"
    if "outside of the archive" in message:
        return f"shard {tar} is truncated or does not match its index {idx.name}: sample {key!r} lies beyond its end"
    return f"sample {key!r} in shard {tar}: {m.group('why') or 'bad index entry'}"
