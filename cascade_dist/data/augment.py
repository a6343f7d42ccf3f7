"""The one augmentation spec that both loaders (DALI and torch) apply.

A spec is a small frozen dataclass of geometric steps, applied in this order:

1. ``random_resized_crop``: crop a random area (``rrc_scale``) and aspect ratio (``rrc_ratio``) and
   resize it to a square of that size (ImageNet training);
2. ``resize``: resize the shorter side to this many pixels (ImageNet evaluation);
3. ``crop`` with ``pad``: zero-pad every side by ``pad`` pixels, then take a random ``crop`` window
   (CIFAR-style training: "pad 4, random 32x32 crop");
4. ``center_crop``: take the central window (ImageNet evaluation);
5. ``flip``: horizontal flip with probability 1/2;

then normalisation with the manifest's per-channel mean/std (:class:`Normalization`). The DALI
pipeline (:mod:`cascade_dist.data.dali`) and the torchvision v2 transform
(:mod:`cascade_dist.data.torch_loader`) are both built from the same spec object, so the constants
below live only here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["AugmentSpec", "Normalization", "default_augment", "resolve_augment"]


@dataclass(frozen=True)
class AugmentSpec:
    """Geometric augmentation steps; every field at its default means "do nothing"."""

    pad: int = 0
    crop: tuple[int, int] | None = None
    flip: bool = False
    random_resized_crop: int | None = None
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    resize: int | None = None
    center_crop: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.pad < 0:
            raise ValueError(f"AugmentSpec.pad must be >= 0, got {self.pad}")
        if self.pad and self.crop is None:
            raise ValueError("AugmentSpec.pad needs AugmentSpec.crop (the random window after padding)")
        for name in ("crop", "center_crop"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, int):
                    value = (value, value)
                value = tuple(int(v) for v in value)
                if len(value) != 2 or min(value) <= 0:
                    raise ValueError(f"AugmentSpec.{name} must be (height, width) > 0, got {value}")
                object.__setattr__(self, name, value)

    @property
    def is_random(self) -> bool:
        """True if the spec draws random numbers (a training augmentation)."""
        return bool(self.crop or self.flip or self.random_resized_crop)

    def output_size(self, image_size: Sequence[int] | None) -> tuple[int, int] | None:
        """(H, W) of the images after the spec, given the stored size (None = varies per image)."""
        size = tuple(image_size) if image_size else None
        if self.random_resized_crop:
            size = (self.random_resized_crop, self.random_resized_crop)
        if self.resize:
            size = None if size is None else _shorter_side_resize(size, self.resize)
        if self.crop:
            size = self.crop
        if self.center_crop:
            size = self.center_crop
        return size

    def describe(self) -> dict[str, Any]:
        """A plain dict for logs and MLflow params."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std on the 0-1 pixel scale (from the manifest), applied as (x - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_manifest(cls, manifest: Any) -> "Normalization":
        mean = tuple(float(m) for m in manifest.mean)
        std = tuple(float(s) for s in manifest.std)
        channels = int(manifest.channels)
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(
                f"manifest of {manifest.dataset}/{manifest.split}: mean {list(mean)} and std {list(std)} "
                f"must have {channels} entries each, std > 0"
            )
        return cls(mean, std)

    @property
    def mean255(self) -> list[float]:
        """Mean on the 0-255 pixel scale (what both loaders subtract from uint8 pixels)."""
        return [m * 255.0 for m in self.mean]

    @property
    def std255(self) -> list[float]:
        return [s * 255.0 for s in self.std]


# Dataset families, keyed by the manifest's dataset name with "-" and "_" removed, lower case.
_SMALL_COLOUR = {"cifar10", "cifar100", "imagenet32", "imagenet64", "folder", "imagefolder"}
_GRAY_FLIP = {"fashionmnist", "fmnist"}
_GRAY_NO_FLIP = {"mnist"}  # digits are not mirror-symmetric
_LARGE = {"imagenet", "ilsvrc", "ilsvrc2012", "imagenet1k"}
_SMALL_MAX = 64  # largest side of a "small image" data set (CIFAR-style augmentation)


def _key(dataset: str) -> str:
    return dataset.lower().replace("-", "").replace("_", "")


def default_augment(manifest: Any, train: bool) -> AugmentSpec:
    """The augmentation of the data set named in ``manifest``.

    * CIFAR-10/100, ImageNet32, a folder of small images: pad 4, random HxW crop, flip.
    * Fashion-MNIST: pad 2, random 28x28 crop, flip. MNIST: pad 2 and crop, no flip (digits).
    * ImageNet (or any data set of large or variable-size images): train random-resized crop 224
      and flip; eval resize the shorter side to 256 and centre-crop 224.
    * Evaluation on small images: nothing.
    """
    key = _key(str(manifest.dataset))
    size = tuple(manifest.image_size) if manifest.image_size else None
    small = size is not None and max(size) <= _SMALL_MAX and key not in _LARGE
    if not small:
        if train:
            return AugmentSpec(random_resized_crop=224, flip=True)
        return AugmentSpec(resize=256, center_crop=(224, 224))
    if not train:
        return AugmentSpec()
    if key in _GRAY_NO_FLIP:
        return AugmentSpec(pad=2, crop=size, flip=False)
    if key in _GRAY_FLIP:
        return AugmentSpec(pad=2, crop=size, flip=True)
    # CIFAR-style: the known small colour sets and any other small-image set.
    return AugmentSpec(pad=4, crop=size, flip=True)


def resolve_augment(augment: AugmentSpec | bool | None, manifest: Any, train: bool) -> AugmentSpec:
    """``None``/``True``: the data set's default for ``train``; ``False``: no random augmentation
    (the deterministic eval geometry, which is nothing for small images); a spec: itself."""
    if augment is None or augment is True:
        return default_augment(manifest, train)
    if augment is False:
        return default_augment(manifest, train=False)
    if isinstance(augment, AugmentSpec):
        return augment
    raise TypeError(f"augment must be None, True, False or an AugmentSpec, got {augment!r}")


def _shorter_side_resize(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    h, w = size
    if h <= w:
        return shorter, max(1, round(w * shorter / h))
    return max(1, round(h * shorter / w)), shorter
