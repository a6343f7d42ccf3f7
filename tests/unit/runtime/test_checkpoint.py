"""The DeepSpeed checkpoint engine the runs use: atomic saves, weights-only loads."""

from __future__ import annotations

import pytest
import torch

from cascade_dist.runtime.checkpoint import WeightsOnlyCheckpointEngine


def test_a_save_that_fails_midway_leaves_the_previous_file_whole(tmp_path):
    engine = WeightsOnlyCheckpointEngine()
    path = tmp_path / "mp_rank_00_model_states.pt"
    engine.save({"w": torch.arange(4.0)}, str(path))
    with pytest.raises(Exception):  # a lambda cannot be pickled: torch.save fails after opening its file
        engine.save({"w": torch.zeros(4), "bad": lambda: 0}, str(path))
    assert torch.equal(engine.load(str(path))["w"], torch.arange(4.0))
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(".tmp" in name for name in leftovers)  # at most the failed write's temporary file


def test_loading_refuses_a_disallowed_global(tmp_path):
    path = tmp_path / "states.pt"
    torch.save({"w": torch.ones(1), "obj": torch.nn.ReLU()}, path)
    with pytest.raises(Exception, match="ReLU|weights_only|Unsupported global"):
        WeightsOnlyCheckpointEngine().load(str(path))
