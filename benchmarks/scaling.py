"""Data-parallel scaling and the cost of step checkpoints, measured side by side in one run.

    python benchmarks/scaling.py [--shards shards/fashion-mnist] [--workers 1 2] [--train-images 8000]
        [--batch 64] [--checkpoint-every 20]

Each case is a real `cascade_dist.train` run (Ray Train + DeepSpeed on gloo, the demo cascade
preact ResNet-8 -> ResNet-20, one cross-entropy epoch over the first `--train-images` training
images, tracking off) on the same shards:

* `--workers N...`: N workers of `--batch` images each (weak scaling: the global batch grows with N).
  Reported: the epoch's training images/s (all ranks, `train_images_per_s`) and the wall-clock of
  the whole run (start-up, evaluation and checkpoints included); speed-up and efficiency against
  the first entry.
* the largest N again with `run.checkpoint_every_steps=--checkpoint-every`: the overhead of step
  checkpoints, as the ratio of training images/s without / with them.

On a 2-core CPU host every worker shares the same 2 cores, so N=2 cannot beat N=1 there: the figure
measures the distributed machinery's overhead (gloo all-reduces, the lock-step barrier), not what a
cluster of GPUs gains. Run it on a GPU node (`--use-gpu`) for that.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ensure_shards(path: Path | None, train_images: int) -> Path:
    """The shards to read: `--shards`, or a Fashion-MNIST subset of `train_images` written once."""
    if path is not None:
        return path
    out = REPO / "shards" / f"fashion-mnist-{train_images}"
    if not (out / "train" / "manifest.json").is_file():
        print(f"building {out} with `python -m data_shards fashion-mnist` ...", flush=True)
        subprocess.run([sys.executable, "-m", "data_shards", "fashion-mnist", "--out", str(out),
                        "--train-limit", str(train_images), "--shard-size", "2000"], check=True)
    return out


def one_run(shards: Path, storage: Path, name: str, workers: int, batch: int, use_gpu: bool,
            checkpoint_every: int | None) -> dict:
    from cascade_dist.runtime.config import load_config
    from cascade_dist.runtime.launch import run

    overrides = {
        "data.shards": shards, "data.batch_size": batch, "model.classifiers": "[preact_resnet8,preact_resnet20]",
        "objective.budget": "null", "optim.warmup_epochs": 1, "optim.joint_epochs": 0,
        "run.num_workers": workers, "run.use_gpu": str(use_gpu).lower(), "run.storage_path": storage,
        "run.name": name, "run.progress": "false", "tracking.enabled": "false",
        "run.checkpoint_every_steps": checkpoint_every if checkpoint_every else "null",
    }
    cfg = load_config("demo", [f"{k}={v}" for k, v in overrides.items()])
    start = time.perf_counter()
    result = run(cfg)
    return {"workers": workers, "checkpoint_every": checkpoint_every, "wall_s": time.perf_counter() - start,
            "img_s": result.metrics["train_images_per_s"], "images": result.metrics["train_images"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=Path, default=None, help="shards to train on (default: a Fashion-MNIST subset)")
    p.add_argument("--train-images", type=int, default=8000, help="size of the default subset")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=64, help="images per worker and step")
    p.add_argument("--checkpoint-every", type=int, default=20, help="steps between step checkpoints")
    p.add_argument("--use-gpu", action="store_true")
    args = p.parse_args(argv)
    shards = ensure_shards(args.shards, args.train_images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling_") as tmp:
        cases = [(n, None) for n in args.workers] + [(max(args.workers), args.checkpoint_every)]
        for i, (n, every) in enumerate(cases):
            rows.append(one_run(shards, Path(tmp), f"scale{i}", n, args.batch, args.use_gpu, every))
            print(f"workers {n}, step checkpoints every {every or '-'}: {rows[-1]['img_s']:.0f} img/s, "
                  f"{rows[-1]['wall_s']:.0f} s", flush=True)
    base = rows[0]
    print("\n| workers | step checkpoints | train img/s | speed-up | efficiency | run wall-clock s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = r["img_s"] / base["img_s"]
        print(f"| {r['workers']} | {r['checkpoint_every'] or '-'} | {r['img_s']:.0f} | {speedup:.2f}x | "
              f"{speedup / (r['workers'] / base['workers']):.2f} | {r['wall_s']:.0f} |")
    plain = next(r for r in rows if r["workers"] == max(args.workers) and r["checkpoint_every"] is None)
    print(f"\nstep checkpoints every {args.checkpoint_every} steps: {plain['img_s'] / rows[-1]['img_s']:.2f}x "
          f"slower training ({max(args.workers)} workers)")


if __name__ == "__main__":
    main()
