"""Helpers for the inference tests: an untrained cascade whose policies disagree, real images.

The images are real Fashion-MNIST, average-pooled to 14 px (and the cascade built for 14 px) so
that every stage costs a quarter of the 28 px one: the tests stay fast on a 2-core machine.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cascade_dist.data import make_loader
from cascade_dist.models import Cascade

NAMES = ["preact_resnet8", "preact_resnet14", "preact_resnet20"]
SIZE = 14


def spread_cascade(images: torch.Tensor, names=NAMES, seed: int = 0, spread: float = 40.0) -> Cascade:
    """An untrained cascade made to behave like a trained one on `images`: confident classifiers
    (last layer scaled up) and near-deterministic policies whose stop log-odds, centred on their
    median, spread over about `spread` units between the 10th and 90th percentiles, so that many π
    are exactly 1.0 in float32 while their log-odds still differ."""
    torch.manual_seed(seed)
    cascade = Cascade(names, num_classes=10, in_channels=1, image_size=images.shape[-1], policy_input="sorted_softmax")
    cascade.eval()
    with torch.no_grad():
        for clf in cascade.classifiers:
            clf.fc.weight.mul_(20.0)
        out = cascade(images)
        for t, policy in enumerate(cascade.policies):
            d = out.stop_log_odds[:, t].double()
            lo, mid, hi = d.quantile(torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
            last = policy.net[-1]
            last.weight.mul_(spread / (hi - lo))
            last.bias.mul_(spread / (hi - lo)).add_(torch.tensor([-1.0, 1.0]) * spread / (hi - lo) * mid / 2)
    return cascade


def pooled(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images, 28 // SIZE)


def load_split(shards: Path, split: str = "test", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a split (in order), pooled to 14 px, and the labels."""
    images, targets = [], []
    for x, y in make_loader(shards, split, 256, backend="torch", train=False, num_workers=0):
        images.append(pooled(x))
        targets.append(y)
    images, targets = torch.cat(images), torch.cat(targets)
    return (images[:limit], targets[:limit]) if limit else (images, targets)
