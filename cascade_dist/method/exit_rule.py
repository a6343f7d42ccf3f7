"""The test-time exit rule (DESIGN §1): an image stops at the first stage t with π_t(stop) ≥ τ_t.

The rule is applied on the stop log-odds d_t = log π_t(stop) − log π_t(continue) as d_t ≥ θ_t,
with θ_t = logit τ_t: the same rule, but one that still orders images whose π is 1.0 in float32,
so that a calibrated θ (any real, `inference.calibration`) can split them. The last stage always
stops. The dense evaluation, the early-exit predictor, calibration and export all use this one
`ExitRule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

Thresholds = float | Sequence[float] | torch.Tensor


def _as_list(values: Thresholds) -> list[float]:
    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.flatten().tolist()]
    return [float(v) for v in values] if isinstance(values, (list, tuple)) else [float(values)]


def check_tau(t: float) -> None:
    if not 0 < t < 1:
        raise ValueError(f"tau must lie in (0, 1), got {t}")


def log_odds_of(stop_probs: torch.Tensor) -> torch.Tensor:
    """logit π in float64, for outputs that carry no log-odds of their own (±inf where π is 0 or 1)."""
    p = stop_probs.detach().double()
    return p.log() - (-p).log1p()


@dataclass(frozen=True)
class ExitRule:
    """Per-stage log-odds thresholds θ_1..θ_{K-1}: stop at the first t with d_t ≥ θ_t."""

    theta: tuple[float, ...]

    @classmethod
    def from_tau(cls, tau: Thresholds, num_stages: int) -> "ExitRule":
        """θ_t = logit τ_t; `tau` is one value for every stage or one per stage but the last."""
        taus = _as_list(tau)
        for t in taus:
            check_tau(t)
        return cls.from_theta([math.log(t) - math.log1p(-t) for t in taus], num_stages, what="tau")

    @classmethod
    def from_theta(cls, theta: Thresholds, num_stages: int, what: str = "theta") -> "ExitRule":
        """θ as given: any real, e.g. a calibrated θ beyond what a float τ can say."""
        values = _as_list(theta)
        if len(values) == 1:
            values = values * (num_stages - 1)
        if len(values) != num_stages - 1:
            raise ValueError(f"{what} needs 1 or K-1 = {num_stages - 1} values, got {len(values)}")
        if any(math.isnan(t) for t in values):
            raise ValueError(f"theta must not be NaN, got {values}")
        return cls(tuple(values))

    @classmethod
    def of(cls, num_stages: int, tau: Thresholds | None = None, theta: Thresholds | None = None) -> "ExitRule":
        """`theta` when given, else `tau` (default 0.5)."""
        if theta is not None:
            return cls.from_theta(theta, num_stages)
        return cls.from_tau(0.5 if tau is None else tau, num_stages)

    @property
    def num_stages(self) -> int:
        return len(self.theta) + 1

    @property
    def tau(self) -> list[float]:
        """The thresholds as stop probabilities (for display: rounds to 0 or 1 beyond |θ| ≈ 37)."""
        return [1 / (1 + math.exp(-t)) if t > -700 else 0.0 for t in self.theta]

    def thresholds(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(K,) float64 with −inf for the last stage (it always stops)."""
        return torch.tensor([*self.theta, -math.inf], dtype=torch.float64, device=device)

    def stops(self, stop_log_odds: torch.Tensor, t: int) -> torch.Tensor:
        """(N,) bool: the images whose stage-t log-odds reach θ_t (all of them at the last stage)."""
        if t == self.num_stages - 1:
            return torch.ones(stop_log_odds.shape[0], dtype=torch.bool, device=stop_log_odds.device)
        return stop_log_odds.double() >= self.theta[t]

    def hits(self, stop_log_odds: torch.Tensor) -> torch.Tensor:
        """(N, K) bool: stage t's log-odds reach θ_t (always true at the last stage), from (N, K) log-odds."""
        if stop_log_odds.shape[1] != self.num_stages:
            raise ValueError(f"the rule has {self.num_stages} stages, the log-odds {stop_log_odds.shape[1]}")
        hit = stop_log_odds.double() >= self.thresholds(stop_log_odds.device)
        hit[:, -1] = True
        return hit

    def exits(self, stop_log_odds: torch.Tensor) -> torch.Tensor:
        """(N,) index of the first stage whose log-odds reach its threshold."""
        return self.hits(stop_log_odds).int().argmax(dim=1)


def exit_stages(stop_probs: torch.Tensor, tau: Thresholds) -> torch.Tensor:
    """Exit stages from stop probabilities (N, K) and τ: `ExitRule.from_tau(tau, K)` on logit π."""
    return ExitRule.from_tau(tau, stop_probs.shape[1]).exits(log_odds_of(stop_probs))
