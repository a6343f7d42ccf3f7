"""The training step and schedules (single process, real Fashion-MNIST batches)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from real_data import fashion_mnist_tensors
from torch.utils.data import DataLoader

from cascade_dist.method.models import Cascade
from cascade_dist.method.objective import ObjectiveConfig
from cascade_dist.method.training import LocalEngine, OptimConfig, build_optimizer, train_epoch


def test_policy_schedule_is_paper_decay_after_warmup():
    cfg = OptimConfig(warmup_epochs=2, joint_epochs=10, policy_lr=0.1)
    factors = [cfg.policy_lr_factor(e) for e in range(12)]
    assert factors[:2] == [0.0, 0.0]
    assert factors[2:6] == [1.0] * 4 and factors[6:10] == [0.9] * 4 and factors[10:] == [pytest.approx(0.81)] * 2


def test_lambda_lr_drives_two_param_groups():
    model = Cascade(["preact_resnet8", "preact_resnet14"], num_classes=10, in_channels=1, image_size=28)
    cfg = OptimConfig(warmup_epochs=1, joint_epochs=5, classifier_lr=0.2, policy_lr=0.1, policy_lr_decay_every=2)
    optimizer, scheduler = build_optimizer(model, cfg)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()  # no gradients: a no-op, in the order torch expects
        scheduler.step()
    assert [g["name"] for g in optimizer.param_groups] == ["classifiers", "policies"]
    assert lrs[0] == [0.2, 0.0]
    assert [p for _, p in lrs[1:]] == pytest.approx([0.1, 0.1, 0.09, 0.09, 0.081])
    assert all(a > b for (a, _), (b, _) in zip(lrs, lrs[1:]))  # cosine decay


def test_the_classifiers_cosine_moves_every_step_and_reaches_zero(fashion_mnist_dir):
    """Within an epoch the LR follows the cosine at epoch + step/steps (timm's per-update schedule),
    so a short run ends near 0, not at the last epoch's start value (0.25 after 3 epoch-wise steps)."""
    data = DataLoader(fashion_mnist_tensors(fashion_mnist_dir, "train", 256), batch_size=32)  # 8 steps
    model = Cascade(["preact_resnet8", "preact_resnet14"], num_classes=10, in_channels=1, image_size=28)
    cfg = OptimConfig(warmup_epochs=2, joint_epochs=0, classifier_lr=0.1)
    optimizer, scheduler = build_optimizer(model, cfg)
    seen = []
    step = optimizer.step
    optimizer.step = lambda *a, **k: (seen.append(optimizer.param_groups[0]["lr"]), step(*a, **k))[1]
    for epoch in range(cfg.epochs):
        train_epoch(LocalEngine(model, optimizer), data, epoch, cfg, ObjectiveConfig(), progress=False,
                    scheduler=scheduler)
        scheduler.step()
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * (e + i / 8) / 2)) for e in range(2) for i in range(8)]
    assert seen == pytest.approx(expected)
    assert seen[-1] < 0.002 and optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_adam_option_keeps_the_two_groups():
    model = Cascade(["preact_resnet8", "preact_resnet14"], num_classes=10, in_channels=1, image_size=28)
    optimizer, _ = build_optimizer(model, OptimConfig(optimizer="adam", classifier_lr=1e-3, policy_lr=1e-2))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["name"] for g in optimizer.param_groups] == ["classifiers", "policies"]


def test_bad_optim_config():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        OptimConfig(optimizer="lion")
    with pytest.raises(ValueError, match="policy_lr must be >= 0"):
        OptimConfig(policy_lr=-1)
    with pytest.raises(ValueError, match="classifier_schedule"):
        OptimConfig(classifier_schedule="step")


def test_ours_s_freezes_classifiers_and_trains_policies(fashion_mnist_dir):
    torch.manual_seed(0)
    data = DataLoader(fashion_mnist_tensors(fashion_mnist_dir, "train", 256), batch_size=64)
    model = Cascade(["preact_resnet8", "preact_resnet14"], num_classes=10, in_channels=1, image_size=28)
    cfg = OptimConfig(warmup_epochs=0, joint_epochs=1, freeze_classifiers=True)
    optimizer, _ = build_optimizer(model, cfg)
    before = copy.deepcopy(model.state_dict())
    train_epoch(LocalEngine(model, optimizer), data, 0, cfg, ObjectiveConfig(alpha=0.1), progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("classifiers."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("policies."))


class _Part:
    """An epoch's batches [start, stop) (a run killed at `stop`, or resumed at `start` as
    `Loader.set_epoch(e, start_batch)`): its length is the whole epoch's."""

    def __init__(self, batches, start=0, stop=None):
        self.batches, self.start, self.stop = batches, start, stop

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches[self.start:self.stop])


def test_an_epoch_resumed_from_its_progress_ends_where_the_whole_epoch_does(fashion_mnist_dir):
    """Training stopped after step 3 and resumed from the `EpochProgress` that `on_step` handed out:
    the same weights, LRs and epoch means as the epoch trained in one go."""
    batches = list(DataLoader(fashion_mnist_tensors(fashion_mnist_dir, "train", 256), batch_size=32))  # 8 steps
    cfg = OptimConfig(warmup_epochs=1, joint_epochs=0, classifier_lr=0.1)

    def build():
        torch.manual_seed(0)
        model = Cascade(["preact_resnet8", "preact_resnet14"], num_classes=10, in_channels=1, image_size=28)
        optimizer, scheduler = build_optimizer(model, cfg)
        return model, LocalEngine(model, optimizer), scheduler

    model, engine, scheduler = build()
    whole = train_epoch(engine, batches, 0, cfg, ObjectiveConfig(), progress=False, scheduler=scheduler)

    resumed_model, engine, scheduler = build()
    saved = []
    train_epoch(engine, _Part(batches, stop=3), 0, cfg, ObjectiveConfig(), progress=False, scheduler=scheduler,
                on_step=saved.append)
    assert [p.steps for p in saved] == [1, 2, 3] and saved[-1].seen == 96
    lrs = []
    step = engine.optimizer.step
    engine.optimizer.step = lambda *a, **k: (lrs.append(engine.optimizer.param_groups[0]["lr"]), step(*a, **k))[1]
    rest = train_epoch(engine, _Part(batches, start=3), 0, cfg, ObjectiveConfig(), progress=False,
                       scheduler=scheduler, position=saved[-1])
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * (i / 8))) for i in range(3, 8)])
    assert rest["images"] == whole["images"] == 256
    assert {k: rest[k] for k in ("loss", "ce")} == pytest.approx({k: whole[k] for k in ("loss", "ce")}, rel=1e-6)
    for (name, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
