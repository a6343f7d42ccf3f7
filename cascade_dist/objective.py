"""Rewards, baselines and gradient estimators of the cascade (DESIGN §1; Guan et al. 2018, §3).

Notation: K stages, stop probabilities π_t, exit distribution
    Π(k|x) = π_k(s_k) · Π_{t<k} (1 − π_t(s_t)),
cumulative cost cum_k = Σ_{t≤k} c_t, and the reward of stopping at k with prediction ŷ
    R = −L(ŷ, y) − α · cum_k        (L: 0-1 loss on top-1, or on top-k for ImageNet).
The objective maximised is the expected reward J = E_{k~Π, ŷ~C_k}[R].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F

Estimator = Literal["reinforce", "exact"]
Baseline = Literal["optimal", "mean", "none"]
AllReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over all workers (torch.distributed in the workers; the identity alone)."""

ESTIMATORS = ("reinforce", "exact")
BASELINES = ("optimal", "mean", "none")
_EPS = 1e-7


def local_sum(t: torch.Tensor) -> torch.Tensor:
    """The single-process all-reduce: nothing to sum with."""
    return t


@dataclass
class ObjectiveConfig:
    """How the joint phase scores the cascade."""

    alpha: float = 1e-2
    estimator: str = "reinforce"
    """One of ESTIMATORS: "reinforce" (the paper's) or "exact"."""
    baseline: str = "optimal"
    """One of BASELINES: "optimal", "mean" or "none"."""
    topk: int = 1
    ce_weight: float = 0.0
    """Weight of the cross-entropy term kept during the joint phase (0 = pure reward)."""
    budget: Optional[float] = None
    """Budget mode: a target expected cost in % of the largest classifier; α (starting from
    `alpha`) then follows dual ascent (`CostBudget`) instead of staying fixed."""
    dual_lr: float = 0.005
    """Step size η of α's dual ascent, per training step."""

    def __post_init__(self):
        validate_objective(self.alpha, self.estimator, self.baseline, self.topk)
        if self.budget is not None and not self.budget > 0:
            raise ValueError(f"budget must be a cost % > 0, got {self.budget}")
        if not self.dual_lr > 0:
            raise ValueError(f"dual_lr must be > 0, got {self.dual_lr}")


def validate_objective(alpha: float, estimator: str, baseline: str, topk: int) -> None:
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")


def log_exit_distribution(stop_probs: torch.Tensor) -> torch.Tensor:
    """log Π(k|x) = log π_k + Σ_{t<k} log(1 − π_t), shape (N, K)."""
    log_stop = stop_probs.clamp_min(_EPS).log()
    log_continue = (-stop_probs.clamp_max(1 - _EPS)).log1p()
    survived = F.pad(log_continue[:, :-1].cumsum(dim=1), (1, 0))
    return log_stop + survived


def exit_distribution(stop_probs: torch.Tensor) -> torch.Tensor:
    """Π(k|x), shape (N, K); each row sums to 1 because π_K = 1."""
    return log_exit_distribution(stop_probs).exp()


def reward(neg_loss: torch.Tensor, cum_cost: torch.Tensor, alpha: float) -> torch.Tensor:
    """R = −L − α · cum_k (broadcasts: per sample, or per sample and stage)."""
    return neg_loss - alpha * cum_cost


def topk_miss(log_probs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """0-1 top-k loss of every stage: 1 where y is not among the k best classes, shape (N, K)."""
    top = log_probs.topk(k, dim=-1).indices
    return (top != targets[:, None, None]).all(dim=-1).float()


def global_baseline(rewards: torch.Tensor, weights: torch.Tensor, all_reduce: AllReduce) -> torch.Tensor:
    """b = Σ_i w_i R_i / Σ_i w_i with both sums all-reduced, so every worker uses the same b."""
    sums = all_reduce(torch.stack([(weights * rewards).sum(), weights.sum()]))
    return sums[0] / sums[1].clamp_min(_EPS)


def score_sq_norm(
    stop_probs: torch.Tensor, exits: torch.Tensor, class_probs: torch.Tensor | None, sampled: torch.Tensor | None
) -> torch.Tensor:
    """g_i: squared norm of sample i's score function w.r.t. the policy and classifier logits.

    For a 2-way softmax, ‖∂ log π/∂z‖² = 2(1−π)² and ‖∂ log(1−π)/∂z‖² = 2π²; for the classifier
    softmax q, ‖∂ log q_ŷ/∂z‖² = 1 − 2 q_ŷ + ‖q‖². The last stage has no policy (π_K = 1 → 0).
    """
    k_steps = torch.arange(stop_probs.shape[1], device=stop_probs.device)
    before = (k_steps[None, :] < exits[:, None]).float()
    pi_exit = stop_probs.gather(1, exits[:, None]).squeeze(1)
    g = (2 * stop_probs.square() * before).sum(1) + 2 * (1 - pi_exit).square()
    if class_probs is not None:
        q_hat = class_probs.gather(1, sampled[:, None]).squeeze(1)
        g = g + 1 - 2 * q_hat + class_probs.square().sum(1)
    return g


def _check_inputs(log_probs, stop_probs, targets, costs, alpha, estimator, baseline, topk) -> None:
    validate_objective(alpha, estimator, baseline, topk)
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (N, K, C), got shape {tuple(log_probs.shape)}")
    n, k, c = log_probs.shape
    if k < 2:
        raise ValueError(f"a cascade needs K >= 2 stages, log_probs has K={k}")
    if tuple(stop_probs.shape) != (n, k):
        raise ValueError(f"stop_probs must be (N, K) = {(n, k)}, got {tuple(stop_probs.shape)}")
    if tuple(targets.shape) != (n,):
        raise ValueError(f"targets must be (N,) = ({n},), got {tuple(targets.shape)}")
    if tuple(costs.shape) != (k,):
        raise ValueError(f"costs must be (K,) = ({k},), got {tuple(costs.shape)}")
    if topk > c:
        raise ValueError(f"topk={topk} exceeds the number of classes {c}")
    if not bool((stop_probs[:, -1] == 1).all()):
        raise ValueError("stop_probs[:, -1] must be exactly 1: the last stage always stops")


def cascade_loss(
    log_probs: torch.Tensor,
    stop_probs: torch.Tensor,
    targets: torch.Tensor,
    costs: torch.Tensor,
    alpha: float,
    estimator: Estimator = "reinforce",
    baseline: Baseline = "optimal",
    generator: torch.Generator | None = None,
    topk: int = 1,
    all_reduce: AllReduce = local_sum,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint-phase loss (to minimise) and its statistics.

    reinforce (the paper's): sample k ~ Π(·|x) and ŷ ~ C_k(·|x) per example, then minimise the
    surrogate −[Σ_{t<k} log(1−π_t) + log π_k + log C_k(ŷ|x)] · (R − b). With topk > 1 the 0-1 loss
    is the deterministic top-k miss of C_k and ŷ is not sampled (no classifier score term).

    exact: J(x) = Σ_k Π(k|x) · (E_{ŷ~C_k}[−L] − α·cum_k) in closed form (E[−L] = C_k(y|x) − 1 on
    top-1); `baseline` does not apply and is reported as 0.
    """
    _check_inputs(log_probs, stop_probs, targets, costs, alpha, estimator, baseline, topk)
    cum = costs.to(log_probs.dtype).cumsum(0)
    log_exit = log_exit_distribution(stop_probs)
    exit_probs = log_exit.detach().exp()
    stats = {"expected_cost": float((exit_probs * cum).sum(1).mean())}
    stats.update({f"exit_prob_{t}": float(p) for t, p in enumerate(exit_probs.mean(0))})

    if estimator == "exact":
        if topk == 1:
            neg_loss = log_probs.gather(2, targets[:, None, None].expand(-1, log_probs.shape[1], 1)).squeeze(2).exp() - 1
        else:
            neg_loss = -topk_miss(log_probs, targets, topk)
        expected = (log_exit.exp() * reward(neg_loss, cum, alpha)).sum(1)
        stats.update(reward=float(expected.detach().mean()), baseline=0.0)
        return -expected.mean(), stats

    with torch.no_grad():
        exits = torch.multinomial(exit_probs, 1, generator=generator).squeeze(1)
        exit_log_probs = log_probs.detach()[torch.arange(len(exits)), exits]
        if topk == 1:
            sampled = torch.multinomial(exit_log_probs.exp(), 1, generator=generator).squeeze(1)
            loss01 = (sampled != targets).float()
        else:
            sampled = None
            loss01 = topk_miss(exit_log_probs[:, None], targets, topk).squeeze(1)
        rewards = reward(-loss01, cum[exits], alpha)
        if baseline == "none":
            b = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
        elif baseline == "mean":
            b = global_baseline(rewards, torch.ones_like(rewards), all_reduce)
        else:
            class_probs = exit_log_probs.exp() if topk == 1 else None
            g = score_sq_norm(stop_probs.detach(), exits, class_probs, sampled)
            b = global_baseline(rewards, g, all_reduce)

    score = log_exit.gather(1, exits[:, None]).squeeze(1)
    if topk == 1:
        score = score + log_probs[torch.arange(len(exits)), exits].gather(1, sampled[:, None]).squeeze(1)
    loss = -(score * (rewards - b)).mean()
    stats.update(reward=float(rewards.mean()), baseline=float(b), error=float(loss01.mean()))
    return loss, stats


class CostBudget:
    """α as the Lagrange multiplier of the constraint E[cum_k] ≤ B (budget mode; beyond the paper).

    The paper's reward R = −L − α·cum_k is the Lagrangian of "max E[−L] s.t. E[cum_k] ≤ B" up to
    the constant α·B, so training at α is the primal step; after each step the dual step
        α ← max(0, α + η · (Ê[cum_k] − B))
    uses Ê, the expected cost Σ_k Π(k|x)·cum_k averaged over the global batch (all-reduced, so
    every worker holds the same α). α rises while the cascade spends too much, falls otherwise.
    """

    def __init__(self, alpha: float, budget_pct: float, lr: float):
        self.alpha, self.budget, self.lr = float(alpha), budget_pct / 100, float(lr)

    def step(self, expected_cost: float, count: int, all_reduce: AllReduce = local_sum) -> float:
        """Update α from this worker's batch (mean expected cost over `count` images); returns α."""
        sums = all_reduce(torch.tensor([expected_cost * count, float(count)], dtype=torch.float64))
        mean = float(sums[0] / sums[1].clamp_min(1))
        self.alpha = max(0.0, self.alpha + self.lr * (mean - self.budget))
        return self.alpha


def warmup_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every classifier, summed over stages (each stage gets its own CE gradient)."""
    n, k, c = log_probs.shape
    return F.nll_loss(log_probs.reshape(n * k, c), targets.repeat_interleave(k), reduction="sum") / n
