"""The α sweep behind `python tuning/sweep_alpha.py`: Ray Tune over α × policy LR (× Ours / Ours (S)).

1. One shared warm-up run (cross-entropy only, `optim.joint_epochs=0`): it does not depend on α.
2. Baselines from its classifiers (`cascade_dist.baselines`): each classifier alone, and the
   max-softmax threshold cascade tuned on the held-out split.
3. A grid of Tune trials. Each trial function launches a `TorchTrainer` through
   `cascade_dist.train.run` (Ray Train V2: no `Tuner(trainer)`), starting its joint phase from the
   warm-up checkpoint (`run.warm_start`). Trials take no CPU themselves (their Train workers do),
   and `max_concurrent_trials` keeps them within the cluster's CPUs.
4. MLflow: one parent run, one child run per trial (written by the trial's rank-0 worker with
   `tracking.parent_run_id`), and on the parent the Pareto front, tables and plot
   (`cascade_dist.pareto.write_report`).
5. Budget mode (`--budget B`): one more trial per variant trains with `objective.budget=B`, its α
   following dual ascent toward an expected cost of B (`objective.CostBudget`); with
   `--budget-refine N`, N more trials bisect log α toward B. The choice is the most accurate Ours
   trial (grid, dual ascent or bisection) whose test cost is ≤ B %.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import DEFAULT_CONFIG, Config, ConfigError, from_container, load_config, shipped_configs, to_container

PAPER_ALPHAS = [float(f"{a:.3g}") for a in np.logspace(-4, -2, 5)]
VARIANTS = ("ours", "ours_s")
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
                   help="trials at once (default: cluster CPUs // (run.num_workers × run.cpus_per_worker))")
    p.add_argument("--no-shared-warmup", action="store_true", help="every trial runs its own warm-up")
    p.add_argument("--budget", type=float, default=None, help="cost budget in %% of the largest classifier's MACs")
    p.add_argument("--budget-refine", type=int, default=0, help="extra trials bisecting log α toward --budget")
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
    if not args.name or "/" in args.name:
        out.append(f"--name: a non-empty name without '/', got {args.name!r}")
    return out


def run_name(sweep: str, variant: str, alpha: float, policy_lr: float, budget: float | None = None) -> str:
    target = f"-B{budget:.3g}" if budget is not None else ""
    return f"{sweep}-{variant}-a{alpha:.3g}{target}-plr{policy_lr:.3g}"


def trial_config(base: dict, variant: str, alpha: float, policy_lr: float, sweep: dict,
                 budget: float | None = None) -> Config:
    """The trial's config: the base config with its α (fixed, or dual ascent's start toward `budget`),
    policy LR, variant, parent run and warm start."""
    d = copy.deepcopy(base)
    d["objective"]["alpha"] = float(alpha)
    d["objective"]["budget"] = budget
    d["optim"]["policy_lr"] = float(policy_lr)
    d["optim"]["freeze_classifiers"] = variant == "ours_s"
    d["run"]["name"] = run_name(sweep["name"], variant, alpha, policy_lr, budget)
    d["run"]["warm_start"] = sweep.get("warm_start")
    d["tracking"]["parent_run_id"] = sweep.get("parent_run_id")
    return from_container(d)


def _trial(params: dict, base: dict, sweep: dict) -> None:
    """One Tune trial: a full training run (`cascade_dist.train.run`) on its own TorchTrainer."""
    from ray import tune

    from . import train

    cfg = trial_config(base, params["variant"], params["alpha"], params["policy_lr"], sweep, params.get("budget"))
    start = time.perf_counter()
    result = train.run(cfg)
    if result.report is None:
        raise RuntimeError(f"trial {cfg.run.name} produced no evaluation report")
    tune.report({"accuracy": result.report.accuracy, "cost_pct": result.report.cost_pct,
                 "run_name": cfg.run.name, "checkpoint_path": str(result.checkpoint_path),
                 "trial_seconds": time.perf_counter() - start,
                 "alpha_end": (result.metrics or {}).get("train_alpha_end", cfg.objective.alpha)})


def run_trials(points: Sequence[dict], base: dict, sweep: dict, max_concurrent: int, round_: int) -> tuple[list[dict], list[str]]:
    """Run the (variant, α, policy LR) points as one Tune grid; returns finished trials and errors."""
    from ray import tune

    points = [dict(p) for p in points]
    space = {"point": tune.grid_search(list(range(len(points))))}

    def trainable(config, points=points, base=base, sweep=sweep):  # the grid runs over point indices
        _trial(points[config["point"]], base, sweep)

    tuner = tune.Tuner(
        # the trial function only drives its TorchTrainer: no CPU of its own (Tune refuses an empty request)
        tune.with_resources(trainable, {"CPU": 0, "memory": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(name=f"{sweep['name']}-tune-{round_}", storage_path=str(Path(base["run"]["storage_path"]) / "tune"),
                                  verbose=0),
    )
    grid = tuner.fit()
    trials, errors = [], []
    for res in grid:
        point = points[res.config["point"]]
        if res.error or not res.metrics or "accuracy" not in res.metrics:
            errors.append(f"{run_name(sweep['name'], point['variant'], point['alpha'], point['policy_lr'], point.get('budget'))}: {res.error}")
            continue
        report = json.loads((Path(res.metrics["checkpoint_path"]) / "report.json").read_text())
        trials.append({"run_name": res.metrics["run_name"], "variant": point["variant"], "alpha": point["alpha"],
                       "policy_lr": point["policy_lr"], "dual_budget": point.get("budget"),
                       "alpha_end": res.metrics.get("alpha_end", point["alpha"]),
                       "accuracy": report["accuracy"], "cost_pct": report["cost_pct"],
                       "exit_fractions": report["exit_fractions"], "sweep": report["sweep"],
                       "seconds": res.metrics.get("trial_seconds"), "checkpoint_path": res.metrics["checkpoint_path"]})
    return trials, errors


def next_alpha(trials: Sequence[dict], budget: float) -> float | None:
    """Next α to train toward `budget`: the log-midpoint between the smallest feasible α (cost ≤ budget)
    and the largest infeasible one below it; ×3 if none fits, ÷3 if all fit. None: nothing to refine."""
    pts = sorted((t["alpha"], t["cost_pct"]) for t in trials if t.get("dual_budget") is None)
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


def budget_choice(trials: Sequence[dict], budget: float) -> dict | None:
    from .pareto import Point, best_under_budget

    pts = [Point(t["cost_pct"], t["accuracy"], t["run_name"], t) for t in trials if t["variant"] == "ours"]
    best = best_under_budget(pts, budget)
    return best.extra if best else None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    problems = check_args(args)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        problems += err.problems
        cfg = None
    if cfg is not None:
        for lr in args.policy_lrs or []:
            for a in args.alphas:
                try:
                    trial_config(to_container(cfg), "ours", a, lr, {"name": args.name})
                except ConfigError as err:
                    problems += err.problems
    if problems:
        for problem in dict.fromkeys(problems):
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    return sweep(cfg, args, command=shlex.join(["python", "tuning/sweep_alpha.py", *argv]))


def sweep(cfg: Config, args: argparse.Namespace, command: str) -> int:
    import mlflow
    import ray
    from mlflow.tracking import MlflowClient

    from . import train
    from .baselines import run_baselines
    from .pareto import write_report
    from .tracking import ensure_experiment, flatten, tracking_uri

    start = time.perf_counter()
    cfg.run.storage_path = str(Path(cfg.run.storage_path).resolve())
    cfg.data.shards = str(Path(cfg.data.shards).resolve())
    policy_lrs = args.policy_lrs or [cfg.optim.policy_lr]
    out = Path(args.out).resolve() if args.out else Path(cfg.run.storage_path) / args.name / "report"
    previous_uri = mlflow.get_tracking_uri()  # ensure_experiment sets it process-wide: restored below
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(runtime_env={"env_vars": train._worker_env(cfg)})
    try:
        per_trial = cfg.run.num_workers * cfg.run.cpus_per_worker
        cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
        if per_trial > cluster_cpus:
            print(f"{PROG}: error: a trial needs run.num_workers × run.cpus_per_worker = {per_trial} CPUs; "
                  f"the cluster has {cluster_cpus}", file=sys.stderr)
            return 2
        max_concurrent = args.max_concurrent or max(1, cluster_cpus // per_trial)

        # MLflow parent run (the experiment is created first: the trials' workers log into it)
        ensure_experiment(cfg)
        client = MlflowClient(tracking_uri(cfg))
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        parent = client.create_run(exp.experiment_id, run_name=args.name, tags={"cascade_dist.role": "sweep"})
        pid = parent.info.run_id
        sweep_params = {"sweep.alphas": args.alphas, "sweep.policy_lrs": policy_lrs, "sweep.variants": args.variants,
                        "sweep.shared_warmup": not args.no_shared_warmup, "sweep.max_concurrent": max_concurrent,
                        "sweep.budget": args.budget, "sweep.command": command[:5000]}
        for k, v in {**sweep_params, **flatten(to_container(cfg))}.items():
            client.log_param(pid, k, str(v))

        # 1. the shared warm-up (tracked on the parent, not as a child run)
        wcfg = copy.deepcopy(cfg)
        wcfg.optim.joint_epochs = 0
        wcfg.run.name = f"{args.name}-warmup"
        wcfg.tracking.enabled = False
        t0 = time.perf_counter()
        warm = train.run(wcfg)
        warmup_s = time.perf_counter() - t0
        if warm.checkpoint_path is None:
            print(f"{PROG}: error: the warm-up run {wcfg.run.name} left no checkpoint", file=sys.stderr)
            return 1
        print(f"{PROG}: warm-up ({cfg.optim.warmup_epochs} epochs) done in {warmup_s:.0f} s: {warm.checkpoint_path}", flush=True)
        m = warm.metrics or {}
        # what each trial would have spent on its own warm-up epochs (training only: conservative)
        warmup_epoch_s = m["train_images"] / m["train_images_per_s"] if m.get("train_images_per_s") else warmup_s
        for k, v in (warm.report.metrics() if warm.report else {}).items():
            client.log_metric(pid, f"warmup_{k}", float(v))

        # 2. baselines from the warm-up classifiers
        base = run_baselines(cfg, warm.checkpoint_path)

        # 3. the trial grid
        sweep_info = {"name": args.name, "parent_run_id": pid,
                      "warm_start": None if args.no_shared_warmup else str(warm.checkpoint_path)}
        base_cfg = to_container(cfg)
        points = [{"variant": v, "alpha": a, "policy_lr": lr} for v in args.variants for a in args.alphas for lr in policy_lrs]
        trials, errors = run_trials(points, base_cfg, sweep_info, max_concurrent, 0)

        # 4. budget mode
        budget = None
        if args.budget is not None:
            dual = [{"variant": v, "alpha": cfg.objective.alpha, "policy_lr": lr, "budget": args.budget}
                    for v in args.variants for lr in policy_lrs]
            more, errs = run_trials(dual, base_cfg, sweep_info, max_concurrent, 1)
            trials, errors = trials + more, errors + errs
            method = (f"Picked from the α grid and {len(dual)} dual-ascent trial(s) (objective.budget={args.budget:g}: "
                      f"α starts at {cfg.objective.alpha:g} and follows the expected training cost).")
            for r in range(args.budget_refine):
                lr = (budget_choice(trials, args.budget) or {}).get("policy_lr", policy_lrs[0])
                alpha = next_alpha([t for t in trials if t["variant"] == "ours" and t["policy_lr"] == lr
                                    and t.get("dual_budget") is None], args.budget)
                if alpha is None or any(t["alpha"] == alpha and t["policy_lr"] == lr for t in trials):
                    break
                more, errs = run_trials([{"variant": "ours", "alpha": float(f"{alpha:.4g}"), "policy_lr": lr}],
                                        base_cfg, sweep_info, max_concurrent, r + 2)
                trials, errors = trials + more, errors + errs
                method += f" Then {r + 1} extra trial(s) bisecting log α toward the budget."
            chosen = budget_choice(trials, args.budget)
            budget = {"budget_pct": args.budget, "chosen": chosen, "method": method,
                      "max_alpha": max(t["alpha"] for t in trials) if trials else None}
            if chosen:
                client.log_param(pid, "budget.alpha", chosen["alpha"])
                client.log_metric(pid, "budget_accuracy", chosen["accuracy"])
                client.log_metric(pid, "budget_cost_pct", chosen["cost_pct"])

        # 5. the report, on disk and on the parent run
        children = {r.info.run_name: r.info.run_id for r in client.search_runs(
            [exp.experiment_id], f"tags.mlflow.parentRunId = '{pid}'", max_results=1000)}
        for t in trials:
            t["mlflow_run_id"] = children.get(t["run_name"])
        wall = time.perf_counter() - start
        n = len(points)
        summary = {
            "command": command, "wall_clock_s": wall, "device": _device(), "classifiers": cfg.model.classifiers,
            "config": base_cfg, "alphas": args.alphas, "policy_lrs": policy_lrs, "variants": args.variants,
            "warmup": {"seconds": warmup_s, "epochs": cfg.optim.warmup_epochs, "trials": n,
                       "shared": not args.no_shared_warmup,
                       "epoch_train_s": warmup_epoch_s,
                       "saved_s": (n - 1) * cfg.optim.warmup_epochs * warmup_epoch_s if not args.no_shared_warmup else 0.0,
                       "checkpoint": str(warm.checkpoint_path)},
            **base, "trials": trials, "budget": budget, "errors": errors, "mlflow_parent_run_id": pid,
            "notes": _notes(cfg, args, errors),
        }
        paths = write_report(out, summary)
        client.log_artifacts(pid, str(out))
        report = json.loads(paths["json"].read_text())
        metrics = {"wall_clock_s": wall, "warmup_s": warmup_s, "time_saved_s": summary["warmup"]["saved_s"],
                   "n_trials": len(trials), "n_failed": len(errors), "pareto_size": len(report["pareto_front"])}
        for k, v in metrics.items():
            client.log_metric(pid, k, float(v))
        client.set_terminated(pid, "FINISHED" if not errors else "FAILED")
        print(paths["md"].read_text())
        print(f"report: {out}\nMLflow parent run: {pid} ({tracking_uri(cfg)})")
        for e in errors:
            print(f"{PROG}: trial failed: {e}", file=sys.stderr)
        return 1 if errors or not trials else 0
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if own_ray:
            ray.shutdown()


def _device() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}"


def _notes(cfg: Config, args, errors) -> list[str]:
    notes = [
        "Static points: each classifier of the cascade after the cross-entropy warm-up (each on its own loss, "
        "i.e. trained alone). Threshold cascade: exit at the first classifier whose max softmax ≥ θ (one θ for "
        "all stages), θ chosen per budget on the held-out split, measured on the test split. Ours / Ours (S): "
        f"each trial's cascade at τ = {cfg.eval.tau} (policy decides), {'starting from the shared warm-up' if not args.no_shared_warmup else 'with its own warm-up'}.",
    ]
    if not args.no_shared_warmup:
        notes.append("The shared warm-up is a run with optim.joint_epochs=0, so its classifier LR follows the cosine "
                     "over the warm-up epochs only; the trials continue the cosine of warm-up + joint epochs from "
                     "there. Time saved ≈ (trials − 1) × warm-up epochs × one warm-up epoch's training time (start-up, "
                     "evaluation and checkpointing not counted).")
    notes.append(f"Epochs: the static classifiers and the threshold cascade use the warm-up classifiers "
                 f"({cfg.optim.warmup_epochs} epochs); Ours continues training them for {cfg.optim.joint_epochs} more "
                 "joint epoch(s), so part of its gain over them can be the extra training. Ours (S) keeps the warm-up "
                 "classifiers frozen: it is the like-for-like comparison with the threshold cascade.")
    if errors:
        notes.append("Failed trials: " + "; ".join(errors))
    return notes
