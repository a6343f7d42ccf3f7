"""The paper's symbols of one rollout (DESIGN §1; Guan et al. 2018, §3), each written once.

    Π(k|x) = π_k(s_k) · Π_{t<k} (1 − π_t(s_t))          the exit distribution
    cum_k  = Σ_{t≤k} c_t                                 the cost of stopping at k
    R      = −L(ŷ, y) − α · cum_k                        the reward (L: 0-1 loss, top-1 or top-k)

All in float32 and in log space: log Π comes from the policies' log π(stop) and log π(continue).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_exit_distribution(log_stop: torch.Tensor, log_continue: torch.Tensor) -> torch.Tensor:
    """log Π(k|x) = log π_k + Σ_{t<k} log(1 − π_t), (N, K), from (N, K) log π(stop) and log π(continue)."""
    survived = F.pad(log_continue[:, :-1].float().cumsum(dim=1), (1, 0))
    return log_stop.float() + survived


def exit_distribution(log_stop: torch.Tensor, log_continue: torch.Tensor) -> torch.Tensor:
    """Π(k|x), (N, K); each row sums to 1 because π_K = 1."""
    return log_exit_distribution(log_stop, log_continue).exp()


def cumulative_costs(costs: torch.Tensor) -> torch.Tensor:
    """cum_k = Σ_{t≤k} c_t in float32 (never in an autocast dtype: α·cum is ~1e-3)."""
    return costs.float().cumsum(0)


def reward(neg_loss: torch.Tensor, cum_cost: torch.Tensor, alpha: float) -> torch.Tensor:
    """R = −L − α · cum_k (broadcasts: per sample, or per sample and stage)."""
    return neg_loss - alpha * cum_cost


def topk_miss(log_probs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """0-1 top-k loss of every stage: 1 where y is not among the k best classes, shape (N, K)."""
    top = log_probs.topk(k, dim=-1).indices
    return (top != targets[:, None, None]).all(dim=-1).float()
