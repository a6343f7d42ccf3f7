"""The joint-phase objective of the cascade (DESIGN §1; Guan et al. 2018, §3): its config, the loss
`cascade_loss` (a REINFORCE surrogate or the exact expectation, `estimators.py`, over the reward of
`reward.py`), the saturation guard on the stop logits, budget mode's dual ascent on α, and the
warm-up cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from .estimators import AllReduce, exact, local_sum, reinforce
from .reward import cumulative_costs, exit_distribution, log_exit_distribution, reward, topk_miss
from .sections import Problem, Section

__all__ = ["AllReduce", "CostBudget", "ObjectiveConfig", "cascade_loss", "exit_distribution", "local_sum",
           "log_exit_distribution", "reward", "stop_logit_penalty", "topk_miss", "warmup_loss"]

Estimator = Literal["reinforce", "exact"]
Baseline = Literal["optimal", "mean", "none"]
ESTIMATORS = ("reinforce", "exact")
BASELINES = ("optimal", "mean", "none")


@dataclass
class ObjectiveConfig(Section):
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
    dual_kp: float = 0.0
    """Proportional gain K_p of budget mode's α (`CostBudget`): α = max(0, α_I + K_p·(Ê − B)). It
    answers an overspend at once instead of after the integral α_I has built up, which damps the
    overshoot of plain dual ascent (0 = plain dual ascent)."""
    logit_bound: Optional[float] = 4.0
    """Saturation guard (beyond the paper): the stop log-odds d_t = log π_t(stop) − log π_t(continue)
    of training are held within ±logit_bound by the penalty `bound_weight`·Σ_t relu(|d_t| − bound)²
    (`stop_logit_penalty`). Inside the bound it is exactly 0; beyond, its gradient grows linearly,
    so a policy that saturated (where every correct estimator's gradient vanishes with π(1−π))
    is pulled back to where it learns. null: off."""
    bound_weight: float = 0.05

    def problems(self) -> list[Problem]:
        out = objective_problems(self.alpha, self.estimator, self.baseline, self.topk)
        if self.budget is not None and not self.budget > 0:
            out.append(("budget", f"must be a cost % > 0, got {self.budget}"))
        if not self.dual_lr > 0:
            out.append(("dual_lr", f"must be > 0, got {self.dual_lr}"))
        if not self.dual_kp >= 0:
            out.append(("dual_kp", f"must be >= 0, got {self.dual_kp}"))
        if self.logit_bound is not None and not self.logit_bound > 0:
            out.append(("logit_bound", f"must be > 0 (or null: no guard), got {self.logit_bound}"))
        if not self.bound_weight >= 0:
            out.append(("bound_weight", f"must be >= 0, got {self.bound_weight}"))
        if not self.ce_weight >= 0:
            out.append(("ce_weight", f"must be >= 0, got {self.ce_weight}"))
        return out


def objective_problems(alpha: float, estimator: str, baseline: str, topk: int) -> list[Problem]:
    """The objective's argument checks (used by `ObjectiveConfig` and by `cascade_loss`)."""
    out = []
    if not alpha >= 0:
        out.append(("alpha", f"must be >= 0, got {alpha}"))
    if estimator not in ESTIMATORS:
        out.append(("estimator", f"must be one of {ESTIMATORS}, got {estimator!r}"))
    if baseline not in BASELINES:
        out.append(("baseline", f"must be one of {BASELINES}, got {baseline!r}"))
    if topk < 1:
        out.append(("topk", f"must be >= 1, got {topk}"))
    return out


def _check_inputs(out, targets, costs, alpha, estimator, baseline, topk) -> None:
    problems = objective_problems(alpha, estimator, baseline, topk)
    if problems:
        raise ValueError("; ".join(f"{f} {m}" for f, m in problems))
    if out.log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (N, K, C), got shape {tuple(out.log_probs.shape)}")
    n, k, c = out.log_probs.shape
    if k < 2:
        raise ValueError(f"a cascade needs K >= 2 stages, log_probs has K={k}")
    for name in ("log_stop", "log_continue"):
        if tuple(getattr(out, name).shape) != (n, k):
            raise ValueError(f"{name} must be (N, K) = {(n, k)}, got {tuple(getattr(out, name).shape)}")
    if tuple(targets.shape) != (n,):
        raise ValueError(f"targets must be (N,) = ({n},), got {tuple(targets.shape)}")
    if tuple(costs.shape) != (k,):
        raise ValueError(f"costs must be (K,) = ({k},), got {tuple(costs.shape)}")
    if topk > c:
        raise ValueError(f"topk={topk} exceeds the number of classes {c}")
    if not bool((out.log_stop[:, -1] == 0).all()):
        raise ValueError("log_stop[:, -1] must be exactly 0: the last stage always stops")


def cascade_loss(
    out,
    targets: torch.Tensor,
    costs: torch.Tensor,
    alpha: float,
    estimator: Estimator = "reinforce",
    baseline: Baseline = "optimal",
    generator: torch.Generator | None = None,
    topk: int = 1,
    all_reduce: AllReduce = local_sum,
    classifier_term: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint-phase loss (to minimise) and its statistics, from a `CascadeOutput` `out`.

    reinforce (the paper's): sample k ~ Π(·|x) and a prediction from C_k, then minimise
    −[Σ_{t<k} log(1−π_t) + log π_k + log P_{C_k}(prediction)] · (R − b); b is the all-reduced
    `baseline` ("optimal": Σ g_i R_i / Σ g_i, g_i the squared score norm; "mean"; "none").
    exact: −Σ_k Π(k|x) · (E[−L | k] − α·cum_k). The loss and every statistic are float32 whatever the
    autocast dtype; `classifier_term=False` (frozen classifiers) drops the classifiers' score.
    """
    _check_inputs(out, targets, costs, alpha, estimator, baseline, topk)
    log_probs = out.log_probs.float()
    cum = cumulative_costs(costs)
    log_exit = log_exit_distribution(out.log_stop, out.log_continue)
    exit_probs = log_exit.detach().exp()
    stats = {"expected_cost": float((exit_probs * cum).sum(1).mean())}
    stats.update({f"exit_prob_{t}": float(p) for t, p in enumerate(exit_probs.mean(0))})
    if estimator == "exact":
        loss, more = exact(log_probs, log_exit, targets, cum, alpha, topk)
    else:
        loss, more = reinforce(log_probs, log_exit, out.log_stop.detach().float().exp(), targets, cum, alpha,
                               baseline, topk, generator, all_reduce, classifier_term)
    stats.update(more)
    return loss, stats


def stop_logit_penalty(out, bound: float | None, weight: float) -> torch.Tensor:
    """The saturation guard: weight · mean_i Σ_{t<K} relu(|d_it| − bound)², d = log π(stop) − log π(continue).

    0 (and no gradient) while every stop log-odds lies within ±bound; beyond it the gradient is
    2·weight·(|d| − bound)·sign(d), which does not vanish however far π has saturated."""
    d = (out.log_stop[:, :-1] - out.log_continue[:, :-1]).float()
    if bound is None or weight == 0:
        return d.sum() * 0
    return weight * F.relu(d.abs() - bound).square().sum(1).mean()


class CostBudget:
    """α as the Lagrange multiplier of the constraint E[cum_k] ≤ B (budget mode; beyond the paper).

    The paper's reward R = −L − α·cum_k is the Lagrangian of "max E[−L] s.t. E[cum_k] ≤ B" up to
    the constant α·B, so training at α is the primal step; after each step the dual step
        α ← max(0, α + η · (Ê[cum_k] − B))
    uses Ê, the expected cost Σ_k Π(k|x)·cum_k averaged over the global batch (all-reduced, so
    every worker holds the same α). α rises while the cascade spends too much, falls otherwise.

    With `kp` > 0 it is a PI controller (the PID Lagrangian of Stooke et al., 2020): the integral
    α_I follows the dual step above and α = max(0, α_I + kp·(Ê − B)) adds a proportional term.
    α_I (`integral`) is the multiplier learnt: what a checkpoint keeps and a resume starts from.
    """

    def __init__(self, alpha: float, budget_pct: float, lr: float, kp: float = 0.0):
        self.alpha, self.budget, self.lr, self.kp = float(alpha), budget_pct / 100, float(lr), float(kp)
        self.integral = self.alpha

    def step(self, expected_cost: float, count: int, all_reduce: AllReduce = local_sum) -> float:
        """Update α from this worker's batch (mean expected cost over `count` images); returns α."""
        sums = all_reduce(torch.tensor([expected_cost * count, float(count)], dtype=torch.float64))
        error = float(sums[0] / sums[1].clamp_min(1)) - self.budget
        self.integral = max(0.0, self.integral + self.lr * error)
        self.alpha = max(0.0, self.integral + self.kp * error)
        return self.alpha


def warmup_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every classifier, summed over stages (each stage gets its own CE gradient)."""
    n, k, c = log_probs.shape
    return F.nll_loss(log_probs.reshape(n * k, c), targets.repeat_interleave(k), reduction="sum") / n
