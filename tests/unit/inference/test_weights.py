"""The weights loader refuses a checkpoint that would unpickle code, in one line naming the file and
the global it holds, and runs nothing."""

from __future__ import annotations

import os

import pytest
import torch

from cascade_dist.inference.weights import load_weights


class _Payload:
    """Pickles as a call of `os.mkdir`: loading it unrestricted would create `marker`."""

    marker = None

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_checkpoint_with_a_global_is_refused_in_one_line(tmp_path):
    _Payload.marker = tmp_path / "ran"
    bad = tmp_path / "cascade.pt"
    torch.save({"layer.weight": torch.zeros(1), "payload": _Payload()}, bad, pickle_protocol=2)
    with pytest.raises(ValueError) as err:
        load_weights(torch.nn.Linear(1, 1), bad)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: refused, it holds the disallowed global {os.mkdir.__module__}.mkdir"), msg
    assert not _Payload.marker.exists()


def test_a_truncated_checkpoint_is_named_in_one_line(tmp_path):
    file = tmp_path / "cascade.pt"
    torch.save(torch.nn.Linear(1, 1).state_dict(), file)
    file.write_bytes(file.read_bytes()[:40])
    with pytest.raises(ValueError) as err:
        load_weights(torch.nn.Linear(1, 1), file)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{file}: unreadable ("), err.value
