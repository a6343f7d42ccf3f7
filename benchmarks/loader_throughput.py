"""Loader throughput (DALI and webdataset + DataLoader) beside the demo cascade's training rate.

    python benchmarks/loader_throughput.py [--shards shards/fashion-mnist] [--batch 256] [--batches 200]

In one run on the same machine: images/s of each loader backend over the Fashion-MNIST train
shards with the training augmentation (pad 2 + random 28x28 crop + flip, normalised), after a
warm-up, and images/s of a training step of the demo cascade (preact ResNet-8 -> ResNet-20:
forward, cross-entropy summed over stages, backward, SGD step) on batches of the same size.
Prints loader/consumer ratios; goal >= 5x (the loader must never be what training waits for).
Without --shards it builds (or reuses) shards/fashion-mnist with `python -m data_shards`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cascade_dist.data import make_loader

REPO = Path(__file__).resolve().parents[1]


def ensure_shards(path: Path | None) -> Path:
    if path is not None:
        return path
    out = REPO / "shards" / "fashion-mnist"
    if not (out / "train" / "manifest.json").is_file():
        print(f"building {out} with `python -m data_shards fashion-mnist` ...", flush=True)
        subprocess.run([sys.executable, "-m", "data_shards", "fashion-mnist", "--out", str(out),
                        "--val-split", "5000"], check=True, cwd=REPO)
    return out


def loader_rate(shards: Path, backend: str, batch: int, batches: int, warmup: int, workers: int) -> float:
    loader = make_loader(shards, "train", batch, backend=backend, train=True, seed=0, num_workers=workers)
    need = warmup + batches
    epoch, seen, start, n_images = 0, 0, None, 0
    while seen < need:
        loader.set_epoch(epoch)
        for images, labels in loader:
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
            elif seen > warmup:
                n_images += images.shape[0]
            if seen >= need:
                break
        epoch += 1
    return n_images / (time.perf_counter() - start)


def consumer_rate(batch: int, steps: int, warmup: int) -> float:
    from cascade_dist.models import Cascade

    torch.manual_seed(0)
    model = Cascade(["preact_resnet8", "preact_resnet20"], num_classes=10, in_channels=1, image_size=28)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        out = model(images)
        k = out.log_probs.shape[1]
        loss = F.nll_loss(out.log_probs.reshape(-1, out.log_probs.shape[-1]), labels.repeat_interleave(k)) * k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="shard folder (default: build/reuse shards/fashion-mnist)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200, help="timed loader batches per backend")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps of the cascade")
    args = parser.parse_args()
    shards = ensure_shards(args.shards)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, batch {args.batch}")
    rates = {}
    for backend in ("dali", "torch"):
        rates[backend] = loader_rate(shards, backend, args.batch, args.batches, args.warmup, args.workers)
        print(f"loader {backend:5s}: {rates[backend]:9.0f} img/s  ({args.batches} batches of {args.batch}, "
              f"train augmentation, {args.workers} workers/threads)", flush=True)
    consumer = consumer_rate(args.batch, args.steps, warmup=2)
    print(f"cascade training step (preact_resnet8 -> preact_resnet20, fwd+bwd+SGD): {consumer:9.0f} img/s")
    for backend, rate in rates.items():
        verdict = "ok" if rate >= 5 * consumer else "below goal"
        print(f"ratio loader/consumer {backend:5s}: {rate / consumer:6.1f}x  (goal >= 5x: {verdict})")


if __name__ == "__main__":
    main()
