"""The α sweep behind `python tuning/sweep_alpha.py`: Ray Tune over α × policy LR (× Ours / Ours (S)).

1. One shared warm-up run (cross-entropy only, `optim.joint_epochs=0`): it does not depend on α.
2. Baselines from its classifiers (`sweep.baselines`): each classifier alone, and the
   max-softmax threshold cascade tuned on the held-out split.
3. A grid of Tune trials. Each trial function launches a `TorchTrainer` through
   `runtime.launch.run` (Ray Train V2: no `Tuner(trainer)`), starting its joint phase from the
   warm-up checkpoint (`run.warm_start`). Every joint epoch reaches Tune, so `--scheduler asha`
   (`sweep.scheduling`) can stop trials early; FIFO (every trial to its end) is the default. Trials
   hold nothing themselves (their Train workers do); as many run at once as the cluster's CPUs,
   and GPUs with `run.use_gpu`, hold.
4. MLflow: one parent run, one child run per trial (written by the trial's rank-0 worker with
   `tracking.parent_run_id`), and on the parent the Pareto front, tables and plot
   (`sweep.report.write_report`).
5. Budget mode (`--budget B`): one more trial per variant and policy LR trains with `objective.budget=B`, its α
   following dual ascent toward an expected cost of B (`method.objective.CostBudget`); with
   `--budget-refine N`, N more trials bisect log α toward B. The choice is the most accurate Ours
   trial (grid, dual ascent or bisection) whose test cost is ≤ B %.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import storage
from ..data.redact import redact, redact_tree
from ..runtime import launch
from ..runtime.config import DEFAULT_CONFIG, Config, ConfigError, load_config, shipped_configs, to_container
from .scheduling import SCHEDULERS, SchedulerOptions, concurrent_trials, fit_problem, reference_front
from .trials import VARIANTS, SweepContext, Trial, TrialSpec, budget_choice, next_alpha, run_trials, trial_config

PAPER_ALPHAS = [float(f"{a:.3g}") for a in np.logspace(-4, -2, 5)]
PROG = "python tuning/sweep_alpha.py"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Ray Tune sweep over the cost weight α × policy LR, "
                                "with a shared warm-up, MLflow parent/child runs, a Pareto front and a Table-2 report.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"a shipped config ({', '.join(shipped_configs())}) or a YAML file")
    p.add_argument("--alphas", type=float, nargs="+", default=PAPER_ALPHAS,
                   help="cost weights α (default: 5 log-spaced over the paper's 1e-4..1e-2)")
    p.add_argument("--policy-lrs", type=float, nargs="+", default=None, help="policy LRs (default: the config's optim.policy_lr)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                   help="ours: joint training; ours_s: policies on the frozen warm-up classifiers")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: as many as fit: cluster CPUs // (run.num_workers × "
                        "run.cpus_per_worker), and with run.use_gpu at most cluster GPUs // run.num_workers)")
    p.add_argument("--scheduler", default="fifo", metavar="|".join(SCHEDULERS),
                   help="fifo: every grid trial runs all its joint epochs (default); asha: Ray Tune's ASHA stops "
                        "trials whose accuracy gain over the warm-up baselines at their own cost lags")
    p.add_argument("--grace-period", type=int, default=None,
                   help="asha: joint epochs before a trial may be stopped (default 1; < optim.joint_epochs)")
    p.add_argument("--reduction-factor", type=float, default=None,
                   help="asha: at each rung, trials below the top 1/F stop (default 2)")
    p.add_argument("--no-shared-warmup", action="store_true", help="every trial runs its own warm-up")
    p.add_argument("--budget", type=float, default=None, help="cost budget in %% of the largest classifier's MACs")
    p.add_argument("--budget-refine", type=int, default=0, help="extra trials bisecting log α toward --budget")
    p.add_argument("--held-out-split", default="val",
                   help="split the threshold baselines are tuned on (default val; 'train' is an explicit, "
                        "optimistic choice: the classifiers are over-confident on it)")
    p.add_argument("--name", default="alpha-sweep", help="sweep name: MLflow parent run, prefix of the trials' run.name")
    p.add_argument("--out", default=None, help="report folder (default: <run.storage_path>/<name>/report)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    # `key=value` words are overrides wherever they stand (after `--alphas 0.01 0.02` too)
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = p.parse_args([a for a in argv if a not in overrides])
    args.overrides = [*args.overrides, *overrides]
    return args


def check_args(args: argparse.Namespace) -> list[str]:
    out = []
    if any(not math.isfinite(a) or a < 0 for a in args.alphas):
        out.append(f"--alphas: every α must be a finite number >= 0, got {args.alphas}")
    if args.policy_lrs is not None and any(not math.isfinite(l) or l <= 0 for l in args.policy_lrs):
        out.append(f"--policy-lrs: every policy LR must be > 0, got {args.policy_lrs}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        out.append(f"--max-concurrent: must be >= 1, got {args.max_concurrent}")
    if args.budget is not None and not 0 < args.budget <= 100:
        out.append(f"--budget: a cost in % of the largest classifier, in (0, 100], got {args.budget}")
    if args.budget_refine < 0 or (args.budget_refine and args.budget is None):
        out.append("--budget-refine: needs --budget and a count >= 0")
    if args.budget is not None and "ours" not in args.variants:
        out.append("--budget: picks among 'ours' trials; add ours to --variants")
    out += scheduler_options(args).problems()
    if not args.name or "/" in args.name:
        out.append(f"--name: a non-empty name without '/', got {args.name!r}")
    return out


def main(argv=None) -> int:
    launch.local_ray_on_loopback()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    problems = check_args(args)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        problems += err.problems
        cfg = None
    if cfg is not None:
        from .baselines import held_out_problem

        for problem in (held_out_problem(cfg, args.held_out_split), warm_start_problem(cfg, args)):
            problems += [problem] if problem is not None else []
        problems += scheduler_options(args).problems(cfg.optim.joint_epochs)
        for lr in args.policy_lrs or []:
            for a in args.alphas:
                try:
                    trial_config(to_container(cfg), TrialSpec("ours", a, lr), SweepContext(args.name))
                except ConfigError as err:
                    problems += err.problems
    if problems:
        for problem in dict.fromkeys(problems):
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    return sweep(cfg, args, command=redact(shlex.join(["python", "tuning/sweep_alpha.py", *argv])))


def scheduler_options(args: argparse.Namespace) -> SchedulerOptions:
    return SchedulerOptions(args.scheduler, args.grace_period, args.reduction_factor)


@dataclass
class Sweep:
    """A running sweep: its config, options, MLflow parent run and what the steps have produced."""

    cfg: Config
    args: argparse.Namespace
    command: str
    client: object
    experiment_id: str
    parent_run_id: str
    max_concurrent: int
    policy_lrs: list[float]
    start: float = field(default_factory=time.perf_counter)
    trials: list[Trial] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def base(self) -> dict:
        return to_container(self.cfg)

    def log_param(self, key: str, value) -> None:
        self.client.log_param(self.parent_run_id, key, str(value))

    def log_metric(self, key: str, value: float) -> None:
        self.client.log_metric(self.parent_run_id, key, float(value))

    def run(self, specs: list[TrialSpec], ctx: SweepContext, round_: int, scheduler=None) -> list[Trial]:
        trials, errors = run_trials(specs, self.base, ctx, self.max_concurrent, round_, scheduler)
        self.trials += trials
        self.errors += errors
        return trials


def sweep(cfg: Config, args: argparse.Namespace, command: str) -> int:
    """Shared warm-up → baselines → the grid → budget mode → the report, on one Ray instance and
    under one MLflow parent run."""
    import mlflow
    import ray


    cfg.run.storage_path = storage.resolve_storage(cfg.run.storage_path)
    cfg.data.shards = storage.resolve_storage(cfg.data.shards)
    previous_uri = mlflow.get_tracking_uri()  # ensure_experiment sets it process-wide: restored below
    own_ray = launch.init_ray(cfg)
    try:
        s = open_sweep(cfg, args, command)
        if s is None:
            return 2
        warm, warmup = shared_warmup(s)
        if warm is None:
            return 1
        from .baselines import run_baselines

        baselines = run_baselines(cfg, warm.checkpoint_path, held_out_split=args.held_out_split)
        ctx = SweepContext(args.name, s.parent_run_id, None if args.no_shared_warmup else str(warm.checkpoint_path),
                           tuple(reference_front(baselines)))
        grid = [TrialSpec(v, a, lr) for v in args.variants for a in args.alphas for lr in s.policy_lrs]
        s.run(grid, ctx, 0, scheduler_options(args).build(cfg.optim.joint_epochs))  # budget mode's trials: FIFO
        budget = budget_mode(s, ctx) if args.budget is not None else None
        return finish(s, warmup, baselines, budget)
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if own_ray:
            ray.shutdown()


def open_sweep(cfg: Config, args: argparse.Namespace, command: str) -> Sweep | None:
    """Check the cluster can hold a trial, then create the MLflow parent run with the sweep's params."""
    import ray
    from mlflow.tracking import MlflowClient

    from ..runtime.tracking import ensure_experiment, flatten, tracking_uri

    cluster = ray.cluster_resources()
    if (problem := fit_problem(cluster, cfg)) is not None:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return None
    max_concurrent = args.max_concurrent or concurrent_trials(cluster, cfg)
    ensure_experiment(cfg)  # the experiment exists before the trials' workers log into it
    client = MlflowClient(tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    parent = client.create_run(exp.experiment_id, run_name=args.name, tags={"cascade_dist.role": "sweep"})
    s = Sweep(cfg, args, command, client, exp.experiment_id, parent.info.run_id, max_concurrent,
              args.policy_lrs or [cfg.optim.policy_lr])
    params = {"sweep.alphas": args.alphas, "sweep.policy_lrs": s.policy_lrs, "sweep.variants": args.variants,
              "sweep.shared_warmup": not args.no_shared_warmup, "sweep.max_concurrent": max_concurrent,
              "sweep.budget": args.budget, "sweep.scheduler": scheduler_options(args).describe(),
              "sweep.command": command[:5000]}
    for k, v in {**params, **flatten(redact_tree(to_container(cfg)))}.items():
        s.log_param(k, v)
    return s


def warm_start_problem(cfg: Config, args: argparse.Namespace) -> str | None:
    """`run.warm_start` given to a sweep is its shared warm-up: a warm-up-only run of this cascade
    and warm-up length (a trial would otherwise start its joint phase at the wrong epoch)."""
    from omegaconf import OmegaConf

    if cfg.run.warm_start is None:
        return None
    if args.no_shared_warmup:
        return "run.warm_start: is the sweep's shared warm-up; drop it or --no-shared-warmup"
    path = storage.resolve_storage(cfg.run.warm_start)
    candidates = (storage.join(path, "config.yaml"), storage.join(storage.parent(path), "config.yaml"))
    run_config = next((c for c in candidates if storage.is_file(c)), None)
    if run_config is None:
        return f"run.warm_start: no config.yaml in or beside {path} (the warm-up run's config)"
    warm = OmegaConf.to_container(OmegaConf.create(storage.read_text(run_config)))
    expected = {"optim.joint_epochs": 0, "optim.warmup_epochs": cfg.optim.warmup_epochs,
                "optim.schedule_epochs": cfg.optim.schedule_epochs or cfg.optim.epochs,  # its LR schedule's span
                "model.classifiers": list(cfg.model.classifiers)}
    for key, value in expected.items():
        section, name = key.split(".")
        if warm.get(section, {}).get(name) != value:
            return (f"run.warm_start: {run_config} has {key}={warm.get(section, {}).get(name)}, "
                    f"the sweep needs {value} (a warm-up-only run of this cascade)")
    return None


def shared_warmup(s: Sweep):
    """The cross-entropy warm-up, once for every trial (tracked on the parent run, not as a child);
    `run.warm_start`: an earlier sweep's (or run's) warm-up checkpoint, reused without training."""

    from ..runtime.control import warmup_config

    if s.cfg.run.warm_start is not None:
        ckpt = storage.resolve_storage(s.cfg.run.warm_start)
        print(f"{PROG}: warm-up reused from run.warm_start: {ckpt}", flush=True)
        n = len(s.args.variants) * len(s.args.alphas) * len(s.policy_lrs)
        return launch.TrainResult(None, ckpt, None, storage.location(storage.parent(ckpt)), trained=False), {
            "seconds": 0.0, "epochs": s.cfg.optim.warmup_epochs, "trials": n, "shared": True, "reused": True,
            "checkpoint": str(ckpt), "saved_s": 0.0}

    wcfg = warmup_config(s.cfg, name=f"{s.args.name}-warmup")
    t0 = time.perf_counter()
    warm = launch.run(wcfg)
    seconds = time.perf_counter() - t0
    if warm.checkpoint_path is None:
        print(f"{PROG}: error: the warm-up run {wcfg.run.name} left no checkpoint", file=sys.stderr)
        return None, None
    print(f"{PROG}: warm-up ({s.cfg.optim.warmup_epochs} epochs) done in {seconds:.0f} s: {warm.checkpoint_path}",
          flush=True)
    m = warm.metrics or {}
    # what each trial would have spent on its own warm-up epochs (training only: conservative)
    epoch_s = m["train_images"] / m["train_images_per_s"] if m.get("train_images_per_s") else seconds
    for k, v in (warm.report.metrics() if warm.report else {}).items():
        s.log_metric(f"warmup_{k}", v)
    n = len(s.args.variants) * len(s.args.alphas) * len(s.policy_lrs)
    shared = not s.args.no_shared_warmup
    return warm, {"seconds": seconds, "epochs": s.cfg.optim.warmup_epochs, "trials": n, "shared": shared,
                  "epoch_train_s": epoch_s, "checkpoint": str(warm.checkpoint_path),
                  "saved_s": (n - 1) * s.cfg.optim.warmup_epochs * epoch_s if shared else 0.0}


def budget_mode(s: Sweep, ctx: SweepContext) -> dict:
    """Dual-ascent trials aimed at the budget, optional bisection of log α, and the pick within it."""
    budget, cfg = s.args.budget, s.cfg
    dual = [TrialSpec(v, cfg.objective.alpha, lr, budget) for v in s.args.variants for lr in s.policy_lrs]
    s.run(dual, ctx, 1)
    method = (f"Picked from the α grid and {len(dual)} dual-ascent trial(s) (objective.budget={budget:g}: "
              f"α starts at {cfg.objective.alpha:g} and follows the expected training cost).")
    for r in range(s.args.budget_refine):
        chosen = budget_choice(s.trials, budget)
        lr = chosen.policy_lr if chosen else s.policy_lrs[0]
        alpha = next_alpha([t for t in s.trials if t.variant == "ours" and t.policy_lr == lr], budget)
        if alpha is None or any(t.alpha == alpha and t.policy_lr == lr for t in s.trials):
            break
        s.run([TrialSpec("ours", float(f"{alpha:.4g}"), lr)], ctx, r + 2)
        method += f" Then {r + 1} extra trial(s) bisecting log α toward the budget."
    chosen = budget_choice(s.trials, budget)
    if chosen:
        s.log_param("budget.alpha", chosen.alpha)
        s.log_metric("budget_accuracy", chosen.accuracy)
        s.log_metric("budget_cost_pct", chosen.cost_pct)
    return {"budget_pct": budget, "chosen": chosen, "method": method,
            "max_alpha": max(t.alpha for t in s.trials) if s.trials else None}


def finish(s: Sweep, warmup: dict, baselines: dict, budget: dict | None) -> int:
    """The report, on disk and on the parent run; the parent run's metrics and status."""
    from ..runtime.tracking import tracking_uri
    from .report import write_report

    args, cfg = s.args, s.cfg
    out = storage.location(storage.resolve_storage(args.out) if args.out else
                           storage.join(cfg.run.storage_path, args.name, "report"))
    written = Path(tempfile.mkdtemp(prefix="sweep_report_")) if storage.is_uri(out) else out  # then uploaded
    children = {r.info.run_name: r.info.run_id for r in s.client.search_runs(
        [s.experiment_id], f"tags.mlflow.parentRunId = '{s.parent_run_id}'", max_results=1000)}
    for t in s.trials:
        t.mlflow_run_id = children.get(t.run_name)
        if t.stopped_early and t.mlflow_run_id:
            close_stopped_run(s.client, t, cfg.optim.warmup_epochs)
    wall = time.perf_counter() - s.start
    summary = {
        "command": s.command, "wall_clock_s": wall, "device": _device(), "classifiers": cfg.model.classifiers,
        "config": s.base, "alphas": args.alphas, "policy_lrs": s.policy_lrs, "variants": args.variants,
        "warmup": warmup, **baselines, "trials": s.trials, "budget": budget, "errors": s.errors,
        "mlflow_parent_run_id": s.parent_run_id, "notes": _notes(cfg, args, s.errors, s.trials),
    }
    paths = write_report(written, summary)
    s.client.log_artifacts(s.parent_run_id, str(written))
    if written != out:
        storage.copy_tree(written, out)
    report = json.loads(paths["json"].read_text())
    metrics = {"wall_clock_s": wall, "warmup_s": warmup["seconds"], "time_saved_s": warmup["saved_s"],
               "n_trials": len(s.trials), "n_failed": len(s.errors), "pareto_size": len(report["pareto_front"])}
    for k, v in metrics.items():
        s.log_metric(k, v)
    s.client.set_terminated(s.parent_run_id, "FINISHED" if not s.errors else "FAILED")
    print(paths["md"].read_text())
    print(f"report: {out}\nMLflow parent run: {s.parent_run_id} ({tracking_uri(cfg)})")
    for e in s.errors:
        print(f"{PROG}: trial failed: {e}", file=sys.stderr)
    return 1 if s.errors or not s.trials else 0


def close_stopped_run(client, trial: Trial, warmup_epochs: int) -> None:
    """The MLflow run of a trial the scheduler stopped: its last epoch's accuracy and cost (its worker
    may have been stopped before logging them), a tag saying when it stopped, status KILLED."""
    step = warmup_epochs + trial.joint_epochs - 1
    for key, value in (("accuracy", trial.accuracy), ("cost_pct", trial.cost_pct)):
        if step not in {m.step for m in client.get_metric_history(trial.mlflow_run_id, key)}:
            client.log_metric(trial.mlflow_run_id, key, value, step=step)
    client.set_tag(trial.mlflow_run_id, "cascade_dist.stopped_early", f"after joint epoch {trial.joint_epochs}")
    client.set_terminated(trial.mlflow_run_id, "KILLED")


def _device() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}"


def _notes(cfg: Config, args, errors, trials) -> list[str]:
    notes = [
        "Static points: each classifier of the cascade after the cross-entropy warm-up (each on its own loss, "
        "i.e. trained alone). Threshold cascade: exit at the first classifier whose max softmax ≥ θ (one θ for "
        "all stages), θ chosen per budget on the held-out split, measured on the test split. Ours / Ours (S): "
        f"each trial's cascade at τ = {cfg.eval.tau} (policy decides), {'starting from the shared warm-up' if not args.no_shared_warmup else 'with its own warm-up'}.",
    ]
    if cfg.run.warm_start is not None:
        notes.append(f"The shared warm-up was reused from run.warm_start ({cfg.run.warm_start}): the trials continue "
                     "its weights with their own LR schedules.")
    elif not args.no_shared_warmup:
        notes.append("The shared warm-up is a run with optim.joint_epochs=0 that keeps the classifier LR's cosine "
                     "over warm-up + joint epochs (optim.schedule_epochs), so each trial continues exactly where a "
                     "single run would be. Time saved ≈ (trials − 1) × warm-up epochs × one warm-up epoch's training time (start-up, "
                     "evaluation and checkpointing not counted).")
    notes.append(f"Epochs: the static classifiers and the threshold cascade use the warm-up classifiers "
                 f"({cfg.optim.warmup_epochs} epochs); Ours continues training them for {cfg.optim.joint_epochs} more "
                 "joint epoch(s), so part of its gain over them can be the extra training. Ours (S) keeps the warm-up "
                 "classifiers frozen: it is the like-for-like comparison with the threshold cascade.")
    if args.scheduler != "fifo":
        stopped = [t.run_name for t in trials if t.stopped_early]
        notes.append(f"Scheduler: {scheduler_options(args).describe()} (grid only; budget mode's trials run to "
                     f"their end). Score = accuracy − the accuracy of the warm-up baselines' Pareto front at the trial's "
                     f"cost (test split). Stopped early, each shown at its last epoch: {', '.join(stopped) or 'none'}.")
    if errors:
        notes.append("Failed trials: " + "; ".join(errors))
    return notes
