"""The torch loader's decode: a corrupt image raises a one-line DataError naming the sample, never a
crash (the same probes in real shards and DataLoader workers: tests/integration/test_loaders.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cascade_dist.data.contract import DataError
from cascade_dist.data.torch_loader import decode_image_bytes
from bad_images import corrupt_idat

WHERE = "sample 'k7' in shard train-000.tar"


def _png(channels: int = 1) -> bytes:
    rng = np.random.default_rng(0)
    shape = (28, 28) if channels == 1 else (32, 32, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
def test_valid_png_decodes_to_chw_uint8(channels):
    image = decode_image_bytes(_png(channels), channels, WHERE)
    assert image.dtype.is_floating_point is False and image.shape[0] == channels


@pytest.mark.parametrize(
    "mutate",
    [corrupt_idat, lambda b: b[: len(b) // 2], lambda b: b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
     lambda b: b"not an image at all"],
    ids=["corrupt-idat", "truncated", "garbage-after-signature", "garbage"],
)
def test_corrupt_image_is_a_named_data_error(mutate):
    with pytest.raises(DataError, match=r"sample 'k7' in shard train-000.tar: undecodable image") as info:
        decode_image_bytes(mutate(_png()), 1, WHERE)
    assert "\n" not in str(info.value)
