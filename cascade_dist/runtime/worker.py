"""The Ray Train worker: DeepSpeed engine → warm-up and joint epochs → evaluate → checkpoint → report.

Every worker runs every stage on every image (ZeRO needs the same sub-network on all ranks);
the REINFORCE baseline's sums and all metrics are all-reduced so every rank uses one global value.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist

from ..data import make_loader, storage
from ..method.evaluate import evaluate
from ..method.training import EpochProgress, build_optimizer, make_budget, set_schedule_position, train_epoch
from .checkpoint import (load_engine_state, load_rank_state, resumable_checkpoint, resume_engine_state,
                         save_engine_state, write_position)
from ..inference.calibration import CALIBRATION_FILE
from .config import Config, from_container, save_config
from .elastic import accumulation_steps
from .operating_point import budget_calibration, describe

FAULT_MARKER = "fault_injected"
logger = logging.getLogger(__name__)


def deepspeed_config(cfg: Config, world: int) -> dict:
    """The DeepSpeed config, derived from the run's config (never a second file that can drift):
    `data.batch_size` per worker and micro-step, accumulated to the run's global batch (`runtime.elastic`)."""
    global_batch = cfg.data.global_batch_size or cfg.data.batch_size * world
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": accumulation_steps(global_batch, cfg.data.batch_size, world),
        "zero_optimization": {"stage": cfg.run.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.run.bf16},
        "fp16": {"enabled": cfg.run.fp16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def make_all_reduce(device: torch.device):
    """Sum a tensor over all workers (gloo sums CPU tensors; NCCL needs them on the GPU)."""
    backend = dist.get_backend() if dist.is_initialized() else None
    if backend is None:
        return lambda t: t

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        out = t.detach().to(device if backend == "nccl" else "cpu", copy=True)
        dist.all_reduce(out)
        return out.to(t.device)

    return all_reduce


def batchnorm_stats_like_weights(module: torch.nn.Module) -> None:
    """Give each BatchNorm's running statistics its weights' dtype (other buffers, like the cost
    vector, stay float32).

    DeepSpeed's bf16 engine casts the parameters only, and a BatchNorm with bf16 weights and
    float32 running statistics fails on the CPU ("expected scalar type BFloat16 but found Float")."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) and bn.weight is not None:
            for name in ("running_mean", "running_var"):
                stat = getattr(bn, name)
                if stat is not None:
                    setattr(bn, name, stat.to(bn.weight.dtype))


def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over all workers, in place.

    DeepSpeed, unlike DDP, never syncs buffers: each rank's BatchNorm statistics follow its own
    shard, so ranks would evaluate different models and the checkpoint (rank 0's) would hold yet
    another. After this every rank evaluates, and the checkpoint holds, one model.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    with torch.no_grad():
        for buf in module.buffers():
            if buf.is_floating_point():  # summed in float32 (gloo, and bf16 statistics)
                total = buf.float()
                dist.all_reduce(total)
                buf.copy_(total / world)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function (`config` is the resolved config as plain data)."""
    import deepspeed

    cfg = from_container(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cpu")
    if cfg.run.use_gpu:  # Ray Train's device for this worker (it set CUDA_VISIBLE_DEVICES)
        from ray.train.torch import get_device

        device = get_device()
        torch.cuda.set_device(device)
    if cfg.run.bf16 and not cfg.run.use_gpu and rank == 0:
        logger.warning("run.bf16=true on CPU workers: bf16 matmuls/convolutions are slower than float32 on most CPUs")
    seed_everything(cfg.run.seed)  # identical initial weights on every rank

    model = cfg.model.build()
    optimizer, scheduler = build_optimizer(model, cfg.optim)
    deepspeed.init_distributed(dist_backend="nccl" if cfg.run.use_gpu else "gloo")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg, world))
    if cfg.run.bf16 or cfg.run.fp16:
        batchnorm_stats_like_weights(model)
    if cfg.run.channels_last:  # after DeepSpeed's initial broadcast, which needs contiguous parameters;
        model.to(memory_format=torch.channels_last)  # in place: the optimiser keeps the same parameters
    all_reduce = make_all_reduce(device)

    generator = torch.Generator(device=device).manual_seed(cfg.run.seed * 1000 + rank)
    start_epoch, tracking_state, alpha, resumed = 0, {}, None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        latest = storage.to_uri(checkpoint.filesystem, checkpoint.path)
        chosen = resumable_checkpoint(latest, world)  # an epoch's end when the workers changed mid-epoch
        with checkpoint.as_directory() if chosen == latest else storage.local_copy(chosen) as ckpt_dir:
            state, used = resume_engine_state(engine, ckpt_dir, scheduler, rank, agree=lambda ok: _all_ranks(ok, all_reduce))
            resumed = resume_position(state, used, rank, world, model, generator)
        start_epoch, tracking_state, alpha = state["epoch"] + (resumed is None), state["tracking"], state.get("alpha")
    elif cfg.run.warm_start:
        same_optimizer = warm_start_optimizer(cfg.run.warm_start) == cfg.optim.optimizer
        with storage.local_copy(cfg.run.warm_start) as warm_dir:  # a URI checkpoint: a temporary local copy
            state = load_engine_state(engine, warm_dir, scheduler, rank, module_only=not same_optimizer)
        if state.get("position"):
            raise ValueError(f"run.warm_start: {cfg.run.warm_start} is a step checkpoint (mid-epoch); "
                             f"start from an epoch's checkpoint")
        start_epoch = state["epoch"] + 1  # tracking state not taken: this run gets its own MLflow run
        scheduler.last_epoch = start_epoch  # (the warm-up's schedule position, also when only its weights load)
        _reset_learning_rates(scheduler, cfg)

    loader_kw = dict(backend=cfg.data.backend, rank=rank, world_size=world, seed=cfg.run.seed,
                     num_workers=cfg.data.loader_workers, device=device, on_error=cfg.data.on_error)
    train_loader = make_loader(cfg.data.shards, "train", cfg.data.batch_size, train=True,
                               augment=None if cfg.data.augment else False, **loader_kw)
    eval_loader = make_loader(cfg.data.shards, cfg.data.eval_split, cfg.data.eval_batch_size, train=False, **loader_kw)
    held_out = None
    if cfg.objective.budget is not None and storage.is_file(storage.join(cfg.data.shards, cfg.data.calibration_split,
                                                                         "manifest.json")):
        held_out = make_loader(cfg.data.shards, cfg.data.calibration_split, cfg.data.eval_batch_size, train=False,
                               **loader_kw)
    budget = make_budget(cfg.objective, alpha)  # budget mode: α by dual ascent, resumed with the run
    if budget and resumed:
        budget.alpha = resumed["budget_alpha"]  # mid-epoch: α with its proportional term, as it was

    tracker = None
    if rank == 0 and cfg.tracking.enabled:
        from .tracking import RunTracker

        tracker = RunTracker(cfg, run_id=tracking_state.get("run_id"),
                             spool_dir=storage.join(cfg.run.storage_path, cfg.run.name))

    def save(directory: str, epoch: int, steps: list[dict], position: EpochProgress | None = None) -> None:
        """Every rank's part of a checkpoint: engine state, random state and step log (rank 0: the config)."""
        save_engine_state(engine, directory, scheduler, epoch, rank,
                          tracking={"run_id": tracker.run_id} if tracker else tracking_state,
                          alpha=budget.integral if budget else None, generator=generator,
                          position={**asdict(position), "budget_alpha": budget.alpha if budget else None,
                                    "world": world} if position else None)
        (Path(directory) / f"steps_rank{rank}_epoch{epoch}.json").write_text(json.dumps(steps))
        if rank == 0:  # the checkpoint carries what it takes to rebuild and judge the model
            save_config(cfg, Path(directory) / "config.yaml")
            write_position(directory, epoch, position.steps if position else None, world)

    report = None
    train_loader.track_keys = cfg.run.log_sample_keys
    accumulate = engine.gradient_accumulation_steps()  # micro-batches per optimiser step (runtime.elastic)
    for epoch in range(start_epoch, cfg.optim.epochs):
        resume_here = resumed if epoch == start_epoch else None
        position = EpochProgress(**resume_here["progress"]) if resume_here else None
        train_loader.set_epoch(epoch, start_batch=position.steps if position else 0)
        epoch_steps = len(train_loader) // accumulate * accumulate  # no optimiser step straddles two epochs
        steps: list[dict] = resume_here["steps"] if resume_here else []

        def after_step(progress: EpochProgress, epoch=epoch, steps=steps, epoch_steps=epoch_steps) -> None:
            steps[-1]["time"] = time.time()  # when the step ended (a replayed step has a later one)
            if cfg.run.log_sample_keys:
                steps[-1]["keys"] = list(train_loader.last_keys or [])
            every = (cfg.run.checkpoint_every_steps or 0) * accumulate  # optimiser steps, in micro-steps
            if every and progress.steps % every == 0 and progress.steps < epoch_steps:
                with tempfile.TemporaryDirectory() as tmp:  # a step checkpoint: Tune and MLflow skip it
                    save(tmp, epoch, steps, progress)
                    ray.train.report({"epoch": epoch, "epoch_step": progress.steps},
                                     checkpoint=ray.train.Checkpoint.from_directory(tmp))
            _maybe_inject_fault(cfg, epoch, progress.steps, rank, steps)

        train_stats = train_epoch(engine, train_loader, epoch, cfg.optim, cfg.objective, all_reduce, generator,
                                  device, progress=rank == 0 and cfg.run.progress, step_log=steps, budget=budget,
                                  scheduler=scheduler, position=position, on_step=after_step, max_steps=epoch_steps)
        scheduler.step()
        average_buffers(model)
        calibration = None
        if held_out is not None and cfg.optim.phase(epoch) == "joint":
            calibration = budget_calibration(engine, model.macs, held_out, cfg.objective.budget, cfg.eval.ensemble,
                                             cfg.data.calibration_split, device, cfg.objective.topk)
        report = evaluate(engine, eval_loader, model.macs, cfg.eval, all_reduce, device,
                          theta=calibration.theta if calibration else None, topk=cfg.objective.topk)
        if calibration:
            report.operating_point = describe(calibration)
        skipped = all_reduce(torch.tensor([float(train_loader.skipped + eval_loader.skipped)]))
        metrics = {"epoch": epoch, **{f"train_{k}": v for k, v in _mean_over_workers(train_stats, all_reduce).items()},
                   **report.metrics(), "data_skipped": float(skipped),  # bad samples skipped so far, all ranks
                   "workers": world, "accumulation_steps": accumulate, "optimizer_steps": engine.global_steps}
        with tempfile.TemporaryDirectory() as tmp:  # the checkpoint first: a tracking outage loses nothing
            save(tmp, epoch, steps)
            if rank == 0:
                (Path(tmp) / "report.json").write_text(json.dumps(report.__dict__, indent=1))
                if calibration:
                    calibration.save(Path(tmp) / CALIBRATION_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if tracker:
            tracker.log_epoch(epoch, metrics)

    if tracker:
        tracker.finish(model, report)


def warm_start_optimizer(checkpoint: str) -> str | None:
    """The optimiser of the run that wrote a warm-start checkpoint (from its config.yaml)."""
    from omegaconf import OmegaConf

    for candidate in (storage.join(checkpoint, "config.yaml"), storage.join(storage.parent(checkpoint), "config.yaml")):
        if storage.is_file(candidate):
            return OmegaConf.create(storage.read_text(candidate)).get("optim", {}).get("optimizer")
    return None


def _reset_learning_rates(scheduler, cfg: Config) -> None:
    """After a warm start: this run's base LRs (the warm-up's were restored with its state)."""
    bases = [cfg.optim.classifier_lr, cfg.optim.policy_lr]
    scheduler.base_lrs = bases
    for group, base in zip(scheduler.optimizer.param_groups, bases):
        group["initial_lr"] = base
    set_schedule_position(scheduler, scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def _all_ranks(ok: bool, all_reduce) -> bool:
    """True when `ok` holds on every rank."""
    return float(all_reduce(torch.tensor([float(not ok)]))) == 0.0


def _mean_over_workers(stats: dict[str, float], all_reduce) -> dict[str, float]:
    keys = sorted(stats)
    values = all_reduce(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64))
    world = dist.get_world_size() if dist.is_initialized() else 1
    out = {k: float(v) / world for k, v in zip(keys, values)}
    out["images"] = out["images"] * world  # a count: the sum, not the mean
    out["images_per_s"] = out["images_per_s"] * world
    return out


def resume_position(state: dict, directory: str, rank: int, world: int, module: torch.nn.Module,
                    generator: torch.Generator) -> dict | None:
    """This rank's random state and buffers restored from the checkpoint in `directory`; for a step
    checkpoint also where its epoch stands (`progress`, `budget_alpha`) and this rank's step log."""
    position = state.get("position")
    if position is not None and position["world"] != world:
        raise ValueError(f"{directory} is a step checkpoint of {position['world']} workers, and this run has "
                         f"run.num_workers={world}: a mid-epoch position holds for the same workers only (resume "
                         f"with run.num_workers={position['world']}, or from an epoch's checkpoint)")
    if not load_rank_state(directory, rank, module, generator):
        logger.warning("%s holds no state of rank %d: its sampling restarts from the run's seed", directory, rank)
    if position is None:
        return None
    steps = json.loads((Path(directory) / f"steps_rank{rank}_epoch{state['epoch']}.json").read_text())
    progress = {k: v for k, v in position.items() if k not in ("budget_alpha", "world")}
    return {"progress": progress, "budget_alpha": position["budget_alpha"], "steps": steps}


PAUSE_S = 120
"""How long `run.fail_mode=pause` holds every rank (the test kills a worker meanwhile)."""


def _maybe_inject_fault(cfg: Config, epoch: int, step: int, rank: int, steps: list[dict]) -> None:
    """Fault injection for tests, once, after step `run.fail_at_step` of epoch `run.fail_at_epoch`.

    `run.fail_mode=exit`: the last rank dies (after a few seconds for the controller to register the
    checkpoints before; the other ranks go on and wait for it in their next all-reduce); its marker
    file records the steps it trained in that epoch (losses, and keys with `run.log_sample_keys`).
    `pause`: every rank writes its marker (`<marker>_rank<r>`, with its pid and node) and waits
    `PAUSE_S`, mid-epoch, for a worker process to be killed from outside."""
    if cfg.run.fail_at_epoch is None or (epoch, step) != (cfg.run.fail_at_epoch, cfg.run.fail_at_step):
        return
    pause = cfg.run.fail_mode == "pause"
    if not pause and rank != ray.train.get_context().get_world_size() - 1:
        return
    marker = storage.join(storage.resolve_storage(cfg.run.storage_path), cfg.run.name,
                          f"{FAULT_MARKER}_rank{rank}" if pause else FAULT_MARKER)
    if storage.is_file(marker):
        return
    storage.write_text(marker, json.dumps({"rank": rank, "epoch": epoch, "step": step, "steps": steps, "pid": os.getpid(),
                                           "node_id": ray.get_runtime_context().get_node_id()}))
    time.sleep(PAUSE_S if pause else 5)
    if not pause:
        os._exit(1)
