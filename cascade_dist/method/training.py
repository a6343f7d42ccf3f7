"""The training step and epoch loop of the cascade, shared by single-process and DeepSpeed runs.

Schedule (DESIGN §1): `warmup_epochs` of cross-entropy on every classifier, then `joint_epochs`
of the reward objective on classifiers and policies together ("Ours"), or on the policies alone
with the classifiers frozen (`freeze_classifiers`, "Ours (S)").

The loop drives an *engine* with DeepSpeed's surface — `engine(images)`, `engine.backward(loss)`,
`engine.step()` — so a `deepspeed.DeepSpeedEngine` and the single-process `LocalEngine` run the
same code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .evaluate import EvalConfig, evaluate
from .models import Cascade
from .objective import (AllReduce, CostBudget, ObjectiveConfig, cascade_loss, local_sum, stop_logit_penalty,
                        warmup_loss)
from .sections import Problem, Section

Phase = Literal["warmup", "joint"]


OPTIMIZERS = ("sgd", "adam")


@dataclass
class OptimConfig(Section):
    """One optimiser, separate parameter groups and schedules for classifiers and policies."""

    optimizer: str = "sgd"
    """"sgd" (the paper's; momentum, Nesterov) or "adam" (AdamW: far faster policy learning when
    the joint phase is short, since the policies' REINFORCE gradients are α-small)."""
    warmup_epochs: int = 1
    joint_epochs: int = 2
    classifier_lr: float = 0.1
    classifier_schedule: str = "cosine"
    """"cosine" over all epochs, moved every step (timm's per-update schedule), or "constant"."""
    policy_lr: float = 0.1
    policy_lr_decay: float = 0.9
    policy_lr_decay_every: int = 4
    """The paper's policy schedule: 0.1, multiplied by 0.9 every 4 joint epochs."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    freeze_classifiers: bool = False
    """"Ours (S)": train only the policies on the warmed-up classifiers."""
    schedule_epochs: Optional[int] = None
    """Epochs the classifiers' cosine spans (default: warmup_epochs + joint_epochs). A shared warm-up
    run stops early but keeps the schedule of the runs that continue from it."""

    def problems(self) -> list[Problem]:
        out = []
        if self.optimizer not in OPTIMIZERS:
            out.append(("optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}"))
        for name in ("warmup_epochs", "joint_epochs", "classifier_lr", "policy_lr", "momentum", "weight_decay"):
            if getattr(self, name) < 0:
                out.append((name, f"must be >= 0, got {getattr(self, name)}"))
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            out.append(("schedule_epochs", f"must be >= warmup_epochs + joint_epochs = {self.epochs}, "
                                           f"got {self.schedule_epochs}"))
        if self.policy_lr_decay_every < 1:
            out.append(("policy_lr_decay_every", f"must be >= 1, got {self.policy_lr_decay_every}"))
        if self.classifier_schedule not in ("cosine", "constant"):
            out.append(("classifier_schedule", f"must be 'cosine' or 'constant', got {self.classifier_schedule!r}"))
        return out

    @property
    def epochs(self) -> int:
        return self.warmup_epochs + self.joint_epochs

    def phase(self, epoch: int) -> Phase:
        return "warmup" if epoch < self.warmup_epochs else "joint"

    def classifier_lr_factor(self, epoch: float) -> float:
        """The classifiers' LR factor at a (fractional) epoch: cosine from 1 to 0 over the span."""
        if self.freeze_classifiers and self.phase(epoch) == "joint":
            return 0.0
        if self.classifier_schedule == "constant":
            return 1.0
        span = self.schedule_epochs or self.epochs
        return 0.5 * (1 + math.cos(math.pi * epoch / max(span, 1)))

    def policy_lr_factor(self, epoch: float) -> float:
        """The paper's step decay: `policy_lr_decay` every `policy_lr_decay_every` joint epochs."""
        if self.phase(epoch) == "warmup":
            return 0.0
        joint_epoch = epoch - self.warmup_epochs
        return self.policy_lr_decay ** (joint_epoch // self.policy_lr_decay_every)


def set_schedule_position(scheduler: torch.optim.lr_scheduler.LambdaLR, epoch: float) -> None:
    """Each param group's LR at a fractional epoch of its schedule (`scheduler.step()` keeps the
    integer epoch; within an epoch the cosine still moves every step)."""
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(epoch)


def build_optimizer(
    model: Cascade, cfg: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """One optimiser with param groups [classifiers, policies] and an epoch-wise LambdaLR per group."""
    groups = [
        {"params": list(model.classifier_parameters()), "lr": cfg.classifier_lr, "name": "classifiers"},
        {"params": list(model.policy_parameters()), "lr": cfg.policy_lr, "name": "policies"},
    ]
    if cfg.optimizer == "adam":
        optimizer = torch.optim.AdamW(groups, lr=cfg.classifier_lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            groups, lr=cfg.classifier_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [cfg.classifier_lr_factor, cfg.policy_lr_factor]
    )
    return optimizer, scheduler


class LocalEngine(nn.Module):
    """Single-process engine with the call/backward/step surface of a DeepSpeed engine."""

    def __init__(self, module: Cascade, optimizer: torch.optim.Optimizer):
        super().__init__()
        self.module = module
        self.optimizer = optimizer

    def forward(self, images):
        return self.module(images)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def unwrap(model: nn.Module) -> Cascade:
    """The Cascade inside an engine (DeepSpeed and LocalEngine keep it as `.module`)."""
    return getattr(model, "module", model)


def training_step(
    engine,
    images: torch.Tensor,
    targets: torch.Tensor,
    phase: Phase,
    objective: ObjectiveConfig,
    all_reduce: AllReduce = local_sum,
    generator: torch.Generator | None = None,
    alpha: float | None = None,
    classifiers_train: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward every stage, score the batch for `phase`, backward and step; returns (loss, stats).

    Joint phase: `cascade_loss` (+ the saturation guard on the stop logits, + `ce_weight` × CE).
    `alpha` overrides `objective.alpha` (budget mode's current multiplier); `classifiers_train=False`
    ("Ours (S)") leaves the classifiers' score out of the REINFORCE surrogate.
    """
    out = engine(images)
    ce = warmup_loss(out.log_probs, targets)
    if phase == "warmup":
        loss, stats = ce, {}
    else:
        alpha = objective.alpha if alpha is None else alpha
        loss, stats = cascade_loss(
            out, targets, unwrap(engine).costs.float(), alpha, objective.estimator, objective.baseline, generator,
            objective.topk, all_reduce, classifier_term=classifiers_train,
        )
        guard = stop_logit_penalty(out, objective.logit_bound, objective.bound_weight)
        loss = loss + guard
        if objective.ce_weight:
            loss = loss + objective.ce_weight * ce
        stats.update(alpha=alpha, logit_penalty=float(guard.detach()),
                     stop_log_odds_max=float(out.stop_log_odds[:, :-1].detach().abs().max()))
    engine.backward(loss)
    engine.step()
    stats.update(loss=float(loss.detach()), ce=float(ce.detach()) / out.log_probs.shape[1])
    return loss.detach(), stats


def set_train_mode(engine, cfg: OptimConfig, epoch: int) -> None:
    """Train mode, except frozen classifiers keep their BatchNorm statistics ("Ours (S)")."""
    engine.train()
    if cfg.freeze_classifiers and cfg.phase(epoch) == "joint":
        unwrap(engine).classifiers.eval()


@dataclass
class EpochProgress:
    """How far an epoch has got: its steps done, images seen, seconds spent and the sums of each
    step statistic. A step checkpoint saves it; `train_epoch` resumed from it continues the sums."""

    steps: int = 0
    seen: int = 0
    seconds: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)


def train_epoch(
    engine,
    loader: Iterable,
    epoch: int,
    optim: OptimConfig,
    objective: ObjectiveConfig,
    all_reduce: AllReduce = local_sum,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    step_log: list[dict] | None = None,
    budget: CostBudget | None = None,
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None,
    position: EpochProgress | None = None,
    on_step: Callable[[EpochProgress], None] | None = None,
    max_steps: int | None = None,
) -> dict[str, float]:
    """One epoch of `training_step`s; returns the mean of each statistic and images/s.

    `step_log`, when given, receives every step's statistics (loss, reward, baseline, ...);
    `budget`, in joint epochs, moves α by dual ascent after every step; `scheduler` (the epoch-wise
    `build_optimizer` one) sets the LRs at epoch + step/steps before every step when the loader's
    length is known. `position`: the progress of an epoch resumed mid-way (the loader then yields
    from batch `position.steps` on, `Loader.set_epoch`); `on_step(position)` runs after every step
    (the step checkpoints); `max_steps` ends the epoch after that many steps (whole optimiser steps
    under gradient accumulation).
    """
    phase = optim.phase(epoch)
    set_train_mode(engine, optim, epoch)
    position = position or EpochProgress()
    totals = position.totals
    seen, steps, start = position.seen, position.steps, time.perf_counter() - position.seconds
    total = _len(loader)
    if max_steps is not None:
        total = min(total, max_steps) if total else max_steps
    bar = tqdm(in_lockstep(loader, all_reduce), desc=f"epoch {epoch} ({phase})", disable=not progress,
               mininterval=5, total=total, initial=steps)
    for images, targets in bar:
        if scheduler is not None and total:
            set_schedule_position(scheduler, epoch + min(steps / total, 1.0))
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        alpha = budget.alpha if budget is not None else None
        _, stats = training_step(engine, images, targets, phase, objective, all_reduce, generator, alpha,
                                 classifiers_train=not optim.freeze_classifiers)
        if budget is not None and phase == "joint":
            budget.step(stats["expected_cost"], len(targets), all_reduce)
        if step_log is not None:
            step_log.append(stats)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value
        seen, steps = seen + len(targets), steps + 1
        bar.set_postfix(loss=f"{stats['loss']:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False)
        if on_step is not None:
            on_step(EpochProgress(steps, seen, time.perf_counter() - start, dict(totals)))
        if max_steps is not None and steps >= max_steps:
            break
    elapsed = time.perf_counter() - start
    means = {key: value / max(steps, 1) for key, value in totals.items()}
    means.update(images=seen, images_per_s=seen / elapsed if elapsed > 0 else 0.0, phase_joint=float(phase == "joint"))
    if budget is not None and phase == "joint":
        means["alpha_end"] = budget.integral  # the multiplier learnt (α less its proportional term)
    return means


class PeerDataError(RuntimeError):
    """Another rank failed to read its data (its own error names the shard and sample)."""


def in_lockstep(batches: Iterable, all_reduce: AllReduce = local_sum) -> Iterator:
    """This rank's batches while every rank still has one: the epoch ends on all ranks at once.

    Ranks must run the same number of steps, or the first to run out leaves the others waiting in a
    collective until its timeout (a counted skip, a truncated shard or an uneven split makes a rank
    run out early). Before each step one all-reduce of (out of batches, failed) decides for all: a
    rank that is out ends the epoch everywhere, and a rank whose loader raised re-raises its error
    while every other rank raises `PeerDataError`, so a bad sample stops the run at once, not after
    a collective timeout.
    """
    it = iter(batches)
    while True:
        error = batch = None
        try:
            batch = next(it)
        except StopIteration:
            pass
        except Exception as err:  # noqa: BLE001 - re-raised below, after the peers are told
            error = err
        flags = all_reduce(torch.tensor([float(batch is None and error is None), float(error is not None)]))
        if error is not None:
            raise error
        if flags[1] > 0:
            raise PeerDataError("another rank stopped on a data error (its message names the shard and sample)")
        if flags[0] > 0:
            return
        yield batch


def _len(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def make_budget(objective: ObjectiveConfig, alpha: float | None = None) -> CostBudget | None:
    """The dual-ascent controller of budget mode (None when `objective.budget` is unset)."""
    if objective.budget is None:
        return None
    return CostBudget(objective.alpha if alpha is None else alpha, objective.budget, objective.dual_lr, objective.dual_kp)


def fit(
    model: Cascade,
    train_loader: Iterable,
    optim: OptimConfig,
    objective: ObjectiveConfig,
    eval_loader: Iterable | None = None,
    eval_config: EvalConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[dict]:
    """Single-process training without Ray: warm-up then joint epochs, evaluating after each."""
    model.to(device)
    optimizer, scheduler = build_optimizer(model, optim)
    engine = LocalEngine(model, optimizer)
    budget = make_budget(objective)
    history = []
    for epoch in range(optim.epochs):
        record = {"epoch": epoch, "phase": optim.phase(epoch)}
        record["train"] = train_epoch(engine, train_loader, epoch, optim, objective, generator=generator, device=device,
                                      progress=progress, budget=budget, scheduler=scheduler)
        scheduler.step()
        if eval_loader is not None:
            record["eval"] = evaluate(model, eval_loader, model.macs, eval_config, device=device, topk=objective.topk)
        history.append(record)
    return history
