"""Image components: lossless PNG from arrays, checked pass-through of JPEG/PNG files, pixel stats."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode grey
PNG_LEVEL = 6  # zlib level: lossless at any level; 6 is as fast as 1 on small images here


@dataclass
class Encoded:
    """An image ready for the tar: component extension, bytes, decoded pixels (H×W or H×W×3)."""

    ext: str
    data: bytes
    pixels: np.ndarray | None  # None when decoding was skipped (no stats wanted)
    size: tuple[int, int]  # H, W
    gray: bool


def encode_array(image: np.ndarray) -> Encoded:
    """Lossless PNG of an H×W (mode L) or H×W×3 (RGB) uint8 array."""
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an H×W or H×W×3 uint8 array, got {image.dtype} {image.shape}")
    image = np.ascontiguousarray(image)
    buf = io.BytesIO()
    Image.fromarray(image, "L" if image.ndim == 2 else "RGB").save(buf, "PNG", compress_level=PNG_LEVEL)
    return Encoded("png", buf.getvalue(), image, image.shape[:2], image.ndim == 2)


def encode_file(data: bytes, want_pixels: bool) -> Encoded:
    """Fully decode an image file (raises on corrupt data); JPEG and PNG bytes are kept unchanged,
    anything else becomes PNG. Pixels (RGB, or L for grayscale) are returned when `want_pixels`."""
    with Image.open(io.BytesIO(data)) as im:
        fmt, size, mode = im.format, (im.height, im.width), im.mode
        if fmt == "JPEG" and not want_pixels:
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))  # decodes all data, 1/8 scale
        im.load()
        gray = mode in ("1", "L", "LA", "I", "I;16", "F")
        if fmt in ("JPEG", "PNG") and not want_pixels:
            return Encoded("jpg" if fmt == "JPEG" else "png", data, None, size, gray)
        converted = im.convert("L" if gray else "RGB")
    pixels = np.asarray(converted)
    if fmt in ("JPEG", "PNG"):
        return Encoded("jpg" if fmt == "JPEG" else "png", data, pixels, size, gray)
    return encode_array(pixels)


@dataclass
class PixelStats:
    """Exact per-channel mean/std (0-1 scale) from integer sums over every pixel seen."""

    count: int = 0
    sums: list[int] = field(default_factory=lambda: [0, 0, 0])
    squares: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add(self, pixels: np.ndarray) -> None:
        flat = pixels.reshape(-1, 1 if pixels.ndim == 2 else pixels.shape[2]).astype(np.int64)
        s, q = flat.sum(axis=0), (flat * flat).sum(axis=0)
        if flat.shape[1] == 1:  # grayscale counts as R = G = B
            s, q = np.repeat(s, 3), np.repeat(q, 3)
        self.count += flat.shape[0]
        for c in range(3):
            self.sums[c] += int(s[c])
            self.squares[c] += int(q[c])

    def mean_std(self, channels: int) -> tuple[list[float], list[float]]:
        n = self.count
        mean = [s / n / 255 for s in self.sums]
        std = [((q * n - s * s) ** 0.5) / n / 255 for s, q in zip(self.sums, self.squares)]
        return mean[:channels], std[:channels]
