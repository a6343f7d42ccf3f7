"""DeepSpeed checkpoints of a run: engine (model, optimiser) plus epoch, LR schedule, RNG, budget
mode's α, tracking; and beside them the plain weights (`cascade.pt`) that inference loads.

Loading never unpickles arbitrary objects: DeepSpeed's default checkpoint engine calls
`torch.load(weights_only=False)`, so the engine gets one that loads with `weights_only=True` and
allows only the few plain DeepSpeed types its checkpoints hold.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

from ..data import storage
from ..inference.weights import load_error_line, save_weights

TAG = "checkpoint"
log = logging.getLogger(__name__)


def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with `weights_only=True` and saving each file
    atomically (a temporary name, then `os.replace`, as timm's `CheckpointSaver` does): a crash
    mid-write never leaves a truncated file under a checkpoint's name."""

    def save(self, state_dict, path: str):
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(state_dict, tmp, _use_new_zipfile_serialization=self.zipfile_serialization)
        os.replace(tmp, path)

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


RANK_STATE = "rank{rank}_state.pt"
"""Each rank's own state in a checkpoint: torch's random state, its policy-sampling generator's and
its module buffers (BatchNorm statistics follow the rank's shard until the epoch's average)."""


def save_engine_state(
    engine, directory: str | Path, scheduler, epoch: int, rank: int, tracking: dict, alpha: float | None = None,
    position: dict | None = None, generator: torch.Generator | None = None,
) -> None:
    """Every rank calls this (ZeRO partitions are saved per rank); rank 0 writes the client state and
    `cascade.pt`, the weights alone, which `inference.weights` loads without DeepSpeed. `position`:
    a step checkpoint's place in epoch `epoch` (None: the epoch is complete). Every rank writes its
    random state (`RANK_STATE`)."""
    client_state = {
        "epoch": epoch,
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "tracking": dict(tracking),
        "alpha": alpha,
        "position": position,
    }
    rank_state = {"torch_rng": torch.get_rng_state(),
                  "buffers": {name: b.detach().cpu() for name, b in engine.module.named_buffers()}}
    if generator is not None:
        rank_state["generator"] = generator.get_state()
    torch.save(rank_state, Path(directory) / RANK_STATE.format(rank=rank))
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)  # atomic file writes
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


def load_rank_state(directory: str | Path, rank: int, module: torch.nn.Module,
                    generator: torch.Generator | None = None) -> bool:
    """Restore this rank's random state and buffers from a checkpoint; False if it holds none for `rank`."""
    path = Path(directory) / RANK_STATE.format(rank=rank)
    if not path.is_file():
        return False
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["torch_rng"])
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name in state["buffers"]:
                buf.copy_(state["buffers"][name])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    return True


def checkpoint_candidates(latest: str | Path) -> list[Path]:
    """`latest`, then the run's older `checkpoint_*` directories beside it, newest first (Ray names
    them by time)."""
    latest = Path(latest)
    older = sorted((p for p in latest.parent.glob("checkpoint_*") if p.is_dir() and p != latest), reverse=True)
    return [latest, *older]


def resume_engine_state(engine, latest: str | Path, scheduler, rank: int,
                        agree: Callable[[bool], bool] = lambda ok: ok) -> tuple[dict, Path]:
    """Restore from the newest checkpoint that loads: `latest`, else the older ones beside it, with
    a warning naming the unreadable one and the one used. `agree(ok)` is True only when every rank
    loaded (an all-reduce), so all ranks resume from the same checkpoint. Returns (client state, dir)."""
    failures = []
    for candidate in checkpoint_candidates(latest):
        state, error = None, None
        try:
            state = load_engine_state(engine, candidate, scheduler, rank)
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: try the previous one
            error = load_error_line(candidate, err)
        if agree(error is None):
            if failures:
                log.warning("resuming from %s: the newer checkpoint(s) could not be loaded: %s",
                            candidate, "; ".join(failures))
            return state, candidate
        failures.append(error or f"{candidate}: another rank could not load it")
    raise RuntimeError(f"no loadable checkpoint in {Path(latest).parent}: {'; '.join(failures)}")


POSITION_FILE = "position.json"
"""Where a checkpoint stands, written by rank 0: {"epoch", "step" (None: the epoch's end), "world"}."""


def write_position(directory: str | Path, epoch: int, step: int | None, world: int) -> None:
    (Path(directory) / POSITION_FILE).write_text(json.dumps({"epoch": epoch, "step": step, "world": world}))


def resumable_checkpoint(latest: str, world: int) -> str:
    """The checkpoint a run of `world` workers resumes from: `latest` (a path or URI), unless it is a
    step checkpoint of another number of workers, whose mid-epoch position (each rank's place in its
    shard) does not exist for this world; then the newest checkpoint beside it that is an epoch's end
    or of `world` workers, so the interrupted epoch is trained again on the new shards, no sample skipped."""
    def usable(checkpoint: str) -> bool:
        path = storage.join(checkpoint, POSITION_FILE)
        if not storage.is_file(path):
            return True  # an epoch checkpoint of a run older than POSITION_FILE
        position = json.loads(storage.read_text(path))
        return position["step"] is None or position["world"] == world

    if usable(latest):
        return latest
    run_dir = storage.parent(latest)
    older = sorted((n for n in storage.list_dir(run_dir) if n.startswith("checkpoint_") and n < storage.name(latest)),
                   reverse=True)
    for name in older:
        candidate = storage.join(run_dir, name)
        if storage.is_dir(candidate) and usable(candidate):
            log.warning("%s is a step checkpoint of another number of workers than run.num_workers=%d: resuming "
                        "from %s, the interrupted epoch trained again on %d workers", latest, world, candidate, world)
            return candidate
    raise ValueError(f"{latest} is a step checkpoint of another number of workers than run.num_workers={world}, and "
                     f"{run_dir} keeps no epoch checkpoint before it (run.checkpoints_to_keep): resume with the "
                     f"run's former run.num_workers, or raise run.checkpoints_to_keep")


SNAPSHOT = "checkpoint_manager_snapshot.json"


def drop_missing_checkpoints(run_dir: str | Path) -> list[str]:
    """Remove from Ray Train's checkpoint snapshot of `run_dir` (a path or a URI) the checkpoints
    whose directory is gone (a user deleted a bad one), so that the run resumes from the newest one
    left instead of Ray refusing the run directory. Rewritten atomically; returns the names dropped."""
    path = storage.join(run_dir, SNAPSHOT)  # a local path or a URI (run.storage_path)
    if not storage.is_file(path):
        return []
    state = json.loads(storage.read_text(path))
    present = set(storage.list_dir(run_dir))
    exists = lambda name: name in present and storage.is_dir(storage.join(run_dir, name))  # noqa: E731
    results, indices = state.get("checkpoint_results", []), state.get("checkpoint_report_indices", [])
    dropped = [r["checkpoint_dir_name"] for r in results if not exists(r["checkpoint_dir_name"])]
    pending = state.get("pending_training_results", [])
    dropped += [r["checkpoint_dir_name"] for r in pending if not exists(r["checkpoint_dir_name"])]
    if not dropped:
        return []
    kept = [(r, i) for r, i in zip(results, indices) if exists(r["checkpoint_dir_name"])]
    state["checkpoint_results"], state["checkpoint_report_indices"] = [r for r, _ in kept], [i for _, i in kept]
    state["latest_checkpoint_result"] = max(kept, key=lambda ri: ri[1])[0] if kept else None
    keep_pending = [exists(r["checkpoint_dir_name"]) for r in pending]
    state["pending_training_results"] = [r for r, k in zip(pending, keep_pending) if k]
    if "pending_validation_specs" in state:
        state["pending_validation_specs"] = [v for v, k in zip(state["pending_validation_specs"], keep_pending) if k]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in state:
            state[key] = [name for name in state[key] if exists(name)]
    storage.write_text(path, json.dumps(state))  # atomic (a temporary name locally, one PUT remotely)
    log.warning("%s: dropped the missing checkpoint(s) %s; resuming from %s", path, ", ".join(dropped),
                state["latest_checkpoint_result"]["checkpoint_dir_name"] if kept else "the start")
    return dropped
