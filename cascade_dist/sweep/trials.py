"""Trials of the α sweep: typed grid points, one Tune grid of them, and budget mode's choices.

Each trial is a full training run (`runtime.launch.run`) on its own `TorchTrainer`, launched from
a Tune trial function (Ray Train V2: no `Tuner(trainer)`), starting its joint phase from the
shared warm-up checkpoint (`run.warm_start`). Every epoch reaches Tune (`sweep.epoch_reports`), so
an early-stopping scheduler (`sweep.scheduling`) can stop a trial between epochs; a stopped trial
is recorded with its last epoch's evaluation and checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from ..data import storage
from ..runtime.config import Config, from_container
from .pareto import Point, best_under_budget

VARIANTS = ("ours", "ours_s")
VARIANT_NAMES = {"ours": "Ours", "ours_s": "Ours (S)"}


@dataclass(frozen=True)
class TrialSpec:
    """One grid point: the variant, α (fixed, or dual ascent's start toward `budget`) and the policy LR."""

    variant: str
    alpha: float
    policy_lr: float
    budget: Optional[float] = None


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares: its name, the MLflow parent run, the warm start and the
    operating points its score is measured against (`sweep.scheduling.reference_front`)."""

    name: str
    parent_run_id: Optional[str] = None
    warm_start: Optional[str] = None
    reference: tuple[Point, ...] = ()


@dataclass
class Trial:
    """A finished trial: its grid point and what its last evaluation gave (after `joint_epochs`
    joint epochs: fewer than planned when a scheduler stopped it early)."""

    spec: TrialSpec
    run_name: str
    accuracy: float
    cost_pct: float
    exit_fractions: list[float] = field(default_factory=list)
    sweep: list[dict] = field(default_factory=list)
    alpha_end: Optional[float] = None
    seconds: Optional[float] = None
    checkpoint_path: Optional[str] = None
    mlflow_run_id: Optional[str] = None
    on_pareto_front: bool = False
    joint_epochs: Optional[int] = None
    stopped_early: bool = False

    @property
    def variant(self) -> str:
        return self.spec.variant

    @property
    def alpha(self) -> float:
        return self.spec.alpha

    @property
    def policy_lr(self) -> float:
        return self.spec.policy_lr

    @property
    def dual_budget(self) -> Optional[float]:
        return self.spec.budget

    def point(self) -> Point:
        return Point(self.cost_pct, self.accuracy, self.run_name)

    def setting(self) -> str:
        """α fixed, or dual ascent's start → end toward its budget; the policy LR; an early stop."""
        stop = f"; stopped early after {self.joint_epochs} joint epoch(s)" if self.stopped_early else ""
        if self.dual_budget is not None:
            end = self.alpha if self.alpha_end is None else self.alpha_end
            return (f"α={self.alpha:g}→{end:.3g} (dual ascent, budget {self.dual_budget:g} %), "
                    f"policy LR={self.policy_lr:g}{stop}")
        return f"α={self.alpha:g}, policy LR={self.policy_lr:g}{stop}"

    def to_dict(self) -> dict[str, Any]:
        """Flat record for report.json and trials.csv."""
        d = asdict(self)
        spec = d.pop("spec")
        return {"run_name": d.pop("run_name"), "variant": spec["variant"], "alpha": spec["alpha"],
                "policy_lr": spec["policy_lr"], "dual_budget": spec["budget"], **d}


def run_name(sweep: str, spec: TrialSpec) -> str:
    target = f"-B{spec.budget:.3g}" if spec.budget is not None else ""
    return f"{sweep}-{spec.variant}-a{spec.alpha:.3g}{target}-plr{spec.policy_lr:.3g}"


def trial_config(base: dict, spec: TrialSpec, ctx: SweepContext) -> Config:
    """The trial's config: the base config with its α, budget, policy LR, variant, parent run and warm start."""
    d = copy.deepcopy(base)
    d["objective"]["alpha"] = float(spec.alpha)
    d["objective"]["budget"] = spec.budget
    d["optim"]["policy_lr"] = float(spec.policy_lr)
    d["optim"]["freeze_classifiers"] = spec.variant == "ours_s"
    d["run"]["name"] = run_name(ctx.name, spec)
    d["run"]["warm_start"] = ctx.warm_start
    d["tracking"]["parent_run_id"] = ctx.parent_run_id
    return from_container(d)


def _trial(spec: TrialSpec, base: dict, ctx: SweepContext) -> None:
    """One Tune trial: a full training run on its own TorchTrainer, every epoch reported to Tune."""
    from ray import tune

    from ..runtime import launch
    from .epoch_reports import EpochReports

    cfg = trial_config(base, spec, ctx)
    reports = EpochReports(cfg.run.name, cfg.optim.warmup_epochs, spec.alpha, ctx.reference)
    result = launch.run(cfg, callbacks=[reports])
    if result.report is None:
        raise RuntimeError(f"trial {cfg.run.name} produced no evaluation report")
    if not result.trained:  # trained by an earlier sweep of this name and read back: its last epoch, once
        tune.report(reports.tune_metrics(result.metrics, str(result.checkpoint_path)))


def run_trials(specs: Sequence[TrialSpec], base: dict, ctx: SweepContext, max_concurrent: int,
               round_: int, scheduler=None) -> tuple[list[Trial], list[str]]:
    """Run the grid points as one Tune grid (under `scheduler`, a Tune scheduler, or FIFO); returns
    the trials, those stopped early with their last epoch, and one error line per failure."""
    from ray import tune

    specs = list(specs)

    def trainable(config, specs=specs, base=base, ctx=ctx):  # the grid runs over point indices
        _trial(specs[config["point"]], base, ctx)

    tuner = tune.Tuner(
        # the trial function only drives its TorchTrainer: no CPU of its own (Tune refuses an empty request)
        tune.with_resources(trainable, {"CPU": 0, "memory": 1}),
        param_space={"point": tune.grid_search(list(range(len(specs))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=False, scheduler=scheduler),
        run_config=tune.RunConfig(name=f"{ctx.name}-tune-{round_}", **storage.ray_storage(storage.join(base["run"]["storage_path"], "tune")),
                                  verbose=0),
    )
    planned = base["optim"]["joint_epochs"]
    trials, errors = [], []
    for res in tuner.fit():
        spec, m = specs[res.config["point"]], res.metrics or {}
        if res.error or "accuracy" not in m or not m.get("checkpoint_path"):
            errors.append(f"{run_name(ctx.name, spec)}: {res.error or 'no epoch reported'}")
            continue
        report = json.loads(storage.read_text(storage.join(m["checkpoint_path"], "report.json")))
        joint = int(m.get("joint_epoch", planned))
        trials.append(Trial(spec, m["run_name"], report["accuracy"], report["cost_pct"], report["exit_fractions"],
                            report["sweep"], m.get("alpha_end", spec.alpha), m.get("trial_seconds"),
                            m["checkpoint_path"], joint_epochs=joint, stopped_early=joint < planned))
    return trials, errors


def next_alpha(trials: Sequence[Trial], budget: float) -> float | None:
    """Next α to train toward `budget`: the log-midpoint between the smallest feasible α (cost ≤ budget)
    and the largest infeasible one below it; ×3 if none fits, ÷3 if all fit. None: nothing to refine."""
    pts = sorted((t.alpha, t.cost_pct) for t in trials if t.dual_budget is None)
    if not pts:
        return None
    feasible = [a for a, c in pts if c <= budget]
    if not feasible:
        return max(a for a, _ in pts) * 3 if max(a for a, _ in pts) > 0 else 1e-4
    a_f = min(feasible)
    below = [a for a, c in pts if c > budget and a < a_f]
    if not below:
        return a_f / 3 if a_f > 0 else None
    a_i = max(below)
    return math.sqrt(a_f * a_i) if a_i > 0 else a_f / 3


def budget_choice(trials: Sequence[Trial], budget: float) -> Trial | None:
    """The most accurate Ours trial (grid, dual ascent or bisection) whose test cost is within `budget`."""
    by_name = {t.run_name: t for t in trials if t.variant == "ours"}
    best = best_under_budget([t.point() for t in by_name.values()], budget)
    return by_name[best.label] if best else None
