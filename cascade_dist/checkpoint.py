"""DeepSpeed checkpoints of a run: engine (model, optimiser) plus epoch, LR schedule, RNG, budget
mode's α, tracking.

Loading never unpickles arbitrary objects: DeepSpeed's default checkpoint engine calls
`torch.load(weights_only=False)`, so the engine gets one that loads with `weights_only=True` and
allows only the few plain DeepSpeed types its checkpoints hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

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
    """Every rank calls this (ZeRO partitions are saved per rank); rank 0 writes the client state."""
    client_state = {
        "epoch": epoch,
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "tracking": dict(tracking),
        "alpha": alpha,
    }
    engine.save_checkpoint(str(directory), tag=TAG, client_state=client_state)


def load_engine_state(engine, directory: str | Path, scheduler, rank: int) -> dict:
    """Restore the engine and scheduler from `directory`; returns the client state (epoch, tracking)."""
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
    path, client_state = engine.load_checkpoint(str(directory), tag=TAG, load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint with tag {TAG!r} under {directory}")
    scheduler.load_state_dict(client_state["scheduler"])
    torch.set_rng_state(client_state["torch_rng"])
    return client_state


MODEL_STATES = "mp_rank_00_model_states.pt"


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it holds `checkpoint/mp_rank_00_model_states.pt`, else the newest
    `checkpoint_*` directory of a run directory (`runs/<name>`)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path} is not a directory")
    if (path / TAG / MODEL_STATES).is_file():
        return path
    runs = sorted(p for p in path.glob("checkpoint_*") if (p / TAG / MODEL_STATES).is_file())
    if not runs:
        raise FileNotFoundError(f"checkpoint not found: no {TAG}/{MODEL_STATES} under {path} "
                                f"(expected a Ray checkpoint_* directory or a run directory holding some)")
    return runs[-1]


def checkpoint_config(checkpoint: Path) -> Path:
    """The run's resolved `config.yaml`: in the checkpoint directory, else in its run directory."""
    for candidate in (checkpoint / "config.yaml", checkpoint.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no config.yaml in {checkpoint} or {checkpoint.parent}: cannot rebuild the cascade")


def load_cascade(path: str | Path):
    """(cascade in eval mode, its run config, the checkpoint directory) from a checkpoint or run
    directory; the weights are read with `weights_only=True`."""
    from .config import load_config
    from .worker import build_cascade

    checkpoint = find_checkpoint(path)
    cfg = load_config(checkpoint_config(checkpoint), check_data=False)
    cfg.model.weights = None  # the checkpoint holds every weight: no per-classifier files needed
    model = build_cascade(cfg)
    file = checkpoint / TAG / MODEL_STATES
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "module" not in state:
        raise ValueError(f"{file}: no model state dict under the key 'module'")
    try:
        model.load_state_dict(state["module"])
    except RuntimeError as err:
        raise ValueError(f"{file} does not fit the cascade of {checkpoint_config(checkpoint)}: "
                         f"{str(err).splitlines()[0]}") from None
    return model.eval(), cfg, checkpoint
