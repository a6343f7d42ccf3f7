"""webdataset + torch DataLoader backend, with the same contract and spec as the DALI backend.

Each epoch:

1. the shard order is fixed (evaluation) or shuffled with ``Random(seed, epoch)`` -- the same on
   every rank, like DALI's ``shuffle_after_epoch``;
2. this rank takes its contiguous sample range ``[floor(r*N/W), floor((r+1)*N/W))`` of that order
   (the node split; the same rule as DALI's ``shard_id``/``num_shards``, so both backends give a rank
   the same samples in evaluation and the same number of batches in training, and it works with
   fewer shards than ranks);
3. the range is split into one contiguous sub-range per DataLoader worker (the worker split); a
   worker seeks into the tar with the shard's DALI index file and reads its samples with
   webdataset's tar iterator and key grouping, shuffles them in a seeded buffer (training), decodes
   PNG/JPEG with ``torchvision.io``, applies the spec with ``torchvision.transforms.v2``, normalises
   and batches;
4. the main process re-batches the workers' batches to exactly ``batch_size`` (training drops the
   partial last batch and stops after ``len(loader)`` batches; evaluation keeps it).

Randomness (shuffle buffer, crops, flips) is seeded from ``(seed, epoch, rank, worker)`` and does
not touch the caller's global RNG, so a fixed seed reproduces an epoch exactly; call
:meth:`TorchLoader.set_epoch` each epoch for a new order.

Shards at a URI (``s3://bucket/shards``): each piece is opened through :mod:`storage` (pyarrow.fs,
a buffered, seekable reader), so a worker seeks to its first sample with the DALI index as it does on
disk; webdataset's ``pipe:`` URLs (``pipe:aws s3 cp ... -``) cannot seek, and every worker would read
its shard from the start. webdataset's tar iterator and key grouping stay the same.

Workers are forked. The garbage of the parent is collected first: a forked worker that collects
an inherited DALI pipeline (garbage of an earlier DALI loader in the same process) calls its
native shutdown, which waits for threads that do not exist in the child, and the epoch hangs.

Bad samples: an undecodable image, a missing image or ``.lbl`` component, a label outside
``[0, num_classes)``, or an unreadable (truncated) tar raise :class:`DataError` naming the shard
and the sample key, or with ``on_error="skip"`` are skipped, logged and counted in
``loader.skipped``.
"""

from __future__ import annotations

import gc
import io
import itertools
import logging
import random
import tarfile
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2

from . import storage
from .augment import AugmentSpec, Normalization
from .contract import DataError, Loader, mix_seed, rank_range, shard_order
from .manifest import ShardError, decode_label

__all__ = ["TorchLoader", "build_transform"]

log = logging.getLogger(__name__)

_SHUFFLE_BUFFER = 4096
_SHUFFLE_INITIAL = 1024
_IMAGE_EXTS = ("png", "jpg", "jpeg")


def build_transform(spec: AugmentSpec) -> v2.Transform:
    """The spec as torchvision v2 transforms on a uint8 (C, H, W) tensor (normalisation apart)."""
    steps: list[Any] = []
    if spec.random_resized_crop:
        s = spec.random_resized_crop
        steps.append(v2.RandomResizedCrop((s, s), scale=spec.rrc_scale, ratio=spec.rrc_ratio, antialias=True))
    if spec.resize:
        steps.append(v2.Resize(spec.resize, antialias=True))
    if spec.crop:
        steps.append(v2.RandomCrop(spec.crop, padding=spec.pad or None, fill=0, padding_mode="constant"))
    if spec.center_crop:
        steps.append(v2.CenterCrop(spec.center_crop))
    if spec.flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    return v2.Compose(steps or [v2.Identity()])


def _split(begin: int, end: int, parts: int) -> list[tuple[int, int]]:
    n = end - begin
    return [(begin + n * i // parts, begin + n * (i + 1) // parts) for i in range(parts)]


class _SkipCounter:
    """Counts samples a worker skipped since its last batch (on_error="skip")."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.count = 0

    def __call__(self, err: DataError, n: int = 1) -> None:
        if self.on_error != "skip":
            raise err
        self.count += n
        log.warning("skipping bad sample: %s", err)


class _RankStream(IterableDataset):
    """One epoch of this rank's samples, as batches (images, labels, skipped) per worker."""

    def __init__(
        self,
        worker_pieces: list[list[tuple[str, str, int, int]]],
        *,
        spec: AugmentSpec,
        norm: Normalization,
        channels: int,
        image_size: tuple[int, int] | None,
        num_classes: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        on_error: str,
    ) -> None:
        self.worker_pieces = worker_pieces
        self.spec = spec
        self.channels = channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.on_error = on_error
        self.mean = torch.tensor(norm.mean255, dtype=torch.float32).view(-1, 1, 1)
        # (x - mean) * (1 / std), as DALI's crop_mirror_normalize computes it: identical floats.
        self.inv_std = 1.0 / torch.tensor(norm.std255, dtype=torch.float64).view(-1, 1, 1).float()

    def __iter__(self):
        """Yields (images, labels, keys, skipped, error): a DataError in a worker comes back as its
        message in ``error`` (re-raised by the main process without the worker's traceback)."""
        try:
            yield from self._batches()
        except DataError as err:
            yield torch.empty(0), torch.empty(0, dtype=torch.int64), [], 0, str(err)

    def _batches(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)
        skips = _SkipCounter(self.on_error)
        stages = [lambda: iter(self.worker_pieces[worker]), lambda pieces: _read_pieces(pieces, skips)]
        if self.shuffle:
            rng = random.Random(mix_seed(self.seed, worker, 1))
            stages.append(wds.shuffle(_SHUFFLE_BUFFER, _SHUFFLE_INITIAL, rng=rng))
        samples = iter(wds.DataPipeline(*stages))
        transform = build_transform(self.spec)
        rng_state = torch.Generator().manual_seed(mix_seed(self.seed, worker, 2) % (2**63)).get_state()
        while True:
            chunk = list(itertools.islice(samples, self.batch_size))
            if not chunk and not skips.count:
                return
            # The transforms draw from torch's global RNG: swap in this stream's own state.
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng_state)
                images, labels, keys = [], [], []
                for sample in chunk:
                    try:
                        image, label = self._decode(sample)
                        image = transform(image)
                    except DataError as err:
                        skips(err)
                        continue
                    images.append(image)
                    labels.append(label)
                    keys.append(str(sample.get("__key__")))
                rng_state = torch.get_rng_state()
            skipped, skips.count = skips.count, 0
            if images:
                x = (torch.stack(images).float() - self.mean) * self.inv_std
                y = torch.tensor(labels, dtype=torch.int64)
            else:
                x = torch.empty(0, dtype=torch.float32)
                y = torch.empty(0, dtype=torch.int64)
            yield x, y, keys, skipped, ""
            if not chunk:
                return

    def _decode(self, sample: dict) -> tuple[torch.Tensor, int]:
        key, url = sample.get("__key__"), sample.get("__url__")
        where = f"sample {key!r} in shard {url}"
        data = next((sample[e] for e in _IMAGE_EXTS if e in sample), None)
        present = sorted(k for k in sample if not k.startswith("__"))
        if data is None:
            raise DataError(f"{where} has no image component (png/jpg); it has {present}")
        if "lbl" not in sample:
            raise DataError(f"{where} has no label component 'lbl'; it has {present}")
        raw = sample["lbl"]
        if len(raw) != 8:
            raise DataError(f"{where}: label component 'lbl' has {len(raw)} bytes, expected 8 (int64 LE)")
        label = int.from_bytes(raw, "little", signed=True)
        if not 0 <= label < self.num_classes:
            raise DataError(f"{where}: label {label} out of range [0, {self.num_classes})")
        if "cls" in sample:  # both label forms present: they must agree
            try:
                decode_label(sample["cls"], raw, where, self.num_classes)
            except ShardError as e:
                raise DataError(str(e)) from None
        image = decode_image_bytes(data, self.channels, where)
        if self.image_size and tuple(image.shape[1:]) != self.image_size:
            raise DataError(f"{where}: image is {tuple(image.shape[1:])}, the manifest says {self.image_size}")
        return image, label


def decode_image_bytes(data: bytes, channels: int, where: str) -> torch.Tensor:
    """PNG/JPEG bytes -> uint8 (C, H, W), decoded with PIL so that a corrupt image raises a DataError
    naming ``where`` (torchvision's libpng decoder can abort the process on a corrupt IDAT)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # full decompression: a bad header, IDAT stream or checksum raises here
            array = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except Exception as e:  # noqa: BLE001 - any decoder failure names the sample
        raise DataError(f"{where}: undecodable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    image = torch.from_numpy(array.copy())
    return image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1).contiguous()


def _read_pieces(pieces, skips: _SkipCounter):
    """Samples of (shard, index, first, count) pieces via webdataset's tar iterator and grouping."""
    for url, index, first, count in pieces:
        stream = storage.open_input(url)  # a local file, or a buffered object-store reader (`storage`)
        try:
            start = _sample_offset(stream, index, first)
            skip = 0
            if start is None:  # could not seek: read from the start and skip
                start, skip = 0, first
            stream.seek(start)
            files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=_reraise)
            samples = wds.tariterators.group_by_keys(files, handler=_reraise)
            key, done = None, 0
            try:
                for sample in itertools.islice(samples, skip, skip + count):
                    key = sample["__key__"]
                    done += 1
                    yield sample
            except (tarfile.TarError, OSError, ValueError, EOFError) as e:
                after = f" after sample {key!r}" if key else ""
                why = e.args[0] if e.args else e
                # skip mode: the rest of the piece is lost; count those samples
                skips(DataError(f"unreadable shard {url}{after}: {type(e).__name__}: {why}"), count - done)
        finally:
            stream.close()


def _reraise(exn: Exception) -> bool:
    raise exn


def _sample_offset(stream, index: str, sample: int) -> int | None:
    """Byte offset of the tar header of ``sample`` (0-based), from the shard's DALI index file;
    None if the index line or the header found there does not match (then the caller skips)."""
    if sample == 0:
        return 0
    if storage.is_uri(index):
        lines = storage.read_text(index).splitlines()
        line = lines[sample + 1] if sample + 1 < len(lines) else None
    else:
        with open(index) as f:
            line = next(itertools.islice(f, sample + 1, sample + 2), None)
    fields = (line or "").split()
    try:
        offsets = [int(x) for x in fields[1::4]]
    except ValueError:
        return None
    if not offsets or len(fields) % 4:
        return None
    first = offsets.index(min(offsets))
    header = offsets[first] - 512
    if header < 0:
        return None
    stream.seek(header)
    try:
        info = tarfile.TarInfo.frombuf(stream.read(512), tarfile.ENCODING, "surrogateescape")
    except tarfile.TarError:
        return None
    return header if info.name == fields[3::4][first] else None


class TorchLoader(Loader):
    """Iterates (images, labels) from webdataset shards with DataLoader workers."""

    backend = "torch"

    def _epoch_worker_pieces(self) -> list[list[tuple[str, str, int, int]]]:
        info = self.info
        order = shard_order(len(info.shard_paths), self.seed, self.epoch, self.train)
        begin, end = rank_range(info.num_samples, self.rank, self.world_size)
        workers = max(1, min(self.num_workers, end - begin))
        starts = list(itertools.accumulate((info.shard_counts[i] for i in order), initial=0))
        result = []
        for lo, hi in _split(begin, end, workers):
            pieces = []
            for j, shard in enumerate(order):
                a, b = max(lo, starts[j]), min(hi, starts[j + 1])
                if a < b:
                    pieces.append((str(info.shard_paths[shard]), str(info.index_paths[shard]), a - starts[j], b - a))
            result.append(pieces)
        return result

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker_pieces = self._epoch_worker_pieces()
        stream = _RankStream(
            worker_pieces,
            spec=self.spec,
            norm=self.norm,
            channels=int(self.manifest.channels),
            image_size=tuple(self.manifest.image_size) if self.manifest.image_size else None,
            num_classes=self.num_classes,
            batch_size=self.batch_size,
            shuffle=self.train,
            seed=mix_seed(self.seed, self.epoch, self.rank),
            on_error=self.on_error,
        )
        workers = len(worker_pieces) if self.num_workers > 0 else 0
        if workers:  # the forked workers inherit this process's garbage: collect it here first
            gc.collect()
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        batches = iter(loader)
        try:
            for x, y, keys in itertools.islice(self._rebatch(batches), self.start_batch, None):
                if self.track_keys:
                    self.last_keys = keys
                yield x, y
        finally:
            # Stop the workers now, also when the caller breaks out or an error's traceback keeps
            # this frame alive (else they linger until garbage collection, and workers forked
            # later inherit the live iterator).
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _rebatch(self, batches) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """The workers' batches cut to exactly batch_size (train: at most len(self) of them), with
        their sample keys."""
        limit = len(self) if self.train else None
        produced = 0
        pend_x: list[torch.Tensor] = []
        pend_y: list[torch.Tensor] = []
        pend_k: list[str] = []
        pending = 0
        B = self.batch_size
        for x, y, keys, skipped, error in batches:
            if error:
                raise DataError(error)
            self.skipped += int(skipped)
            if len(y) == 0:
                continue
            if pending == 0 and len(y) == B:  # the common case: a worker's full batch, no copy
                yield *self._to_device(x, y), keys
                produced += 1
                if limit is not None and produced >= limit:
                    return
                continue
            pend_x.append(x)
            pend_y.append(y)
            pend_k += keys
            pending += len(y)
            while pending >= B:
                xs, ys = torch.cat(pend_x), torch.cat(pend_y)
                pending = len(ys) - B
                pend_x, pend_y = ([xs[B:]], [ys[B:]]) if pending else ([], [])
                ks, pend_k = pend_k[:B], pend_k[B:]
                yield *self._to_device(xs[:B], ys[:B]), ks
                produced += 1
                if limit is not None and produced >= limit:
                    return
        if pending and not self.train:
            yield *self._to_device(torch.cat(pend_x), torch.cat(pend_y)), pend_k

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cpu":
            return x.contiguous(), y.contiguous()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
