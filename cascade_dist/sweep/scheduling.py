"""How the sweep's trials are scheduled: each epoch's report reaches Tune, the score an early-stopping
scheduler ranks trials by, the scheduler itself, and how many trials run at once.

Score (`accuracy_gain_at_cost`, mode max): the trial's accuracy at its operating point minus the
accuracy the warm-up's own operating points (each classifier alone and the confidence-threshold
cascade, their Pareto front, linear between its points) reach at the trial's cost. A trial is judged
against what the baselines give at its own cost, so the cheap high-α trials that the sweep exists
for are not stopped for being cheap (ranking plain accuracy would stop them first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..runtime.config import Config
from ..runtime.launch import worker_resources
from .pareto import Point, pareto_front

SCHEDULERS = ("fifo", "asha")
SCORE = "accuracy_gain_at_cost"
TIME_ATTR = "joint_epoch"
DEFAULT_GRACE_PERIOD = 1
DEFAULT_REDUCTION_FACTOR = 2.0


@dataclass(frozen=True)
class SchedulerOptions:
    """`--scheduler`, `--grace-period` (joint epochs) and `--reduction-factor`; None: not given."""

    name: str = "fifo"
    grace_period: Optional[int] = None
    reduction_factor: Optional[float] = None

    def problems(self, joint_epochs: Optional[int] = None) -> list[str]:
        """One line per bad option; `joint_epochs` (the config's) once it is known."""
        if self.name not in SCHEDULERS:
            return [f"--scheduler: expected one of {', '.join(SCHEDULERS)}, got {self.name!r}"]
        if self.name != "asha":
            given = [o for o, v in (("--grace-period", self.grace_period), ("--reduction-factor", self.reduction_factor))
                     if v is not None]
            return [f"{o}: only with --scheduler asha" for o in given]
        out = []
        grace = self.grace
        if grace < 1:
            out.append(f"--grace-period: joint epochs before ASHA may stop a trial, an integer >= 1, got {grace}")
        elif joint_epochs is not None and grace >= joint_epochs:
            out.append(f"--grace-period: ASHA stops trials after a joint epoch before their last, so it must be < "
                       f"optim.joint_epochs={joint_epochs}, got {grace}")
        if not (math.isfinite(self.factor) and self.factor > 1):
            out.append(f"--reduction-factor: must be a number > 1 (ASHA keeps 1/F of the trials at each rung), "
                       f"got {self.factor}")
        return out

    @property
    def grace(self) -> int:
        return DEFAULT_GRACE_PERIOD if self.grace_period is None else self.grace_period

    @property
    def factor(self) -> float:
        return DEFAULT_REDUCTION_FACTOR if self.reduction_factor is None else self.reduction_factor

    def build(self, joint_epochs: int):
        """Ray Tune's ASHAScheduler over joint epochs, or None for FIFO (every trial runs to its end).

        Its rungs lie before the last joint epoch (max_t = joint_epochs - 1, survivors of the top rung
        not stopped): a trial that reaches its last epoch finishes its run (MLflow run, model) in full."""
        if self.name != "asha":
            return None
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr=TIME_ATTR, metric=SCORE, mode="max", max_t=joint_epochs - 1,
                             grace_period=self.grace, reduction_factor=self.factor, stop_last_trials=False)

    def describe(self) -> str:
        if self.name != "asha":
            return "FIFO: every trial runs all its joint epochs"
        return (f"ASHA on {SCORE} (max), time = joint epochs, grace period {self.grace}, "
                f"reduction factor {self.factor:g}")


def reference_front(baselines: Mapping[str, Any]) -> list[Point]:
    """The warm-up's operating points the score is measured against: the Pareto front of the static
    classifiers and the confidence-threshold cascade (`sweep.baselines.run_baselines`)."""
    points = [Point(s["cost_pct"], s["accuracy"], s["name"]) for s in baselines.get("static", [])]
    points += [Point(t["cost_pct"], t["accuracy"], f"θ={t['threshold']:.3f}")
               for t in baselines.get("threshold_cascade", [])]
    return pareto_front(points)


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial holds: its Train workers' resources (its trial function holds none)."""
    return {k: v * cfg.run.num_workers for k, v in worker_resources(cfg).items()}


def concurrent_trials(cluster: Mapping[str, float], cfg: Config) -> int:
    """How many trials fit at once: the least, over what a trial holds (CPUs; GPUs with run.use_gpu),
    of the cluster's total // the trial's share. 0: not even one fits."""
    return min(int(cluster.get(k, 0) // v) for k, v in trial_resources(cfg).items())


def fit_problem(cluster: Mapping[str, float], cfg: Config) -> Optional[str]:
    """Why no trial fits on the cluster, naming the config fields; None if one does."""
    if concurrent_trials(cluster, cfg) >= 1:
        return None
    need = trial_resources(cfg)
    fields = {"CPU": "run.num_workers × run.cpus_per_worker", "GPU": "run.num_workers (one GPU each, run.use_gpu)"}
    short = [f"{fields[k]} = {v:g} {k}s; the cluster has {cluster.get(k, 0):g}" for k, v in need.items()
             if cluster.get(k, 0) < v]
    return "a trial needs " + "; and ".join(short)
