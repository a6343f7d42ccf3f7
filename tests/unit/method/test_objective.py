"""Objectives: REINFORCE is unbiased for the exact gradient (top-1 and top-k), baselines only cut
variance, the saturation guard, numerics in float32 and bfloat16, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cascade_dist.method.estimators import global_baseline, policy_score_sq_norm, subset_score_sq_norm
from cascade_dist.method.models import CascadeOutput, StoppingPolicy
from cascade_dist.method.objective import CostBudget, ObjectiveConfig, cascade_loss, exit_distribution, reward, warmup_loss

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

    def forward(self, x) -> CascadeOutput:
        log_probs = torch.stack([torch.log_softmax(c(x), -1) for c in self.classifiers], 1)
        return outputs(log_probs, [p(log_probs[:, t].exp()) for t, p in enumerate(self.policies)])


def outputs(log_probs: torch.Tensor, log_pis: list[torch.Tensor]) -> CascadeOutput:
    """A CascadeOutput from the classifiers' log-softmaxes and the policies' (N, 2) log-softmaxes."""
    n = log_probs.shape[0]
    log_stop = torch.stack([*[lp[:, 0] for lp in log_pis], torch.zeros(n)], 1)
    log_continue = torch.stack([*[lp[:, 1] for lp in log_pis], torch.full((n,), -float("inf"))], 1)
    return CascadeOutput(log_probs, log_stop, log_continue)


def from_stop_probs(log_probs: torch.Tensor, stop: torch.Tensor) -> CascadeOutput:
    """A CascadeOutput from given stop probabilities (the last column 1), for constructed examples."""
    return CascadeOutput(log_probs, stop.log(), torch.log1p(-stop))


@pytest.fixture(scope="module")
def setup():
    model = TinyCascade()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=gen)
    y = torch.randint(0, C, (N,), generator=gen)
    costs = torch.tensor([0.2, 0.5, 1.0])
    params = [p for p in model.parameters()]
    exact_loss, _ = cascade_loss(model(x), y, costs, ALPHA, estimator="exact")
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_loss, params)])
    return model, x, y, costs, params, exact


def rollout_gradients(setup, baseline: str) -> torch.Tensor:
    """(ROLLOUTS, P) gradients of the REINFORCE surrogate, one independent rollout each."""
    model, x, y, costs, params, _ = setup
    out = model(x)
    gen = torch.Generator().manual_seed({"none": 11, "mean": 12, "optimal": 13}[baseline])
    grads = []
    for _ in range(ROLLOUTS):
        loss, _ = cascade_loss(out, y, costs, ALPHA, baseline=baseline, generator=gen)
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
    expect = (policy_score_sq_norm(stop.detach(), exits)
              + subset_score_sq_norm(lp[torch.arange(4), exits].detach(), sampled[:, None]))
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
    loss, stats = cascade_loss(from_stop_probs(log_probs, stop), y, costs, 0.5, estimator="exact")
    p = log_probs.exp()[0, :, 1]
    expected = 0.3 * (p[0] - 1 - 0.5 * 0.25) + 0.7 * (p[1] - 1 - 0.5 * 1.25)
    assert torch.isclose(-loss, expected)
    assert stats["expected_cost"] == pytest.approx(0.3 * 0.25 + 0.7 * 1.25)


def test_exit_distribution_and_reward():
    stop = torch.tensor([[0.5, 0.2, 1.0], [1.0, 0.5, 1.0]])
    pi = exit_distribution(stop.log(), torch.log1p(-stop))
    assert torch.allclose(pi, torch.tensor([[0.5, 0.1, 0.4], [1.0, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(reward(torch.tensor([-1.0, 0.0]), torch.tensor([0.5, 2.0]), 0.1), torch.tensor([-1.05, -0.2]))


def test_topk_reward_uses_topk_miss():
    log_probs = torch.log_softmax(torch.arange(20.0).repeat(8, 2, 1), -1)  # class 19 best, then 18, ...
    stop = torch.tensor([[1.0, 1.0]]).repeat(8, 1)
    targets = torch.tensor([19, 15, 14, 0, 19, 15, 14, 0])
    log_probs = torch.log_softmax(100 * torch.arange(20.0).repeat(8, 2, 1), -1)  # a confident ranking
    _, stats = cascade_loss(from_stop_probs(log_probs, stop), targets, torch.tensor([0.5, 1.0]), 0.0, topk=5)
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


def loss_of(log_probs, stop_probs, **kw):
    return cascade_loss(from_stop_probs(log_probs, stop_probs), **kw)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(alpha=-0.1), "alpha must be >= 0"),
        (dict(stop_probs=torch.full((4, 3), 0.5)), "last stage always stops"),
        (dict(targets=torch.zeros(3, dtype=torch.long)), "targets must be"),
        (dict(costs=torch.ones(2)), "costs must be"),
        (dict(stop_probs=torch.ones(4, 2)), "log_stop must be"),
        (dict(log_probs=torch.zeros(4, 5)), "log_probs must be"),
        (dict(log_probs=torch.zeros(4, 1, 5), stop_probs=torch.ones(4, 1), costs=torch.ones(1)), "K >= 2"),
        (dict(estimator="ppo"), "estimator must be one of"),
        (dict(baseline="median"), "baseline must be one of"),
        (dict(topk=6), "topk=6 exceeds"),
    ],
)
def test_bad_arguments_raise_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        loss_of(**{**GOOD, **change})


def test_cost_budget_dual_ascent_moves_alpha_with_the_global_expected_cost():
    budget = CostBudget(alpha=0.01, budget_pct=50, lr=0.1)
    assert budget.step(expected_cost=0.8, count=10) == pytest.approx(0.01 + 0.1 * 0.3)  # over budget: α up
    assert budget.step(expected_cost=0.2, count=10) == pytest.approx(0.01)               # under: α down
    assert budget.step(expected_cost=0.0, count=10) == 0.0                               # never below 0
    # two workers: the other holds 30 images at cost 1.0, so the global mean is (10·0.2 + 30·1.0)/40 = 0.8
    other = torch.tensor([30 * 1.0, 30.0], dtype=torch.float64)
    budget = CostBudget(alpha=0.0, budget_pct=50, lr=0.1)
    assert budget.step(0.2, 10, all_reduce=lambda t: t + other) == pytest.approx(0.1 * (0.8 - 0.5))


def test_cost_budget_proportional_term_answers_at_once_and_leaves_the_integral_alone():
    budget = CostBudget(alpha=0.05, budget_pct=50, lr=0.1, kp=0.5)
    assert budget.step(expected_cost=0.7, count=10) == pytest.approx(0.05 + 0.1 * 0.2 + 0.5 * 0.2)
    assert budget.integral == pytest.approx(0.05 + 0.1 * 0.2)
    # back on budget: the proportional part is gone at once, the integral keeps what it learnt
    assert budget.step(expected_cost=0.5, count=10) == pytest.approx(0.07)
    # far under budget: α clamps at 0 while the integral stays positive
    assert budget.step(expected_cost=0.3, count=10) == 0.0 and budget.integral == pytest.approx(0.05)


def test_budget_config_is_checked():
    with pytest.raises(ValueError, match="budget"):
        ObjectiveConfig(budget=0)
    with pytest.raises(ValueError, match="dual_lr"):
        ObjectiveConfig(budget=40, dual_lr=0)
    with pytest.raises(ValueError, match="dual_kp"):
        ObjectiveConfig(budget=40, dual_kp=-1)


# ---- top-k: the classifiers' REINFORCE term (Plackett–Luce k-subsets) ---------------------------------

TOPK = 2


def exact_topk_objective(out: CascadeOutput, y, costs, alpha) -> torch.Tensor:
    """J by enumeration, independently of the estimator code: Σ_k Π(k|x) Σ_σ P(σ | C_k) (−L(σ) − α cum_k)
    over every ordered pair σ of distinct classes, P(σ) = q_a · q_b / (1 − q_a) (Plackett–Luce)."""
    q = out.log_probs.exp()  # (N, K, C)
    exit_p = exit_distribution(out.log_stop, out.log_continue)
    cum = costs.cumsum(0)
    total = torch.zeros(len(y))
    for a in range(C):
        for b in range(C):
            if a == b:
                continue
            p_sigma = q[:, :, a] * q[:, :, b] / (1 - q[:, :, a])  # (N, K)
            hit = ((y == a) | (y == b)).float()[:, None]
            total = total + (exit_p * p_sigma * (hit - 1 - alpha * cum)).sum(1)
    return total.mean()


@pytest.fixture(scope="module")
def topk_rollouts(setup):
    model, x, y, costs, params, _ = setup
    out = model(x)
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(-exact_topk_objective(out, y, costs, ALPHA), params,
                                                                retain_graph=True)])
    gen = torch.Generator().manual_seed(21)
    grads = []
    for _ in range(ROLLOUTS):
        loss, _ = cascade_loss(out, y, costs, ALPHA, baseline="optimal", generator=gen, topk=TOPK)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)]))
    return torch.stack(grads), exact


def test_topk_reinforce_is_unbiased_for_the_enumerated_gradient(setup, topk_rollouts):
    """With top-k rewards the classifiers get a gradient, and its mean is the exact gradient of the
    top-k objective (enumerated over every ordered k-subset), within standard errors: per component,
    and along the exact gradient's direction of each part (the components of one part are strongly
    correlated, so their mean z² is not a sharp statistic; the projection is)."""
    grads, exact = topk_rollouts
    se = grads.std(0) / ROLLOUTS**0.5
    z = (grads.mean(0) - exact) / se.clamp_min(1e-12)
    assert z.abs().max() < 5.0, f"max |z| = {z.abs().max():.2f}"
    n_cls = sum(p.numel() for p in setup[0].classifiers.parameters())
    for part, sl in (("classifiers", slice(0, n_cls)), ("policies", slice(n_cls, None))):
        u = exact[sl] / exact[sl].norm()
        proj = grads[:, sl] @ u  # each rollout's gradient along the exact direction
        z_proj = (proj.mean() - exact[sl].norm()) / (proj.std() / ROLLOUTS**0.5)
        assert abs(z_proj) < 4.0, f"{part}: projection z = {z_proj:.2f}"
        assert exact[sl].norm() / (proj.std() / ROLLOUTS**0.5) > 10  # power: far from 0 in SEs
    assert exact[:n_cls].abs().max() > 1e-3  # the classifiers' top-k gradient is not zero


def test_subset_score_norm_matches_autograd():
    """The optimal baseline's classifier score norm for an ordered k-subset equals autograd's."""
    from cascade_dist.method.estimators import subset_log_prob

    torch.manual_seed(4)
    logits = torch.randn(5, 7, requires_grad=True)
    lp = torch.log_softmax(logits, -1)
    subset = torch.stack([torch.randperm(7)[:3] for _ in range(5)])
    expect = subset_score_sq_norm(lp.detach(), subset)
    for i in range(5):
        (g,) = torch.autograd.grad(subset_log_prob(lp[i:i + 1], subset[i:i + 1]).sum(), logits, retain_graph=True)
        assert torch.isclose(g.square().sum(), expect[i], atol=1e-5)
    # and log P(σ) is the Plackett–Luce probability: Σ over all ordered 2-subsets of 4 classes is 1
    lp4 = torch.log_softmax(torch.randn(1, 4), -1)
    pairs = [(a, b) for a in range(4) for b in range(4) if a != b]
    total = sum(subset_log_prob(lp4, torch.tensor([[a, b]])).exp() for a, b in pairs)
    assert torch.isclose(total, torch.ones(1), atol=1e-6)


# ---- the saturation guard and numerics -------------------------------------------------------------------

def test_stop_logit_penalty_is_zero_inside_the_bound_and_pulls_back_outside():
    from cascade_dist.method.objective import stop_logit_penalty

    d = torch.tensor([[3.0, -5.0], [9.0, -40.0]], requires_grad=True)  # stop log-odds of 2 non-last stages
    out = CascadeOutput(torch.zeros(2, 3, 4), torch.nn.functional.pad(torch.nn.functional.logsigmoid(d), (0, 1)),
                        torch.nn.functional.pad(torch.nn.functional.logsigmoid(-d), (0, 1), value=-float("inf")))
    penalty = stop_logit_penalty(out, bound=6.0, weight=0.5)
    # independent: 0.5 · mean over images of Σ_t relu(|d| − 6)² = 0.5 · (0 + (3² + 34²)) / 2
    assert penalty.item() == pytest.approx(0.5 * (9 + 34**2) / 2, rel=1e-4)
    (g,) = torch.autograd.grad(penalty, d)
    # d/dd = weight · 2 (|d| − 6) sign(d) / N: zero inside the bound, not vanishing however far out
    assert torch.allclose(g, torch.tensor([[0.0, 0.0], [0.5 * 2 * 3 / 2, -0.5 * 2 * 34 / 2]]), atol=1e-3)
    assert stop_logit_penalty(out, bound=None, weight=0.5).item() == 0.0


def saturated_cascade(seed: int = 0):
    """A real 2-stage Cascade on 14 px images whose first policy says "stop" with log-odds ≈ 40."""
    from cascade_dist.method.models import Cascade

    torch.manual_seed(seed)
    cascade = Cascade(["preact_resnet8", "preact_resnet14"], num_classes=10, in_channels=1, image_size=14,
                      policy_input="sorted_softmax")
    with torch.no_grad():
        cascade.policies[0].net[-1].bias.copy_(torch.tensor([20.0, -20.0]))
    return cascade


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("estimator", ["reinforce", "exact"])
def test_gradients_are_finite_and_reach_a_saturated_policy(dtype, estimator):
    """In float32 and under bfloat16 autocast: the loss and its statistics stay float32, every gradient
    is finite, and a policy saturated at log-odds 40 (π = 1.0 in float32) still gets a non-zero
    gradient, from the guard; α·cum (≈1e-3) is not rounded away."""
    from cascade_dist.method.objective import stop_logit_penalty

    cascade = saturated_cascade()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 14, 14, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        out = cascade(x)
        loss, stats = cascade_loss(out, y, cascade.costs, 1e-3, estimator=estimator, generator=gen)
        guard = stop_logit_penalty(out, 6.0, 0.05)
    assert loss.dtype == torch.float32 and out.log_stop.dtype == torch.float32
    assert out.stop_probs[:, 0].min() == 1.0  # saturated in float32 ...
    assert out.stop_log_odds[:, 0].min() > 30  # ... but its log-odds are exact
    (loss + guard).backward()
    grads = [p.grad for p in cascade.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    policy_grad = cascade.policies[0].net[-1].bias.grad
    assert policy_grad.abs().sum() > 0.1  # the guard pulls the saturated logit back
    assert torch.isfinite(torch.tensor(stats["expected_cost"])) and stats["expected_cost"] == pytest.approx(
        float(cascade.costs[0]), rel=1e-6)  # every image exits at stage 1: cost c_1, in float32


def test_a_policy_started_in_saturation_reaches_a_non_degenerate_exit_split():
    """Policies alone, REINFORCE with the optimal baseline, frozen classifiers: started with every
    image stopping at stage 1 (log-odds ≈ 40), the guard brings the log-odds back within the bound and
    the reward then splits the images (some stop, some go on); without the guard nothing moves."""
    from cascade_dist.method.objective import stop_logit_penalty

    gen = torch.Generator().manual_seed(2)
    n, c = 512, 10
    y = torch.randint(0, c, (n,), generator=gen)
    easy = torch.rand(n, generator=gen) < 0.5  # stage 1 is confident and right on half the images
    logits1 = torch.randn(n, c, generator=gen)
    logits1[easy, y[easy]] += 8.0
    logits2 = torch.randn(n, c, generator=gen)
    logits2[torch.arange(n), y] += 8.0  # stage 2 is right everywhere
    log_probs = torch.log_softmax(torch.stack([logits1, logits2], 1), -1)
    costs = torch.tensor([0.3, 1.0])

    def train(guard: bool) -> tuple[float, float]:
        torch.manual_seed(0)
        policy = StoppingPolicy(c, hidden=16, input="sorted_softmax")
        with torch.no_grad():
            policy.net[-1].bias.copy_(torch.tensor([20.0, -20.0]))
        opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
        for _ in range(400):
            out = outputs(log_probs, [policy(log_probs[:, 0].exp())])
            loss, _ = cascade_loss(out, y, costs, 0.2, generator=gen, classifier_term=False)
            if guard:
                loss = loss + stop_logit_penalty(out, 4.0, 0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            d = outputs(log_probs, [policy(log_probs[:, 0].exp())]).stop_log_odds[:, 0]
        return float((d[easy] >= 0).float().mean()), float((d[~easy] >= 0).float().mean()), float(d.abs().max())

    easy_stop, hard_stop, max_log_odds = train(guard=True)
    assert easy_stop > 0.95 and hard_stop < 0.05, (easy_stop, hard_stop)  # easy images stop, hard ones go on
    assert max_log_odds < 8
    easy_stuck, hard_stuck, stuck_log_odds = train(guard=False)
    assert easy_stuck == hard_stuck == 1.0 and stuck_log_odds > 30  # the control: a saturated policy never recovers


def test_guard_config_is_checked():
    with pytest.raises(ValueError, match="logit_bound"):
        ObjectiveConfig(logit_bound=0)
    with pytest.raises(ValueError, match="bound_weight"):
        ObjectiveConfig(bound_weight=-1)
    assert ObjectiveConfig(logit_bound=None).logit_bound is None
