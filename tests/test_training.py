"""The training step and schedules, and a cascade that learns on real Fashion-MNIST."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cascade_dist.evaluate import EvalConfig, evaluate
from cascade_dist.models import Cascade
from cascade_dist.objective import ObjectiveConfig
from cascade_dist.training import LocalEngine, OptimConfig, build_optimizer, fit, train_epoch
from data_shards.idx import read_idx


def fashion_mnist_tensors(root, split: str, n: int) -> TensorDataset:
    """The first n images of a Fashion-MNIST split, read straight from its idx files."""
    prefix = "train" if split == "train" else "t10k"
    images = torch.from_numpy(read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[:n].copy())
    labels = torch.from_numpy(read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")[:n].astype("int64"))
    x = (images.float().div(255) - 0.2860) / 0.3530
    return TensorDataset(x[:, None], labels)


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


@pytest.fixture(scope="module")
def warm_cascade(fashion_mnist_dir):
    """ResNet-8 → ResNet-20 after a 2-epoch CE warm-up on 4,000 real Fashion-MNIST images, and the data."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train = DataLoader(fashion_mnist_tensors(fashion_mnist_dir, "train", 4000), batch_size=64, shuffle=True, generator=gen)
    test = DataLoader(fashion_mnist_tensors(fashion_mnist_dir, "test", 2000), batch_size=500)
    model = Cascade(["preact_resnet8", "preact_resnet20"], num_classes=10, in_channels=1, image_size=28)
    warm = fit(model, train, OptimConfig(warmup_epochs=2, joint_epochs=0, classifier_schedule="constant", classifier_lr=0.05), ObjectiveConfig(), progress=False)
    assert warm[-1]["phase"] == "warmup"
    return model, train, test


@pytest.mark.slow
def test_cascade_learns_on_fashion_mnist_and_cost_falls_with_alpha(warm_cascade):
    """Shared CE warm-up, then joint REINFORCE at two α: accurate, and cheaper at the larger α."""
    model, train, test = warm_cascade
    reports = {}
    for alpha in (0.0, 0.5):
        cascade = copy.deepcopy(model)
        joint = OptimConfig(warmup_epochs=0, joint_epochs=2, classifier_lr=0.01, policy_lr=0.1)
        fit(cascade, train, joint, ObjectiveConfig(alpha=alpha), generator=torch.Generator().manual_seed(1), progress=False)
        reports[alpha] = evaluate(cascade, test, cascade.macs, EvalConfig(tau=0.5))
        r = reports[alpha]
        print(f"\nalpha={alpha}: acc={r.accuracy:.3f} cost={r.cost_pct:.1f}% exits={[round(f, 2) for f in r.exit_fractions]} static={[round(a, 3) for a in r.static_accuracy]}")
    low, high = reports[0.0], reports[0.5]
    assert low.accuracy > 0.7 and high.accuracy > 0.7  # chance is 0.1
    assert high.cost_pct < low.cost_pct - 10
    assert high.exit_fractions[0] > 0.5  # a non-trivial share stops before the last stage


@pytest.mark.slow
def test_budget_mode_keeps_the_expected_cost_within_the_budget(warm_cascade):
    """Dual ascent on α (Ours (S), exact estimator): the expected training cost ends within its budget,
    close to it where the budget binds, and the test cost follows."""
    model, train, test = warm_cascade
    data = DataLoader(train.dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))
    runs = {}
    for budget in (50.0, 90.0):
        cascade = copy.deepcopy(model)
        torch.manual_seed(0)
        joint = OptimConfig(optimizer="adam", warmup_epochs=0, joint_epochs=3, freeze_classifiers=True, policy_lr=1e-3)
        objective = ObjectiveConfig(alpha=0.05, estimator="exact", budget=budget, dual_lr=0.02)
        last = fit(cascade, data, joint, objective, eval_loader=test, eval_config=EvalConfig(tau=0.5), progress=False)[-1]
        runs[budget] = last
        print(f"\nbudget={budget}: alpha_end={last['train']['alpha_end']:.4f} expected={100 * last['train']['expected_cost']:.1f}% "
              f"test cost={last['eval'].cost_pct:.1f}% acc={last['eval'].accuracy:.3f}")
        assert 100 * last["train"]["expected_cost"] <= budget + 5
    assert 100 * runs[90.0]["train"]["expected_cost"] > 80  # the loose budget binds: α > 0 holds it there
    assert runs[90.0]["train"]["alpha_end"] > 0
    assert runs[50.0]["eval"].cost_pct < runs[90.0]["eval"].cost_pct - 15
    assert runs[50.0]["eval"].accuracy > 0.7
