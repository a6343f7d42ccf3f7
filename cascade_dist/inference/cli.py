"""`python -m cascade_dist.predict --checkpoint DIR --shards DIR --split test [options]`

Real early exit over a split of shards: each image runs only the stages it needs. Prints the
Table-2 line (accuracy, cost %, exit distribution) and the per-classifier table, and writes to
`--out`: predict.json, predictions.csv (per image: target, prediction, exit stage from 1, MACs),
summary.txt, exit_examples.png (the paper's Figure 3). Only the early exit runs, and per image
only its prediction, exit stage, MACs and top-k hit are kept (memory O(N), whatever the number of
classes). `--dense` adds a dense pass (every stage on every image) for accuracy_matrix.png (Figure
4: the accuracy of classifier i on the images exiting at stage j), each classifier's accuracy, and
a check that early exit and the dense evaluation agree. Accuracy is top-k, k = `--topk` (default:
the run config's objective.topk).

The model: a checkpoint directory (or a run directory: its newest checkpoint), a directory
written by `--export`, or an MLflow artifact URI of one (`runs:/<run id>/cascade_export`).
Thresholds, first given first used: --tau / --theta; --budget / --target-accuracy (calibrated on
--calibration-split, saved as calibration.json beside the checkpoint and in --out); the
checkpoint's calibration.json or the export's manifest; the run config's eval.tau.
With --run-id the outputs (and the export) are logged to that MLflow run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import storage

PROG = "python -m cascade_dist.predict"
EXPORT_ARTIFACT = "cascade_export"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint or run directory, export directory, or MLflow URI (runs:/ID/cascade_export)")
    p.add_argument("--shards", help="shard directory (default: the run config's data.shards)")
    p.add_argument("--split", default="test", help="split to predict (default: %(default)s)")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--tau", type=float, nargs="+", help="stop threshold on π: one, or one per stage but the last")
    t.add_argument("--theta", type=float, nargs="+", help="stop threshold on the log-odds (logit τ)")
    t.add_argument("--budget", type=float, help="calibrate: the largest θ whose cost %% is within this budget")
    t.add_argument("--target-accuracy", type=float, help="calibrate: the cheapest θ reaching this top-k accuracy (0-1)")
    p.add_argument("--per-stage", action="store_true", help="calibrate one θ per stage (default: one for all)")
    p.add_argument("--calibration-split", default="val", help="held-out split to calibrate on (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--backend", choices=("dali", "torch"), help="loader (default: the run config's, else dali)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="predictions", help="output directory (default: %(default)s)")
    p.add_argument("--export", metavar="DIR", help="also export the cascade per stage (torch.export) to DIR")
    p.add_argument("--examples", type=int, default=2, help="Figure 3 examples per exit stage (default: %(default)s)")
    p.add_argument("--topk", type=int, help="accuracy counts the label among the k most probable classes "
                                            "(default: the run config's objective.topk, else 1)")
    p.add_argument("--dense", action="store_true",
                   help="also run every stage on every image: Figure 4, each classifier's accuracy, agreement check")
    p.add_argument("--run-id", help="MLflow run to log the outputs (and the export) to")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI)")
    return p.parse_args(argv)


class InputError(ValueError):
    """A bad option or file, reported as one line."""


def load_model(source: str, args: argparse.Namespace):
    """(stage runner, info dict): eager cascade from a checkpoint, or an exported cascade; either a
    local directory, on an object store (s3://, gs://) or an MLflow artifact (runs:/, models:/)."""
    from .export import MANIFEST, ExportedCascade

    mlflow_uri = source.startswith(("runs:/", "models:/", "mlflow-artifacts:")) or (
        storage.is_uri(source) and storage.scheme(source) in ("http", "https"))
    if mlflow_uri:
        import mlflow

        if args.tracking_uri:
            mlflow.set_tracking_uri(args.tracking_uri)
        try:
            source = mlflow.artifacts.download_artifacts(source, dst_path=tempfile.mkdtemp(prefix="cascade_export_"))
        except Exception as err:  # noqa: BLE001 (MLflow raises many kinds)
            raise InputError(f"--checkpoint: cannot download {source}: {str(err).splitlines()[0]}") from None
    elif storage.is_uri(source):  # on an object store: a checkpoint or run directory, or an exported cascade
        if not storage.is_file(storage.join(source, MANIFEST)):
            return checkpoint_model(source, args)
        remote, source = source, tempfile.mkdtemp(prefix="cascade_export_")
        storage.copy_tree(remote, source)
    path = Path(source)
    if not path.is_dir():
        raise InputError(f"checkpoint not found: {path} is not a directory")
    if (path / MANIFEST).is_file():
        runtime = ExportedCascade.load(path, args.device)
        return runtime, {"source": str(path), "kind": "export", "theta": runtime.theta, "ensemble": runtime.ensemble,
                         "shards": None, "backend": None, "calibration_path": None, "topk": 1}
    return checkpoint_model(path, args)


def checkpoint_model(source: str | Path, args: argparse.Namespace):
    """(cascade, info dict) of a checkpoint or run directory, local or at a URI."""
    from .calibration import CALIBRATION_FILE, Calibration
    from .weights import load_cascade

    loaded = load_cascade(source)
    calibration = loaded.checkpoint / CALIBRATION_FILE
    theta = Calibration.load(calibration).theta if calibration.is_file() else None
    return loaded.model.to(args.device), {
        "source": loaded.source, "kind": "checkpoint", "theta": theta, "tau": loaded.eval_config.tau,
        "ensemble": loaded.eval_config.ensemble, "shards": loaded.data_config.shards,
        "backend": loaded.data_config.backend, "calibration_path": calibration, "topk": loaded.topk}


def run(args: argparse.Namespace) -> dict:
    """Load, choose the thresholds, predict the split (early exit; with --dense a dense pass too), write, export, log."""
    from ..data import make_loader
    from .predictor import CascadePredictor

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.topk is not None and args.topk < 1:
        raise InputError(f"--topk must be >= 1, got {args.topk}")
    if args.run_id:
        _check_run(args)
    model, info = load_model(args.checkpoint, args)
    if args.export and not isinstance(model, torch.nn.Module):
        raise InputError("--export needs a checkpoint (this model is already exported)")
    shards = args.shards or info["shards"]
    if shards is None:
        raise InputError("--shards is required with an exported model")
    backend = args.backend or info["backend"] or "dali"

    def loader(split):
        return make_loader(shards, split, args.batch_size, backend=backend, train=False, num_workers=1,
                           device=args.device)

    test_loader = loader(args.split)  # fails early, naming the split, if it is missing
    out_dir = Path(args.out)
    info["topk"] = args.topk or info["topk"]
    if info["topk"] > model.num_classes:
        raise InputError(f"--topk {info['topk']} exceeds the model's {model.num_classes} classes")
    theta, calibration = choose_thresholds(args, model, info, loader, out_dir)
    predictor = CascadePredictor(model, theta=theta, ensemble=info["ensemble"], device=args.device)
    split = predict_split(predictor, test_loader, args.examples, info["topk"], args.dense)

    names = list(model.names)
    result = summary(split, model.macs, names, predictor.tau, theta, args, info, calibration)
    report = split.report
    result["dense_report"] = asdict(report) if report else None
    write_outputs(out_dir, result, split, names, _class_names(shards, args.split))
    print(result["line"])
    print(report.table(names) if report else exit_table_text(result, names))
    mismatches = split.mismatches
    if mismatches and (mismatches["exit"] or mismatches["prediction"]):
        print(f"{PROG}: warning: early exit and dense evaluation disagree on {mismatches}", file=sys.stderr)
    if args.export:
        from .export import export_cascade

        export_cascade(model, args.export, theta=theta, ensemble=info["ensemble"], calibration=calibration)
        print(f"exported {model.num_stages} stages to {args.export}")
    if args.run_id:
        log_to_mlflow(args, out_dir, result)
    print(f"wrote {out_dir}")
    return result


def choose_thresholds(args, model, info, loader, out_dir: Path):
    """(θ, calibration or None): the options first, then a calibration, the export's or the config's."""
    from ..method.exit_rule import ExitRule
    from .calibration import CALIBRATION_FILE, calibrate, collect_exit_table

    k, calibration = model.num_stages, None
    try:
        if args.tau is not None:
            theta = list(ExitRule.from_tau(args.tau, k).theta)
        elif args.theta is not None:
            theta = list(ExitRule.from_theta(args.theta, k).theta)
        elif args.budget is not None or args.target_accuracy is not None:
            table = collect_exit_table(model, loader(args.calibration_split), info["topk"], info["ensemble"],
                                       device=args.device)
            calibration = calibrate(table, model.macs, args.budget, args.target_accuracy, args.per_stage,
                                    args.calibration_split)
            theta = calibration.theta
        else:
            theta = info["theta"] or list(ExitRule.from_tau(info.get("tau", [0.5]), k).theta)
    except ValueError as err:
        option = "--tau" if args.tau is not None else "--theta" if args.theta is not None else "calibration"
        raise InputError(f"{option}: {err}") from None
    if calibration is not None:
        calibration.save(out_dir / CALIBRATION_FILE)
        if info["calibration_path"] is not None:  # saved with the model: the checkpoint's default from now on
            try:
                calibration.save(info["calibration_path"])
            except OSError as err:
                print(f"{PROG}: warning: calibration not saved beside the checkpoint: {err}", file=sys.stderr)
    return theta, calibration


@dataclass
class SplitPrediction:
    """What `predict` keeps of a split: per image (N,) tensors, never the (N, K, C) outputs."""

    predictions: torch.Tensor
    exit_stage: torch.Tensor
    macs: torch.Tensor
    targets: torch.Tensor
    hit: torch.Tensor
    """True where the label is among the cascade's top-k classes."""
    examples: list
    seconds: float
    report: object = None
    """The dense pass's `EvalReport` (with --dense), else None."""
    mismatches: dict | None = None
    """Images whose exit stage or prediction differ between early exit and the dense pass (--dense)."""


def predict_split(predictor, loader, examples_per_stage: int, topk: int = 1, dense: bool = False) -> SplitPrediction:
    """Early exit over the loader; with `dense`, a dense pass too (Figure 4, and a check that both agree)."""
    from ..method.evaluate import CascadeEvaluator, EvalConfig, run_over
    from ..method.exit_table import topk_hits
    from ..method.models import dense_forward

    model, k = predictor.model, predictor.model.num_stages
    evaluator = (CascadeEvaluator(model.macs, EvalConfig(ensemble=predictor.ensemble), list(predictor.rule.theta), topk)
                 if dense else None)
    kept = {"predictions": [], "exit_stage": [], "macs": [], "targets": [], "hit": []}
    examples, mismatches = [], {"exit": 0, "prediction": 0}
    quota, clock = [examples_per_stage] * k, {"seconds": 0.0}

    def timed(images):
        start = time.perf_counter()
        pred = predictor(images)
        if pred.predictions.is_cuda:
            torch.cuda.synchronize()
        clock["seconds"] += time.perf_counter() - start
        return pred

    def keep(pred, targets, images):
        if evaluator is not None:
            out = dense_forward(model, images)
            evaluator(out, targets)
            reference = predictor.pick(out)
            mismatches["exit"] += int((reference.exit_stage != pred.exit_stage).sum())
            mismatches["prediction"] += int((reference.predictions != pred.predictions).sum())
        targets = targets.to(pred.predictions.device)
        for name, value in (("predictions", pred.predictions), ("exit_stage", pred.exit_stage), ("macs", pred.macs),
                            ("targets", targets), ("hit", topk_hits(pred.probs, targets, topk))):
            kept[name].append(value.cpu())
        for i in range(len(pred) if any(quota) else 0):
            stage = int(pred.exit_stage[i])
            if quota[stage] > 0:
                quota[stage] -= 1
                examples.append((images[i].cpu(), int(targets[i]), stage, pred.stage_log_probs[i].exp().cpu(),
                                 pred.stop_probs[i].cpu(), int(pred.predictions[i])))

    run_over(timed, loader, keep, device=predictor.device)
    if not kept["targets"]:
        raise InputError("the split gave no images")
    return SplitPrediction(**{name: torch.cat(parts) for name, parts in kept.items()}, examples=examples,
                           seconds=clock["seconds"], report=evaluator.compute() if evaluator else None,
                           mismatches=mismatches if evaluator else None)


def summary(split: SplitPrediction, macs, names, tau, theta, args, info, calibration) -> dict:
    n, k = len(split.targets), len(names)
    exits = torch.bincount(split.exit_stage, minlength=k).double()
    accuracy = float(split.hit.double().mean())
    at_exit = [float(split.hit[split.exit_stage == t].double().mean()) if exits[t] > 0 else None for t in range(k)]
    macs_per_image = float(split.macs.mean())
    cost = 100 * macs_per_image / macs.reference
    taus = "/".join(f"{t:.4g}" for t in tau)
    name = "accuracy" if info["topk"] == 1 else f"top-{info['topk']} accuracy"
    line = (f"cascade {' > '.join(names)} | {args.split}: {n} images | tau {taus} | {name} {100 * accuracy:.2f} % | "
            f"cost {cost:.2f} % ({macs_per_image / 1e6:.2f} M MACs/image) | exits "
            + " / ".join(f"{100 * f:.1f}" for f in (exits / n).tolist()) + " %")
    return {
        "line": line, "model": info["source"], "kind": info["kind"], "names": names, "split": args.split,
        "num_samples": n, "tau": tau, "theta": list(theta), "ensemble": info["ensemble"], "topk": info["topk"],
        "accuracy": accuracy, "top1_accuracy": float((split.predictions == split.targets).double().mean()),
        "cost_pct": cost, "macs_per_image": macs_per_image,
        "exit_fractions": (exits / n).tolist(), "accuracy_at_exit": at_exit,
        "calibration": asdict(calibration) if calibration else None,
        "dense_mismatches": split.mismatches, "early_exit_seconds": split.seconds,
        "early_exit_images_per_s": n / split.seconds if split.seconds > 0 else None,
    }


def exit_table_text(result: dict, names) -> str:
    """Per exit stage: its share of the images and the cascade's accuracy on them (no dense pass needed)."""
    width = max(len(n) for n in names) + 2
    lines = [f"{'exit at':<{width}}{'exits %':>9}{'accuracy %':>12}", "-" * (width + 21)]
    for name, frac, acc in zip(names, result["exit_fractions"], result["accuracy_at_exit"]):
        lines.append(f"{name:<{width}}{100 * frac:>9.1f}{'-' if acc is None else f'{100 * acc:.2f}':>12}")
    return "\n".join(lines)


def write_outputs(out_dir, result, split: SplitPrediction, names, class_names) -> None:
    from .plots import accuracy_matrix_plot, exit_examples_plot

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predict.json").write_text(json.dumps(result, indent=1))
    table = split.report.table(names) if split.report else exit_table_text(result, names)
    (out_dir / "summary.txt").write_text(result["line"] + "\n" + table + "\n")
    with open(out_dir / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "target", "prediction", "exit_stage", "macs"])
        rows = zip(split.targets.tolist(), split.predictions.tolist(), split.exit_stage.tolist(), split.macs.tolist())
        for i, (target, prediction, stage, macs) in enumerate(rows):
            w.writerow([i, target, prediction, stage + 1, int(macs)])
    if split.report:
        accuracy_matrix_plot(split.report, out_dir / "accuracy_matrix.png")
    examples = sorted(split.examples, key=lambda e: e[2])
    if examples:
        image, target, stage, probs, stop, said = (torch.stack([torch.as_tensor(e[j]) for e in examples]).numpy()
                                                   for j in range(6))
        exit_examples_plot(image, target, stage, probs, stop, out_dir / "exit_examples.png", class_names, names, said)


def _check_run(args) -> None:
    import mlflow

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    try:
        mlflow.MlflowClient().get_run(args.run_id)
    except Exception:  # noqa: BLE001 (MLflow raises many kinds)
        raise InputError(f"--run-id: no MLflow run {args.run_id} in {mlflow.get_tracking_uri()}") from None


def log_to_mlflow(args, out_dir: Path, result: dict) -> None:
    import mlflow

    prefix = f"predict_{args.split}_"
    metrics = {prefix + "accuracy": result["accuracy"], prefix + "cost_pct": result["cost_pct"],
               **{f"{prefix}exit_frac_stage{t}": f for t, f in enumerate(result["exit_fractions"])}}
    mlflow.log_metrics(metrics, run_id=args.run_id)
    mlflow.log_artifacts(str(out_dir), artifact_path=f"predict/{args.split}", run_id=args.run_id)
    if args.export:
        mlflow.log_artifacts(args.export, artifact_path=EXPORT_ARTIFACT, run_id=args.run_id)
        print(f"logged to MLflow run {args.run_id} (model URI: runs:/{args.run_id}/{EXPORT_ARTIFACT})")
    else:
        print(f"logged to MLflow run {args.run_id}")


def _class_names(shards, split) -> list[str] | None:
    from ..data.manifest import Manifest

    try:
        return list(Manifest.load(storage.join(shards, split)).class_names)
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    from ..data import DataError

    try:
        run(args)
    except (InputError, FileNotFoundError, DataError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
