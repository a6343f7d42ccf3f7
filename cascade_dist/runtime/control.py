"""Runs that share one warm-up: the warm-up itself, and the static control.

The warm-up (`<name>-warmup`) is the cross-entropy phase alone, with the classifiers' cosine
schedule of the full run, so that every run continuing from it (`run.warm_start`) sees exactly
the epochs a single run would. The static control (`<name>-static`) continues the warm-up with
cross-entropy for the joint epochs too: each classifier trained alone (on its own loss) for the same
total number of epochs as the cascade, so that the cascade's extra epochs are not its win. The
sweep's shared warm-up is the same `warmup_config`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

from ..method.evaluate import EvalReport
from .config import Config


def warmup_config(cfg: Config, name: str | None = None) -> Config:
    """The warm-up of `cfg` as its own run: no joint epochs, the full run's classifier schedule, untracked."""
    w = copy.deepcopy(cfg)
    w.optim.schedule_epochs = cfg.optim.schedule_epochs or cfg.optim.epochs
    w.optim.joint_epochs = 0
    w.run.name = name or f"{cfg.run.name}-warmup"
    w.run.control = False
    w.run.warm_start = None
    w.tracking.enabled = False
    return w


def continued_config(cfg: Config, warm_checkpoint: str) -> Config:
    """`cfg` starting from the warm-up checkpoint (its joint epochs only)."""
    c = copy.deepcopy(cfg)
    c.run.warm_start = str(warm_checkpoint)
    c.run.control = False
    return c


def static_config(cfg: Config, warm_checkpoint: str) -> Config:
    """The control: the classifiers go on with cross-entropy alone for the joint epochs (untracked)."""
    s = continued_config(cfg, warm_checkpoint)
    s.optim.schedule_epochs = cfg.optim.schedule_epochs or cfg.optim.epochs
    s.optim.warmup_epochs, s.optim.joint_epochs = cfg.optim.epochs, 0
    s.run.name = f"{cfg.run.name}-static"
    s.tracking.enabled = False
    return s


@dataclass
class ControlledResult:
    """The cascade's run and its static control, both continued from one warm-up."""

    warmup: Any
    cascade: Any
    static: Any
    """Each a `launch.TrainResult`."""

    def table(self, cfg: Config) -> str:
        """Each classifier alone after the same total number of epochs, beside the cascade."""
        return comparison_table(cfg, self.cascade.report, self.static.report)


def run_with_control(cfg: Config, run: Callable[[Config], Any]) -> ControlledResult:
    """Warm-up, then the cascade's joint phase and the static control from the same checkpoint;
    `run` trains one config (`launch.run`)."""
    warm = run(warmup_config(cfg))
    if warm.checkpoint_path is None:
        raise RuntimeError(f"the warm-up run {cfg.run.name}-warmup left no checkpoint")
    cascade = run(continued_config(cfg, warm.checkpoint_path))
    static = run(static_config(cfg, warm.checkpoint_path))
    return ControlledResult(warm, cascade, static)


def comparison_table(cfg: Config, cascade: EvalReport, static: EvalReport) -> str:
    names, epochs = cfg.model.classifiers, cfg.optim.epochs
    point = cascade.operating_point or f"tau={'/'.join(f'{t:.2f}' for t in cascade.tau)}"
    width = max(max(len(n) for n in names) + 8, len(point) + 12)
    lines = [f"{'model':<{width}}{'epochs':>8}{'accuracy %':>12}{'cost %':>9}", "-" * (width + 29)]
    for name, acc, cost in zip(names, static.static_accuracy, static.static_cost_pct):
        lines.append(f"{name + ' alone':<{width}}{epochs:>8}{100 * acc:>12.2f}{cost:>9.2f}")
    lines.append(f"{'cascade (' + point + ')':<{width}}{epochs:>8}{100 * cascade.accuracy:>12.2f}{cascade.cost_pct:>9.2f}")
    largest = static.static_accuracy[-1]
    verdict = "at least as accurate as" if cascade.accuracy >= largest else "less accurate than"
    lines.append(f"the cascade is {verdict} {names[-1]} alone ({100 * cascade.accuracy:.2f} vs {100 * largest:.2f} %), "
                 f"at {cascade.cost_pct:.2f} % of its cost; both trained {epochs} epochs "
                 f"({cfg.optim.warmup_epochs} shared warm-up + {cfg.optim.joint_epochs})")
    return "\n".join(lines)
