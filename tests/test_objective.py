"""Objectives: REINFORCE is unbiased for the exact gradient, baselines only cut variance, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cascade_dist.models import StoppingPolicy
from cascade_dist.objective import (
    CostBudget,
    ObjectiveConfig,
    cascade_loss,
    exit_distribution,
    global_baseline,
    reward,
    score_sq_norm,
    warmup_loss,
)

N, D, C, K = 2048, 6, 5, 3
ROLLOUTS = 600
ALPHA = 0.3


class TinyCascade(nn.Module):
    """A fixed random cascade of linear classifiers with the real stopping policies."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.classifiers = nn.ModuleList(nn.Linear(D, C) for _ in range(K))
        self.policies = nn.ModuleList(StoppingPolicy(C, hidden=8) for _ in range(K - 1))
        for p in self.parameters():
            nn.init.normal_(p, std=0.8)

    def forward(self, x):
        log_probs = torch.stack([torch.log_softmax(c(x), -1) for c in self.classifiers], 1)
        stops = [p(log_probs[:, t].exp())[:, 0].exp() for t, p in enumerate(self.policies)]
        return log_probs, torch.stack([*stops, torch.ones(len(x))], 1)


@pytest.fixture(scope="module")
def setup():
    model = TinyCascade()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=gen)
    y = torch.randint(0, C, (N,), generator=gen)
    costs = torch.tensor([0.2, 0.5, 1.0])
    params = [p for p in model.parameters()]
    log_probs, stop_probs = model(x)
    exact_loss, _ = cascade_loss(log_probs, stop_probs, y, costs, ALPHA, estimator="exact")
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_loss, params)])
    return model, x, y, costs, params, exact


def rollout_gradients(setup, baseline: str) -> torch.Tensor:
    """(ROLLOUTS, P) gradients of the REINFORCE surrogate, one independent rollout each."""
    model, x, y, costs, params, _ = setup
    log_probs, stop_probs = model(x)
    gen = torch.Generator().manual_seed({"none": 11, "mean": 12, "optimal": 13}[baseline])
    grads = []
    for _ in range(ROLLOUTS):
        loss, _ = cascade_loss(log_probs, stop_probs, y, costs, ALPHA, baseline=baseline, generator=gen)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)]))
    return torch.stack(grads)


@pytest.fixture(scope="module")
def rollouts(setup):
    return {b: rollout_gradients(setup, b) for b in ("none", "mean", "optimal")}


@pytest.mark.parametrize("baseline", ["none", "mean", "optimal"])
def test_reinforce_mean_gradient_matches_exact(setup, rollouts, baseline):
    """Mean REINFORCE gradient = exact gradient within standard errors, policy and classifier params.

    The batch baselines include the sample itself, a bias of O(1/N) = 0.05 % here: far below the SE.
    """
    exact = setup[5]
    grads = rollouts[baseline]
    se = grads.std(0) / ROLLOUTS**0.5
    z = (grads.mean(0) - exact) / se.clamp_min(1e-12)
    n_cls = sum(p.numel() for p in setup[0].classifiers.parameters())
    for part, zz in (("classifiers", z[:n_cls]), ("policies", z[n_cls:])):
        assert zz.abs().max() < 5.0, f"{baseline}/{part}: max |z| = {zz.abs().max():.2f}"
        assert zz.square().mean() < 1.6, f"{baseline}/{part}: mean z^2 = {zz.square().mean():.2f}"
    # the check has power: the gradient is far from zero in units of the standard error
    live = se > 0
    assert (exact[live].abs() / se[live]).median() > 5


def test_expected_gradient_does_not_depend_on_baseline(rollouts):
    base = rollouts["none"]
    for other in ("mean", "optimal"):
        diff = base.mean(0) - rollouts[other].mean(0)
        se = (base.var(0) / ROLLOUTS + rollouts[other].var(0) / ROLLOUTS).sqrt()
        z = diff / se.clamp_min(1e-12)
        assert z.abs().max() < 5.0 and z.square().mean() < 1.6, other


def test_optimal_baseline_reduces_variance(rollouts):
    total = {b: g.var(0).sum().item() for b, g in rollouts.items()}
    ratio_opt, ratio_mean = total["optimal"] / total["none"], total["mean"] / total["none"]
    print(f"\ngradient variance ratio optimal/none = {ratio_opt:.4f}, mean/none = {ratio_mean:.4f}")
    assert ratio_opt < 0.5
    assert ratio_opt <= ratio_mean * 1.05


def test_score_norm_matches_autograd():
    """g_i of the optimal baseline equals the squared norm of ∂s_i/∂(policy and classifier logits)."""
    torch.manual_seed(3)
    pol_logits = torch.randn(4, K - 1, 2, requires_grad=True)
    cls_logits = torch.randn(4, K, C, requires_grad=True)
    log_pi = torch.log_softmax(pol_logits, -1)
    stop = torch.cat([log_pi[..., 0].exp(), torch.ones(4, 1)], 1)
    exits, sampled = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 4, 3])
    lp = torch.log_softmax(cls_logits, -1)
    expect = score_sq_norm(stop.detach(), exits, lp[torch.arange(4), exits].exp().detach(), sampled)
    for i in range(4):
        k = int(exits[i])
        s = log_pi[i, :k, 1].sum() + (log_pi[i, k, 0] if k < K - 1 else 0) + lp[i, k, sampled[i]]
        gp, gc = torch.autograd.grad(s, [pol_logits, cls_logits], retain_graph=True)
        assert torch.isclose(gp.square().sum() + gc.square().sum(), expect[i], atol=1e-5)


def test_baseline_sums_go_through_all_reduce():
    """The baseline is a ratio of all-reduced sums: two workers' halves give the global value."""
    rewards, weights = torch.tensor([-1.0, 0.0, -0.5, -0.2]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    whole = global_baseline(rewards, weights, lambda t: t)
    other = torch.stack([(weights[2:] * rewards[2:]).sum(), weights[2:].sum()])
    half = global_baseline(rewards[:2], weights[:2], lambda t: t + other)
    assert torch.isclose(whole, half)
    assert torch.isclose(whole, (weights * rewards).sum() / weights.sum())


def test_exact_objective_is_expected_reward():
    """J = Σ_k Π(k|x) (C_k(y|x) − 1 − α cum_k), checked by enumeration on one example."""
    log_probs = torch.log_softmax(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), -1)
    stop = torch.tensor([[0.3, 1.0]])
    costs, y = torch.tensor([0.25, 1.0]), torch.tensor([1])
    loss, stats = cascade_loss(log_probs, stop, y, costs, 0.5, estimator="exact")
    p = log_probs.exp()[0, :, 1]
    expected = 0.3 * (p[0] - 1 - 0.5 * 0.25) + 0.7 * (p[1] - 1 - 0.5 * 1.25)
    assert torch.isclose(-loss, expected)
    assert stats["expected_cost"] == pytest.approx(0.3 * 0.25 + 0.7 * 1.25)


def test_exit_distribution_and_reward():
    stop = torch.tensor([[0.5, 0.2, 1.0], [1.0, 0.5, 1.0]])
    pi = exit_distribution(stop)
    assert torch.allclose(pi, torch.tensor([[0.5, 0.1, 0.4], [1.0, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(reward(torch.tensor([-1.0, 0.0]), torch.tensor([0.5, 2.0]), 0.1), torch.tensor([-1.05, -0.2]))


def test_topk_reward_uses_topk_miss():
    log_probs = torch.log_softmax(torch.arange(20.0).repeat(8, 2, 1), -1)  # class 19 best, then 18, ...
    stop = torch.tensor([[1.0, 1.0]]).repeat(8, 1)
    targets = torch.tensor([19, 15, 14, 0, 19, 15, 14, 0])
    _, stats = cascade_loss(log_probs, stop, targets, torch.tensor([0.5, 1.0]), 0.0, topk=5)
    assert stats["error"] == pytest.approx(0.5)  # 14 and 0 are outside the top 5


def test_warmup_loss_is_sum_of_stage_cross_entropies():
    torch.manual_seed(0)
    log_probs, y = torch.log_softmax(torch.randn(6, 3, 4), -1), torch.randint(0, 4, (6,))
    expect = sum(nn.functional.nll_loss(log_probs[:, t], y) for t in range(3))
    assert torch.isclose(warmup_loss(log_probs, y), expect)


GOOD = dict(
    log_probs=torch.log_softmax(torch.randn(4, 3, 5), -1),
    stop_probs=torch.tensor([[0.5, 0.5, 1.0]]).repeat(4, 1),
    targets=torch.zeros(4, dtype=torch.long),
    costs=torch.tensor([0.1, 0.3, 1.0]),
    alpha=0.1,
)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(alpha=-0.1), "alpha must be >= 0"),
        (dict(stop_probs=torch.full((4, 3), 0.5)), "last stage always stops"),
        (dict(targets=torch.zeros(3, dtype=torch.long)), "targets must be"),
        (dict(costs=torch.ones(2)), "costs must be"),
        (dict(stop_probs=torch.ones(4, 2)), "stop_probs must be"),
        (dict(log_probs=torch.zeros(4, 5)), "log_probs must be"),
        (dict(log_probs=torch.zeros(4, 1, 5), stop_probs=torch.ones(4, 1), costs=torch.ones(1)), "K >= 2"),
        (dict(estimator="ppo"), "estimator must be one of"),
        (dict(baseline="median"), "baseline must be one of"),
        (dict(topk=6), "topk=6 exceeds"),
    ],
)
def test_bad_arguments_raise_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        cascade_loss(**{**GOOD, **change})


def test_cost_budget_dual_ascent_moves_alpha_with_the_global_expected_cost():
    budget = CostBudget(alpha=0.01, budget_pct=50, lr=0.1)
    assert budget.step(expected_cost=0.8, count=10) == pytest.approx(0.01 + 0.1 * 0.3)  # over budget: α up
    assert budget.step(expected_cost=0.2, count=10) == pytest.approx(0.01)               # under: α down
    assert budget.step(expected_cost=0.0, count=10) == 0.0                               # never below 0
    # two workers: the other holds 30 images at cost 1.0, so the global mean is (10·0.2 + 30·1.0)/40 = 0.8
    other = torch.tensor([30 * 1.0, 30.0], dtype=torch.float64)
    budget.alpha = 0.0
    assert budget.step(0.2, 10, all_reduce=lambda t: t + other) == pytest.approx(0.1 * (0.8 - 0.5))


def test_budget_config_is_checked():
    with pytest.raises(ValueError, match="budget"):
        ObjectiveConfig(budget=0)
    with pytest.raises(ValueError, match="dual_lr"):
        ObjectiveConfig(budget=40, dual_lr=0)
