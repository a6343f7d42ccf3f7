"""The torch loader's decode: a corrupt image raises a DataError naming shard and key (never a crash),
and a sample's .cls and .lbl must agree."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from cascade_dist.data.contract import DataError
from cascade_dist.data.torch_loader import decode_image_bytes

WHERE = "sample 'k7' in shard train-000.tar"


def _png(channels: int = 1) -> bytes:
    rng = np.random.default_rng(0)
    shape = (28, 28) if channels == 1 else (32, 32, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _corrupt_idat(png: bytes) -> bytes:
    """Break the zlib stream inside IDAT but keep the chunk's CRC valid (libpng: invalid window size)."""
    at = png.index(b"IDAT")
    length = struct.unpack(">I", png[at - 4:at])[0]
    data = bytearray(png[at + 4:at + 4 + length])
    data[0] = 0xF8  # CMF with a window size above 32K: not a valid zlib header
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(data)) & 0xFFFFFFFF)
    return png[:at + 4] + bytes(data) + crc + png[at + 8 + length:]


@pytest.mark.parametrize("channels", [1, 3])
def test_valid_png_decodes_to_chw_uint8(channels):
    image = decode_image_bytes(_png(channels), channels, WHERE)
    assert image.dtype.is_floating_point is False and image.shape[0] == channels


@pytest.mark.parametrize(
    "mutate",
    [lambda b: _corrupt_idat(b), lambda b: b[: len(b) // 2], lambda b: b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
     lambda b: b"not an image at all"],
    ids=["corrupt-idat", "truncated", "garbage-after-signature", "garbage"],
)
def test_corrupt_image_is_a_named_data_error(mutate):
    with pytest.raises(DataError, match=r"sample 'k7' in shard train-000.tar: undecodable image") as info:
        decode_image_bytes(mutate(_png()), 1, WHERE)
    assert "\n" not in str(info.value)


@pytest.mark.timeout(60)
def test_corrupt_idat_does_not_take_the_process_down():
    """The probe that segfaulted torchvision's decode_image, in a child process so a crash would show."""
    code = ("import sys; from cascade_dist.data.torch_loader import decode_image_bytes\n"
            "from cascade_dist.data.contract import DataError\n"
            "try: decode_image_bytes(sys.stdin.buffer.read(), 1, 'k')\n"
            "except DataError as e: print('named:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], input=_corrupt_idat(_png()), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    assert b"named: k: undecodable image" in proc.stdout
