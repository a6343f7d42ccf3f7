"""`python tuning/table2.py --config CONFIG --seeds 0 1 2 --out results/DIR [key=value ...]`

Runs the Table-2 protocol (`sweep.protocol`) for each seed: a shared warm-up, the static control,
the learned cascades of each recipe; scores every method's operating points on the held-out
split's calibrated thresholds; and writes report.json / report.md / trials.csv / tradeoff.png
(mean ± std over the seeds), plus the accuracy matrix and exit histogram of the best Ours model.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

from ..data import storage
from ..data.redact import redact
from ..runtime import launch
from ..runtime.config import ConfigError, load_config
from .protocol import METHOD_LABELS, NAMED_BUDGETS, RECIPES, mean_std, score_seed, train_seed

PROG = "python tuning/table2.py"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Table 2 with controls and seeds (see cascade_dist/sweep/protocol.py).")
    p.add_argument("--config", required=True, help="a shipped config or a YAML file")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=[r.name for r in RECIPES], choices=[r.name for r in RECIPES])
    p.add_argument("--held-out-split", default="val")
    p.add_argument("--balanced", action="store_true", help="class-balanced test accuracy (imbalanced test splits)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_args(argv)


def main(argv=None) -> int:
    launch.local_ray_on_loopback()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds) or not args.seeds:
        print(f"{PROG}: error: --seeds: give distinct seeds, got {args.seeds}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        return err.print_lines(PROG)
    if not storage.is_file(storage.join(cfg.data.shards, args.held_out_split, "manifest.json")):
        print(f"{PROG}: error: --held-out-split: no split {args.held_out_split!r} under {cfg.data.shards} "
              f"(build the shards with --val-split)", file=sys.stderr)
        return 2
    command = redact(shlex.join(["python", "tuning/table2.py", *argv]))
    return protocol(cfg, args, command)


def protocol(cfg, args, command: str) -> int:

    start = time.perf_counter()
    cfg.run.storage_path = storage.resolve_storage(cfg.run.storage_path)
    cfg.data.shards = storage.resolve_storage(cfg.data.shards)
    recipes = [r for r in RECIPES if r.name in args.recipes]
    launch.init_ray(cfg)
    seeds, static = {}, {}
    for seed in args.seeds:
        checkpoints = train_seed(cfg, seed, recipes, launch.run)
        curves, stat = score_seed(checkpoints, cfg, args.held_out_split, args.balanced)
        seeds[seed] = {"checkpoints": checkpoints, "curves": curves, "ours_report_at_35": stat.pop("ours_report_at_35", None)}
        static[seed] = stat
        print(f"{PROG}: seed {seed} done after {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    report = summarize(cfg, args, seeds, static, command, time.perf_counter() - start)
    write(Path(args.out), report, seeds)
    print((Path(args.out) / "report.md").read_text())
    return 0


def summarize(cfg, args, seeds, static, command, wall_s) -> dict:
    largest = [static[s]["static_accuracy"][-1] for s in seeds]
    methods = {}
    for method in METHOD_LABELS:
        curves = {s: seeds[s]["curves"][method] for s in seeds if method in seeds[s]["curves"]}
        if not curves:
            continue
        methods[method] = {
            "label": METHOD_LABELS[method],
            "matched_cost_pct": mean_std([c.matched_cost(static[s]["static_accuracy"][-1]) for s, c in curves.items()]),
            "accuracy_at_budget": {f"{b:g}": mean_std([c.at(b) for c in curves.values()]) for b in NAMED_BUDGETS},
            "cost_at_budget": {f"{b:g}": mean_std([_cost_at(c, b) for c in curves.values()]) for b in NAMED_BUDGETS},
        }
    return {
        "command": command, "wall_clock_s": wall_s, "classifiers": cfg.model.classifiers, "seeds": list(seeds),
        "accuracy": (f"class-balanced top-{cfg.objective.topk} (mean of per-class accuracies)" if args.balanced
                     else f"top-{cfg.objective.topk}"),
        "held_out_split": args.held_out_split, "test_split": cfg.data.eval_split,
        "epochs": {"warmup": cfg.optim.warmup_epochs, "joint": cfg.optim.joint_epochs},
        "static_cost_pct": static[next(iter(static))]["static_cost_pct"],
        "static_accuracy": {str(t): mean_std([static[s]["static_accuracy"][t] for s in seeds])
                            for t in range(len(cfg.model.classifiers))},
        "largest_static_accuracy": mean_std(largest),
        "methods": methods,
    }


def _cost_at(c, budget: float):
    return next((cost for b, cost in zip(c.budgets, c.cost_pct) if abs(b - budget) < 1e-9), None)


def write(out: Path, report: dict, seeds: dict) -> None:
    from .table2_report import figures, markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    with (out / "trials.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seed", "method", "budget_pct", "test_cost_pct", "test_accuracy", "theta"])
        for seed, data in seeds.items():
            for method, c in data["curves"].items():
                for b, cost, acc, th in zip(c.budgets, c.cost_pct, c.accuracy, c.theta):
                    w.writerow([seed, method, b, f"{cost:.4f}", f"{acc:.6f}", " ".join(f"{t:.4g}" for t in th)])
    figures(out, report, seeds)
    (out / "report.md").write_text(markdown(report))
