"""Loader throughput (DALI and webdataset + DataLoader): beside the demo cascade's training rate,
and on ImageNet-like JPEGs with the ImageNet transforms.

    python benchmarks/loader_throughput.py [--cases fashion jpeg] [--shards shards/fashion-mnist]
        [--batch 256] [--batches 200] [--jpeg-images 1000] [--jpeg-batch 64] [--jpeg-batches 15]

In one run on the same machine:

* `fashion`: images/s of each loader backend over the Fashion-MNIST train shards with the training
  augmentation (pad 2 + random 28x28 crop + flip, normalised), after a warm-up, and images/s of a
  training step of the demo cascade (preact ResNet-8 -> ResNet-20: forward, cross-entropy summed
  over stages, backward, SGD step) on batches of the same size. Prints loader/consumer ratios;
  goal >= 5x (the loader must never be what training waits for). Without --shards it builds (or
  reuses) shards/fashion-mnist with `python -m data_shards`.
* `jpeg`: real CIFAR-10 images (../shared/data/cifar10-subset) upscaled (bicubic) to 400x350 RGB
  and saved as JPEG quality 90, written as shards by `data_shards` (the `folder` source, which keeps
  the JPEG bytes: shards/cifar10-jpeg-400x350, reused). DALI on the CPU (`device_id=None`) beside
  the torch backend (PIL decode + torchvision v2), both with the ImageNet training transform
  (random-resized crop 224 + flip; DALI fuses the crop into the decode) and the evaluation
  transform (resize the shorter side to 256 + centre crop 224). Prints DALI/torch ratios.

Measured on a 2-core CPU (no GPU), 2 DataLoader workers / DALI threads, torch threads 2, while
other jobs shared the machine (noisy), `python benchmarks/loader_throughput.py` (the default run),
jpeg case (1,000 JPEGs of ~17 KB, batch 64, 15 timed batches after 3), 2026-12-03, load average ~2.8:

| transform | DALI CPU img/s | torch (PIL) img/s | DALI / torch |
|---|---:|---:|---:|
| train: random-resized crop 224 + flip | 966 | 336 | 2.88x |
| eval: resize 256 + centre crop 224 | 949 | 332 | 2.86x |

(Same run, `fashion` case: DALI 24,363 and torch 4,941 img/s against the cascade's 347 img/s training
step: 70.2x and 14.2x. Whole default run 82 s, of which 30 s built shards/fashion-mnist and a few
seconds the JPEG shards. Upscaled 32x32 images compress better than photographs: ~17 KB per JPEG
here against ~110 KB for an ILSVRC image, so real ImageNet decodes slower in both backends.)
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


def jpeg_shards(cifar_tarball: Path, out: Path, n: int, size=(400, 350), quality: int = 90) -> Path:
    """Shards of the first `n` CIFAR-10 training images as size[0]xsize[1] JPEGs (reused when present)."""
    import io
    import tempfile

    from PIL import Image

    from data_shards.convert import convert
    from data_shards.sources.cifar import open_cifar10

    if (out / "train" / "manifest.json").is_file():
        return out
    print(f"building {out} ({n} CIFAR-10 images -> {size[0]}x{size[1]} JPEG q{quality}) ...", flush=True)
    source = open_cifar10(cifar_tarball)
    train = source.splits["train"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            sample = train.load(i)
            folder = Path(tmp) / source.class_names[sample.label]
            folder.mkdir(exist_ok=True)
            big = Image.fromarray(sample.image).resize(size, Image.BICUBIC)
            buf = io.BytesIO()
            big.save(buf, "JPEG", quality=quality)
            (folder / f"{i:05d}.jpg").write_bytes(buf.getvalue())
        convert("folder", tmp, out, name="cifar10-jpeg", shard_size=256, log=lambda *_: None)
    return out


def loader_rate(shards: Path, backend: str, batch: int, batches: int, warmup: int, workers: int,
                train: bool = True) -> float:
    """Images/s of one backend over the train split with the training (or, `train=False`, evaluation)
    transform, timed over `batches` batches after `warmup`."""
    loader = make_loader(shards, "train", batch, backend=backend, train=train, seed=0, num_workers=workers)
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


def fashion_case(args) -> None:
    shards = ensure_shards(args.shards)
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


def jpeg_case(args) -> None:
    shards = jpeg_shards(args.cifar10, REPO / "shards" / "cifar10-jpeg-400x350", args.jpeg_images)
    tars = sorted((shards / "train").glob("*.tar"))
    kb = sum(t.stat().st_size for t in tars) / args.jpeg_images / 1024
    print(f"ImageNet-like JPEGs: {args.jpeg_images} images, ~{kb:.0f} KB each (tar bytes per image), "
          f"batch {args.jpeg_batch}, {args.jpeg_batches} timed batches, {args.workers} workers/threads")
    print("| transform | DALI CPU img/s | torch (PIL) img/s | DALI / torch |\n|---|---:|---:|---:|")
    for train, name in ((True, "train: random-resized crop 224 + flip"), (False, "eval: resize 256 + centre crop 224")):
        dali, torch_ = (loader_rate(shards, b, args.jpeg_batch, args.jpeg_batches, 3, args.workers, train=train)
                        for b in ("dali", "torch"))
        print(f"| {name} | {dali:.0f} | {torch_:.0f} | {dali / torch_:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=("fashion", "jpeg"), default=["fashion", "jpeg"])
    parser.add_argument("--shards", type=Path, help="shard folder (default: build/reuse shards/fashion-mnist)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200, help="timed loader batches per backend")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps of the cascade")
    parser.add_argument("--cifar10", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-subset" /
                        "cifar-10-subset-python.tar.gz", help="CIFAR-10 python tarball the JPEGs are made from")
    parser.add_argument("--jpeg-images", type=int, default=1000)
    parser.add_argument("--jpeg-batch", type=int, default=64)
    parser.add_argument("--jpeg-batches", type=int, default=15, help="timed batches per backend and transform")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    if "fashion" in args.cases:
        fashion_case(args)
    if "jpeg" in args.cases:
        jpeg_case(args)


if __name__ == "__main__":
    main()
