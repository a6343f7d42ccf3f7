"""Images that decoders must refuse with an error, never a crash: the probes of the reliability tests."""

from __future__ import annotations

import struct
import zlib


def corrupt_idat(png: bytes) -> bytes:
    """Break the zlib stream inside IDAT but keep the chunk's CRC valid: the header still parses, and
    libpng fails late ("IDAT: invalid window size"), the input that segfaulted torchvision's decode_image."""
    at = png.index(b"IDAT")
    length = struct.unpack(">I", png[at - 4:at])[0]
    data = bytearray(png[at + 4:at + 4 + length])
    data[0] = 0xF8  # CMF with a window size above 32K: not a valid zlib header
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(data)) & 0xFFFFFFFF)
    return png[:at + 4] + bytes(data) + crc + png[at + 8 + length:]
