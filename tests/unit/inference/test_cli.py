"""`predict`'s pass over a split: early exit only (each stage sees only the images still going),
unless --dense asks for the Figure-4 pass; top-k counted with the run's k."""

from __future__ import annotations

import pytest
import torch
from cascade_fixtures import load_split, spread_cascade

from cascade_dist.inference.cli import predict_split
from cascade_dist.inference.predictor import CascadePredictor


class CountingStages:
    """A cascade that counts the images each stage runs on (the real cascade does the work)."""

    def __init__(self, cascade):
        self.cascade, self.seen = cascade, [0] * cascade.num_stages
        self.names, self.num_classes, self.macs = cascade.names, cascade.num_classes, cascade.macs
        self.num_stages, self.device = cascade.num_stages, torch.device("cpu")

    def run_stage(self, t, images):
        self.seen[t] += len(images)
        return self.cascade.run_stage(t, images)


@pytest.fixture(scope="module")
def data(small_fashion_mnist_shards):
    images, targets = load_split(small_fashion_mnist_shards, "test", 256)
    return spread_cascade(images).eval(), images, targets


def batches(images, targets, size=64):
    return [(images[i:i + size], targets[i:i + size]) for i in range(0, len(images), size)]


def test_without_dense_each_stage_runs_only_on_the_images_still_going(data):
    cascade, images, targets = data
    runner = CountingStages(cascade)
    split = predict_split(CascadePredictor(runner, tau=0.5), batches(images, targets), 1)
    going = [int((split.exit_stage >= t).sum()) for t in range(runner.num_stages)]
    assert runner.seen == going and going[-1] < len(images)  # no dense pass: the skipped stages cost nothing
    assert split.report is None and split.mismatches is None

    runner = CountingStages(cascade)
    dense = predict_split(CascadePredictor(runner, tau=0.5), batches(images, targets), 1, dense=True)
    assert runner.seen == [g + len(images) for g in going]  # the dense pass adds every stage on every image
    assert dense.mismatches == {"exit": 0, "prediction": 0}
    assert dense.report.accuracy == pytest.approx(float(split.hit.double().mean()))
    assert torch.equal(dense.predictions, split.predictions)


def test_hits_are_top_k_of_the_cascade_answer(data):
    cascade, images, targets = data
    predictor = CascadePredictor(cascade, tau=0.5)
    top1 = predict_split(predictor, batches(images, targets), 0, topk=1)
    top3 = predict_split(predictor, batches(images, targets), 0, topk=3, dense=True)
    probs = predictor(images).probs
    rank = (probs > probs.gather(1, targets[:, None])).sum(1)
    assert torch.equal(top1.hit, rank < 1) and torch.equal(top3.hit, rank < 3)
    assert top3.report.topk == 3 and top3.report.accuracy == pytest.approx(float((rank < 3).double().mean()))
    assert set(top1.__dict__) >= {"predictions", "exit_stage", "macs", "targets", "hit"}
    assert all(v.dim() == 1 for v in (top1.predictions, top1.exit_stage, top1.macs, top1.hit))  # O(N), not (N, K, C)
