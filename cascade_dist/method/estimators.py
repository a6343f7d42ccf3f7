"""Gradient estimators of the expected reward J = E_{k~Π, S~C_k}[R] (DESIGN §1; Guan et al. 2018, §3).

Everything here is float32 and in log space: log Π(k|x) comes from the policies' log-softmaxes,
never from clamped probabilities.

* REINFORCE (the paper's): sample the exit k ~ Π(·|x) and the prediction from C_k, then minimise
  the surrogate −[Σ_{t<k} log(1−π_t) + log π_k + log P_{C_k}(S)] · (R − b). The prediction is an
  ordered k-subset S drawn from C_k by Gumbel-top-k (Plackett–Luce sampling without replacement;
  with k = 1 it is ŷ ~ C_k), so top-k rewards give the classifiers a gradient too: the reward
  depends on S only through the set, so the ordered draw's log-probability is a valid score.
* exact (beyond the paper): J(x) = Σ_k Π(k|x) · (E[−L | k] − α·cum_k) in closed form; on top-1,
  E[−L | k] = C_k(y|x) − 1. With topk > 1 the 0-1 loss is the deterministic top-k miss of C_k
  (no closed form for the Plackett–Luce hit probability), so the classifiers get no reward gradient.

Baselines b are global: their numerator and denominator are all-reduced across workers.
"""

from __future__ import annotations

from typing import Callable

import torch

from .reward import reward, topk_miss

AllReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over all workers (torch.distributed in the workers; the identity alone)."""


def local_sum(t: torch.Tensor) -> torch.Tensor:
    """The single-process all-reduce: nothing to sum with."""
    return t


def sample_subset(log_probs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """An ordered k-subset per row of `log_probs` (N, C), by Gumbel-top-k: the k largest of
    log q + Gumbel noise, in order, are a Plackett–Luce draw without replacement. (N, k) int64."""
    u = torch.rand(log_probs.shape, generator=generator, device=log_probs.device, dtype=torch.float32)
    gumbel = -(-u.clamp_min(1e-20).log()).log()
    return (log_probs.detach().float() + gumbel).topk(k, dim=-1).indices


def subset_log_prob(log_probs: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """log P(σ) of an ordered draw σ without replacement (Plackett–Luce), (N,):
    Σ_j [log q_{σ_j} − log(1 − Σ_{i<j} q_{σ_i})], with the remaining mass taken by logsumexp over the
    classes not drawn yet (never 1 − a sum of probabilities)."""
    mask = torch.zeros_like(log_probs, dtype=torch.bool)
    total = torch.zeros(log_probs.shape[0], dtype=log_probs.dtype, device=log_probs.device)
    for j in range(subset.shape[1]):
        remaining = log_probs.masked_fill(mask, -float("inf")).logsumexp(-1)
        total = total + log_probs.gather(1, subset[:, j:j + 1]).squeeze(1) - remaining
        mask = mask.scatter(1, subset[:, j:j + 1], True)
    return total


def subset_score_sq_norm(log_probs: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """‖∂ log P(σ)/∂z‖² w.r.t. the classifier logits z, analytically, (N,): the gradient is
    Σ_j (e_{σ_j} − softmax(z over the classes not drawn before j)). For k = 1: 1 − 2q_ŷ + ‖q‖²."""
    log_probs = log_probs.detach()
    mask = torch.zeros_like(log_probs, dtype=torch.bool)
    grad = torch.zeros_like(log_probs)
    for j in range(subset.shape[1]):
        grad = grad - torch.softmax(log_probs.masked_fill(mask, -float("inf")), -1)
        mask = mask.scatter(1, subset[:, j:j + 1], True)
    grad = grad + mask.to(grad.dtype)
    return grad.square().sum(-1)


def policy_score_sq_norm(stop_probs: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """‖∂ log Π(k|x)/∂(policy logits)‖², (N,): for a 2-way softmax ‖∂ log π/∂z‖² = 2(1−π)² and
    ‖∂ log(1−π)/∂z‖² = 2π²; the last stage has no policy (π_K = 1 gives 0)."""
    stages = torch.arange(stop_probs.shape[1], device=stop_probs.device)
    before = (stages[None, :] < exits[:, None]).to(stop_probs.dtype)
    pi_exit = stop_probs.gather(1, exits[:, None]).squeeze(1)
    return (2 * stop_probs.square() * before).sum(1) + 2 * (1 - pi_exit).square()


def global_baseline(rewards: torch.Tensor, weights: torch.Tensor, all_reduce: AllReduce) -> torch.Tensor:
    """b = Σ_i w_i R_i / Σ_i w_i with both sums all-reduced, so every worker uses the same b."""
    sums = all_reduce(torch.stack([(weights * rewards).sum(), weights.sum()]).double())
    return (sums[0] / sums[1].clamp_min(1e-12)).to(rewards.dtype)


def baseline_weights(kind: str, stop_probs, exits, log_probs_exit, subset, classifier_term: bool) -> torch.Tensor:
    """Per-sample weights of the baseline: 1 ("mean"), or g_i ("optimal": the squared norm of
    sample i's score function w.r.t. the policy and, when they train, the classifier logits)."""
    if kind == "mean":
        return torch.ones_like(stop_probs[:, 0])
    g = policy_score_sq_norm(stop_probs, exits)
    if classifier_term:
        g = g + subset_score_sq_norm(log_probs_exit, subset)
    return g


def reinforce(log_probs, log_exit, stop_probs, targets, cum, alpha, baseline, topk, generator, all_reduce,
              classifier_term: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's surrogate (to minimise) and its statistics; see the module docstring.

    `classifier_term=False` (classifiers frozen, "Ours (S)") leaves log P_{C_k}(S) out of the
    surrogate and of the optimal baseline's score norm."""
    n = len(targets)
    rows = torch.arange(n, device=targets.device)
    with torch.no_grad():
        exits = torch.multinomial(log_exit.detach().exp(), 1, generator=generator).squeeze(1)
        log_probs_exit = log_probs.detach()[rows, exits]
        subset = sample_subset(log_probs_exit, topk, generator)
        loss01 = (subset != targets[:, None]).all(-1).float()
        rewards = reward(-loss01, cum[exits], alpha)
        if baseline == "none":
            b = b_local = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
        else:
            w = baseline_weights(baseline, stop_probs.detach(), exits, log_probs_exit, subset, classifier_term)
            b = global_baseline(rewards, w, all_reduce)
            b_local = global_baseline(rewards, w, local_sum)
    score = log_exit[rows, exits]
    if classifier_term:
        score = score + subset_log_prob(log_probs[rows, exits], subset)
    loss = -(score * (rewards - b)).mean()
    return loss, {"reward": float(rewards.mean()), "baseline": float(b), "baseline_local": float(b_local),
                  "error": float(loss01.mean())}


def exact(log_probs, log_exit, targets, cum, alpha, topk) -> tuple[torch.Tensor, dict[str, float]]:
    """−J averaged over the batch, J(x) = Σ_k Π(k|x) · (E[−L | k] − α·cum_k)."""
    if topk == 1:
        idx = targets[:, None, None].expand(-1, log_probs.shape[1], 1)
        neg_loss = log_probs.gather(2, idx).squeeze(2).exp() - 1
    else:
        neg_loss = -topk_miss(log_probs, targets, topk)
    expected = (log_exit.exp() * reward(neg_loss, cum, alpha)).sum(1)
    return -expected.mean(), {"reward": float(expected.detach().mean()), "baseline": 0.0, "baseline_local": 0.0}
