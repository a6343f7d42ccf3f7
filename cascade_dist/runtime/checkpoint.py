"""DeepSpeed checkpoints of a run: engine (model, optimiser) plus epoch, LR schedule, RNG, budget
mode's α, tracking; and beside them the plain weights (`cascade.pt`) that inference loads.

Loading never unpickles arbitrary objects: DeepSpeed's default checkpoint engine calls
`torch.load(weights_only=False)`, so the engine gets one that loads with `weights_only=True` and
allows only the few plain DeepSpeed types its checkpoints hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

from ..inference.weights import save_weights

TAG = "checkpoint"


def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with `weights_only=True`."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def save_engine_state(
    engine, directory: str | Path, scheduler, epoch: int, rank: int, tracking: dict, alpha: float | None = None
) -> None:
    """Every rank calls this (ZeRO partitions are saved per rank); rank 0 writes the client state and
    `cascade.pt`, the weights alone, which `inference.weights` loads without DeepSpeed."""
    client_state = {
        "epoch": epoch,
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "tracking": dict(tracking),
        "alpha": alpha,
    }
    engine.save_checkpoint(str(directory), tag=TAG, client_state=client_state)
    if rank == 0:
        save_weights(engine.module, directory)


def load_engine_state(engine, directory: str | Path, scheduler, rank: int, module_only: bool = False) -> dict:
    """Restore the engine and scheduler from `directory`; returns the client state (epoch, tracking).

    `module_only`: the weights (and BatchNorm statistics) alone, for a warm start whose optimiser
    differs from the checkpoint's (its state cannot carry over)."""
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
    path, client_state = engine.load_checkpoint(str(directory), tag=TAG, load_lr_scheduler_states=False,
                                                load_optimizer_states=not module_only, load_module_only=module_only)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint with tag {TAG!r} under {directory}")
    if not module_only:
        scheduler.load_state_dict(client_state["scheduler"])
    torch.set_rng_state(client_state["torch_rng"])
    return client_state
