"""NVIDIA DALI backend: ``fn.readers.webdataset`` -> decode -> the augmentation spec -> torch.

One pipeline per rank. ``device="cuda[:i]"`` decodes with ``fn.decoders.image(device="mixed")``
(nvImageCodec on the GPU) and runs the augmentation on the GPU; ``device="cpu"`` builds a CPU-only
pipeline (``device_id=None``) that runs everything on DALI's CPU thread pool.

Sharding and epochs
  * ``shard_id``/``num_shards`` = rank/world size: DALI splits the split's samples (in shard order)
    into contiguous per-rank ranges (see :mod:`cascade_dist.data.contract`).
  * Training: one pipeline per epoch, reading the tar files in the epoch's order
    (:func:`~cascade_dist.data.contract.shard_order`: shuffled by seed and epoch, identical on all
    ranks), with ``random_shuffle`` (a shuffle buffer of ``initial_fill`` samples) and the random
    augmentation seeded by (seed, epoch, rank). Epoch e's batches are therefore the same in a fresh
    process as in the run that got there (a resumed run replays them exactly, `set_epoch`'s
    ``start_batch``), which DALI's own ``shuffle_after_epoch`` counter would not give.
    Last-batch policy **DROP**: every rank yields ``floor(floor(N/W)/B)`` full batches per epoch
    (the partial batch and, on ranks holding one sample more, that sample are dropped).
  * Evaluation: no shuffle, ``stick_to_shard``, ``pad_last_batch`` with last-batch policy
    **PARTIAL**: DALI pads the rank's last batch with copies of its last sample and the iterator
    cuts them off, so each rank yields exactly its range and the ranks together see every sample
    once (no padding reaches the caller).

Errors
  * a sample without its image or ``.lbl`` component fails when the pipeline is built
    (``missing_component_behavior="error"``): re-raised naming the shard and the sample key;
  * an undecodable image fails inside DALI without naming the sample: the rank's shards are then
    scanned with PIL to name the shard and key of the first undecodable image;
  * a label outside ``[0, num_classes)`` is caught per batch, naming the shard, offset and key from
    DALI's per-sample ``source_info``.
  * DALI reads only ``.lbl`` and the image. DALI 2.4's CPU image decoder (nvImageCodec) can crash
    the process with a segmentation fault on a corrupt PNG instead of raising (seen in
    ``ImageDecoder<CPUBackend>::RunImplImpl``; upstream). So DALI reads only images that were
    decoded before: a manifest whose writer decoded every image (``images_checked``, set by
    ``data_shards``) vouches for shards whose sha256 matches it (checked on open); any other split
    gets the full ``verify_shard`` pass (PIL decode, ``.cls``/``.lbl`` agreement) once per node
    (``checksums.decode_checked``), and a bad sample stops the run naming shard and key.
  ``on_error="skip"`` is not available here (DALI cannot drop an undecodable image): use the
  torch backend for data sets that need it.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Iterator

import torch

from .augment import AugmentSpec, Normalization
from .checksums import decode_checked
from .contract import DataError, Loader, explain_index_error, mix_seed, rank_range, sample_key, shard_order
from .manifest import ShardError

__all__ = ["DaliLoader", "build_pipeline"]

_READER = "Reader"
_SHUFFLE_BUFFER = 4096
_SCAN_BUDGET_S = 60.0


def _dali():
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError as e:  # pragma: no cover - the package is a dependency
        raise ImportError(f"backend='dali' needs NVIDIA DALI (pip install nvidia-dali-cuda130): {e}") from e
    return fn, pipeline_def, types, DALIGenericIterator, LastBatchPolicy


def _pad_crop_anchor(fn, types, size: int, crop: int, pad: int):
    """A uniformly drawn integer start in [-pad, size + pad - crop] (what torchvision's
    RandomCrop(padding=pad) draws), as an int32 scalar for ``fn.slice``."""
    values = list(range(-pad, size + pad - crop + 1))
    if not values:
        raise ValueError(f"AugmentSpec.crop {crop} is larger than the padded image ({size} + 2*{pad})")
    return fn.random.uniform(values=values, dtype=types.INT32)


def build_pipeline(
    *,
    paths: list[str],
    index_paths: list[str],
    spec: AugmentSpec,
    norm: Normalization,
    image_size: tuple[int, int] | None,
    channels: int,
    batch_size: int,
    train: bool,
    shard_id: int,
    num_shards: int,
    seed: int,
    num_threads: int,
    device_id: int | None,
):
    """The DALI pipeline: returns (images float CHW normalised, labels int64 scalar, source_info)."""
    fn, pipeline_def, types, _, _ = _dali()
    gpu = device_id is not None
    # Reader and random ops get per-rank seeds (the shard order is the caller's: `paths`).
    rank_seed = (seed * 1_000_003 + shard_id * 7919 + 1) % (2**31 - 1)

    @pipeline_def(
        batch_size=batch_size,
        num_threads=max(1, num_threads),
        device_id=device_id,
        seed=rank_seed,
        prefetch_queue_depth=2,
    )
    def pipeline():
        reader_kw = dict(random_shuffle=True, initial_fill=_SHUFFLE_BUFFER) if train else dict(stick_to_shard=True)
        encoded, label = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=["png;jpg;jpeg", "lbl"],
            dtypes=[types.UINT8, types.INT64],
            missing_component_behavior="error",
            shard_id=shard_id,
            num_shards=num_shards,
            pad_last_batch=True,
            seed=rank_seed,
            name=_READER,
            **reader_kw,
        )
        source = fn.pad(fn.get_property(encoded, key="source_info"), fill_value=0)
        decode_kw = dict(device="mixed" if gpu else "cpu", output_type=types.GRAY if channels == 1 else types.RGB)
        if spec.random_resized_crop:
            # DALI's ImageNet idiom: the random crop window is fused into the decode (a JPEG decodes
            # only the window's blocks), then resized to the training size.
            s = spec.random_resized_crop
            images = fn.decoders.image_random_crop(encoded, random_area=list(spec.rrc_scale),
                                                   random_aspect_ratio=list(spec.rrc_ratio), **decode_kw)
            images = fn.resize(images, size=[s, s], antialias=True)
        else:
            images = fn.decoders.image(encoded, **decode_kw)
        if spec.resize:
            images = fn.resize(images, resize_shorter=float(spec.resize), antialias=True)
        if spec.crop:
            if image_size is None or spec.resize or spec.random_resized_crop:
                raise ValueError("AugmentSpec.crop (pad + random crop) needs stored images of one fixed size")
            ch, cw = spec.crop
            start = fn.stack(
                _pad_crop_anchor(fn, types, image_size[0], ch, spec.pad),
                _pad_crop_anchor(fn, types, image_size[1], cw, spec.pad),
            )
            # fn.crop asserts for windows outside the image; fn.slice pads them with zeros.
            images = fn.slice(
                images, start=start, shape=[ch, cw], axis_names="HW",
                out_of_bounds_policy="pad", fill_values=0,
            )
        cmn_kw = {}
        if spec.center_crop:
            cmn_kw = dict(crop=list(spec.center_crop), crop_pos_x=0.5, crop_pos_y=0.5)
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=norm.mean255,
            std=norm.std255,
            mirror=fn.random.coin_flip(probability=0.5) if spec.flip else 0,
            **cmn_kw,
        )
        label = fn.reshape(label, shape=[])
        return images, label, source

    return pipeline()


class DaliLoader(Loader):
    """Iterates (images, labels) from a DALI pipeline over this rank's range of the split."""

    backend = "dali"

    def __init__(self, info, **kw) -> None:
        super().__init__(info, **kw)
        if self.on_error != "raise":
            raise ValueError(
                "on_error='skip' is not supported by backend='dali' (DALI cannot drop an undecodable "
                "image): use backend='torch' or fix the shards (`python -m data_shards verify`)"
            )
        if not info.manifest.images_checked:
            try:
                decode_checked(info.split_dir, info.manifest)
            except ShardError as e:
                raise DataError(f"{e} (found by the decode check of a split whose manifest does not say "
                                f"its images were decoded on write; DALI reads only checked images)") from None
        self._gpu = self.device.type == "cuda"
        if self._gpu and not torch.cuda.is_available():
            raise RuntimeError(f"device={self.device} requested for the DALI loader but CUDA is not available")
        self._iterator = None
        self._built_epoch: int | None = None
        self._mid_epoch = False

    # -- building -------------------------------------------------------------------------------
    def _build(self):
        _, _, _, DALIGenericIterator, LastBatchPolicy = _dali()
        info = self.info
        device_id = None
        if self._gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        image_size = tuple(info.manifest.image_size) if info.manifest.image_size else None
        order = shard_order(len(info.shard_paths), self.seed, self.epoch, self.train)
        try:
            pipe = build_pipeline(
                paths=[str(info.shard_paths[i]) for i in order],
                index_paths=[str(info.index_paths[i]) for i in order],
                spec=self.spec,
                norm=self.norm,
                image_size=image_size,
                channels=int(info.manifest.channels),
                batch_size=self.batch_size,
                train=self.train,
                shard_id=self.rank,
                num_shards=self.world_size,
                seed=mix_seed(self.seed, self.epoch) % (2**31 - 1) if self.train else self.seed,
                num_threads=self.num_workers,
                device_id=device_id,
            )
            pipe.build()
            return DALIGenericIterator(
                [pipe],
                ["images", "labels", "source"],
                reader_name=_READER,
                last_batch_policy=LastBatchPolicy.DROP if self.train else LastBatchPolicy.PARTIAL,
                auto_reset=True,
            )
        except RuntimeError as e:
            raise self._wrap(e) from e

    def _wrap(self, e: Exception) -> Exception:
        """A DALI failure as an error naming the split, its shards and, where found, the sample."""
        msg = str(e)
        where = f"split {self.split!r} of {self.info.split_dir} (shards {', '.join(p.name for p in self.info.shard_paths)})"
        detail = explain_index_error(msg)
        lowered = msg.lower()
        if not detail and ("decoders.image" in lowered or "nvimagecodec" in lowered):
            detail = locate_undecodable(self._scan_order(), budget_s=_SCAN_BUDGET_S) or (
                "an image does not decode (the scan with PIL found no undecodable image in the split)"
            )
        if detail or "readers.webdataset" in lowered:
            return DataError(f"{detail or 'the webdataset reader failed'} -- {where}\nDALI said:\n{msg}")
        return RuntimeError(f"DALI pipeline failed on {where}:\n{msg}")

    def _scan_order(self) -> list[tuple[Path, int, int]]:
        """This rank's range first, then every shard of the split whole: in training DALI reshuffles
        which tar files a rank reads, so the bad image may lie outside the rank's range."""
        return self._rank_shards() + [(path, 0, count) for path, count in zip(self.info.shard_paths, self.info.shard_counts)]

    def _rank_shards(self) -> list[tuple[Path, int, int]]:
        """(shard, first, count) pieces of this rank's sample range."""
        begin, end = rank_range(self.info.num_samples, self.rank, self.world_size)
        pieces, offset = [], 0
        for path, count in zip(self.info.shard_paths, self.info.shard_counts):
            lo, hi = max(begin, offset), min(end, offset + count)
            if lo < hi:
                pieces.append((path, lo - offset, hi - lo))
            offset += count
        return pieces

    # -- iterating ------------------------------------------------------------------------------
    def _next(self, it):
        try:
            return next(it)
        except StopIteration:
            raise
        except RuntimeError as e:
            self._iterator = None  # a failed DALI pipeline is no longer valid
            raise self._wrap(e) from e

    def _drain(self) -> None:
        if self._iterator is not None and self._mid_epoch:
            try:
                while True:
                    self._next(self._iterator)
            except StopIteration:
                pass
        self._mid_epoch = False

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.train and self._built_epoch != self.epoch:  # training: the epoch's own pipeline (its
            self._iterator, self._mid_epoch = None, False  # shard order and seeds); nothing left to drain
        if self._iterator is None:
            self._iterator, self._built_epoch = self._build(), self.epoch
        self._drain()  # a previous epoch left unfinished (the caller broke out of the loop)
        it, n = self._iterator, len(self)
        self._mid_epoch = True
        produced = 0
        while True:
            try:
                out = self._next(it)[0]
            except StopIteration:
                break
            if produced >= n:  # DROP: ranks with one sample more read one batch more; drop it
                continue
            produced += 1
            if produced <= self.start_batch:  # resuming mid-epoch: read before the checkpoint
                continue
            labels = out["labels"]
            source = out["source"]
            where = lambda i: bytes(source[i].numpy()).rstrip(b"\0").decode(errors="replace")  # noqa: E731
            self.check_labels(labels, where)
            if self.track_keys:
                self.last_keys = [sample_key(where(i)) for i in range(len(labels))]
            images = out["images"]
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        self._mid_epoch = False


def locate_undecodable(pieces: list[tuple[Path, int, int]], budget_s: float = _SCAN_BUDGET_S) -> str:
    """Scan (shard, first, count) pieces with PIL; describe the first image that does not decode."""
    from PIL import Image

    t0 = time.monotonic()
    for path, first, count in pieces:
        seen = 0
        try:
            with tarfile.open(path, "r|") as tar:
                for member in tar:
                    if time.monotonic() - t0 > budget_s:
                        return f"(no undecodable image found within the {budget_s:.0f} s scan budget)"
                    ext = member.name.rsplit(".", 1)[-1].lower()
                    if ext not in ("png", "jpg", "jpeg"):
                        continue
                    seen += 1
                    if seen <= first:
                        continue
                    if seen > first + count:
                        break
                    data = tar.extractfile(member).read()
                    try:
                        with Image.open(io.BytesIO(data)) as im:
                            im.load()
                    except Exception as e:  # noqa: BLE001 - any decoder failure names the sample
                        key = member.name.rsplit(".", 1)[0]
                        return f"undecodable image {member.name!r} (sample {key!r}) in shard {path}: {e}"
        except (tarfile.TarError, OSError) as e:
            return f"unreadable shard {path}: {e}"
    return ""
