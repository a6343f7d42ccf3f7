"""Test-time semantics and metrics of a cascade (DESIGN §1; the paper's Table 2, Figures 4–5).

At test time an image stops at the first stage t with π_t(stop) ≥ τ_t. The prediction is the
ensemble of the visited classifiers' softmaxes weighted by the stop probabilities they gave
(or, with `ensemble=False`, the exiting classifier's softmax alone).

Where the model gives the stop log-odds d_t = log π_t(stop) − log π_t(continue) (a `Cascade`
does), the rule is applied as d_t ≥ θ_t with θ_t = logit τ_t: the same rule, but one that still
orders images whose π is 1.0 in float32, so a calibrated θ (any real, `calibration.py`) can split
them. The early-exit predictor (`predictor.py`) applies these same functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .flops import CascadeMACs
from .objective import AllReduce, local_sum

DEFAULT_SWEEP = tuple(round(t, 3) for t in torch.linspace(0.05, 0.95, 19).tolist())


@dataclass
class EvalConfig:
    """Operating point and sweep of the test-time cascade."""

    tau: list[float] = field(default_factory=lambda: [0.5])
    """Stop threshold: one value, or one per stage except the last."""
    ensemble: bool = True
    sweep: list[float] = field(default_factory=lambda: list(DEFAULT_SWEEP))

    def __post_init__(self):
        for t in [*_as_list(self.tau), *self.sweep]:
            _check_tau(t)


def _as_list(tau) -> list[float]:
    return list(tau) if isinstance(tau, (list, tuple)) else [tau]


def _check_tau(t: float) -> None:
    if not 0 < t < 1:
        raise ValueError(f"tau must lie in (0, 1), got {t}")


def thresholds(tau: float | Sequence[float] | torch.Tensor, num_stages: int, device=None) -> torch.Tensor:
    """Per-stage thresholds (K,), the last one 1 (the last stage always stops)."""
    taus = tau.tolist() if isinstance(tau, torch.Tensor) else _as_list(tau)
    for t in taus:
        _check_tau(t)
    if len(taus) == 1:
        taus = taus * (num_stages - 1)
    if len(taus) != num_stages - 1:
        raise ValueError(f"tau needs 1 or K-1 = {num_stages - 1} values, got {len(taus)}")
    return torch.tensor([*taus, 1.0], device=device)


def exit_stages(stop_probs: torch.Tensor, tau) -> torch.Tensor:
    """Index of the first stage with π_t ≥ τ_t, shape (N,) (applied as logit π_t ≥ logit τ_t)."""
    return first_stop_log_odds(log_odds_of(stop_probs), log_odds_thresholds(tau, stop_probs.shape[1]))


def log_odds_of(stop_probs: torch.Tensor) -> torch.Tensor:
    """logit π in float64, for outputs that carry no log-odds of their own (±inf where π is 0 or 1)."""
    p = stop_probs.detach().double().cpu()
    return p.log() - (-p).log1p()


def log_odds_thresholds(
    tau: float | Sequence[float] | torch.Tensor | None, num_stages: int, theta: Sequence[float] | None = None,
    device=None,
) -> torch.Tensor:
    """Per-stage log-odds thresholds (K,) float64, the last -inf: θ_t = logit τ_t, or `theta` as given
    (any real: a calibrated θ may lie beyond what a float τ can say)."""
    if theta is None:
        thresholds(tau, num_stages)  # checks τ and its count
        theta = [math.log(t) - math.log1p(-t) for t in (tau.tolist() if isinstance(tau, torch.Tensor) else _as_list(tau))]
    theta = [float(t) for t in (theta.tolist() if isinstance(theta, torch.Tensor) else _as_list(theta))]
    if len(theta) == 1:
        theta = theta * (num_stages - 1)
    if len(theta) != num_stages - 1:
        raise ValueError(f"theta needs 1 or K-1 = {num_stages - 1} values, got {len(theta)}")
    if any(math.isnan(t) for t in theta):
        raise ValueError(f"theta must not be NaN, got {theta}")
    return torch.tensor([*theta, -math.inf], dtype=torch.float64, device=device)


def first_stop_log_odds(stop_log_odds: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Index of the first stage with log-odds d_t ≥ θ_t (the last stage always stops), shape (N,)."""
    hit = stop_log_odds.double() >= theta
    hit[:, -1] = True
    return hit.int().argmax(dim=1)


def sigmoid(theta: Sequence[float]) -> list[float]:
    """τ = 1 / (1 + e^-θ) per value (for display: rounds to 0 or 1 beyond |θ| ≈ 37)."""
    return [1 / (1 + math.exp(-t)) if t > -700 else 0.0 for t in theta]


def cascade_probs(
    log_probs: torch.Tensor, stop_probs: torch.Tensor, exits: torch.Tensor, ensemble: bool = True
) -> torch.Tensor:
    """Class probabilities of the cascade's prediction, (N, C)."""
    probs = log_probs.exp()
    if not ensemble:
        return probs[torch.arange(len(exits)), exits]
    stages = torch.arange(stop_probs.shape[1], device=stop_probs.device)
    weights = stop_probs * (stages[None, :] <= exits[:, None])
    return (weights[:, :, None] * probs).sum(1) / weights.sum(1, keepdim=True)


def _hits(probs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """1 where the target is among the k most probable classes (last dim)."""
    return (probs.topk(k, dim=-1).indices == targets.view(-1, *([1] * (probs.dim() - 1)))).any(-1)


@dataclass
class EvalReport:
    """Metrics of one evaluation of the cascade (floats and lists: JSON- and MLflow-ready)."""

    num_samples: int
    tau: list[float]
    accuracy: float
    top5_accuracy: float | None
    cost_pct: float
    macs_per_image: float
    exit_fractions: list[float]
    static_accuracy: list[float]
    static_cost_pct: list[float]
    accuracy_matrix: list[list[float | None]]
    """accuracy_matrix[i][j]: accuracy of classifier i on the images that exit at stage j."""
    sweep: list[dict[str, float]]
    """The (τ, cost %, accuracy) curve of this model over a τ grid."""

    def table(self, names: Sequence[str] | None = None) -> str:
        """The summary table: each classifier alone, the cascade, and where images stop."""
        names = list(names or [f"C{t + 1}" for t in range(len(self.static_accuracy))])
        width = max(len(n) for n in [*names, "cascade (tau=0.50)"]) + 2
        lines = [f"{'model':<{width}}{'accuracy %':>11}{'cost %':>9}{'exits %':>9}", "-" * (width + 29)]
        for name, acc, cost, frac in zip(names, self.static_accuracy, self.static_cost_pct, self.exit_fractions):
            lines.append(f"{name:<{width}}{100 * acc:>11.2f}{cost:>9.2f}{100 * frac:>9.1f}")
        tau = "/".join(f"{t:.2f}" for t in self.tau)
        lines.append(f"{'cascade (tau=' + tau + ')':<{width}}{100 * self.accuracy:>11.2f}{self.cost_pct:>9.2f}{'-':>9}")
        lines.append(f"largest classifier alone: {100 * self.static_accuracy[-1]:.2f} % at 100 % cost; "
                     f"cascade: {100 * self.accuracy:.2f} % at {self.cost_pct:.2f} % "
                     f"({self.macs_per_image / 1e6:.2f} M MACs per image, {self.num_samples} images)")
        return "\n".join(lines)

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics for trackers."""
        out = {"accuracy": self.accuracy, "cost_pct": self.cost_pct, "macs_per_image": self.macs_per_image}
        if self.top5_accuracy is not None:
            out["top5_accuracy"] = self.top5_accuracy
        for t, (f, a) in enumerate(zip(self.exit_fractions, self.static_accuracy)):
            out[f"exit_frac_stage{t}"] = f
            out[f"static_accuracy_stage{t}"] = a
        return out


class CascadeEvaluator:
    """Accumulates sufficient statistics over batches; all-reducible, then `compute()`."""

    def __init__(self, macs: CascadeMACs, config: EvalConfig | None = None, theta: Sequence[float] | None = None):
        """`theta`: log-odds thresholds (1 or K-1) in place of `config.tau`, e.g. a calibrated θ."""
        self.config = config or EvalConfig()
        self.macs = macs
        k = len(macs.classifier)
        self.theta = log_odds_thresholds(self.config.tau, k, theta)
        self.tau = thresholds(self.config.tau, k)[:-1].tolist() if theta is None else sigmoid(self.theta[:-1].tolist())
        self.sweep_taus = list(self.config.sweep)
        self.sweep_theta = [log_odds_thresholds(t, k) for t in self.sweep_taus]
        self.cum_macs = macs.cumulative_macs()
        self.num_classes = 0
        self.sums = {
            "n": torch.zeros((), dtype=torch.float64),
            "correct": torch.zeros((), dtype=torch.float64),
            "correct5": torch.zeros((), dtype=torch.float64),
            "exits": torch.zeros(k, dtype=torch.float64),
            "static_correct": torch.zeros(k, dtype=torch.float64),
            "matrix_correct": torch.zeros(k, k, dtype=torch.float64),
            "sweep_correct": torch.zeros(len(self.sweep_taus), dtype=torch.float64),
            "sweep_macs": torch.zeros(len(self.sweep_taus), dtype=torch.float64),
        }

    @torch.no_grad()
    def update(
        self, log_probs: torch.Tensor, stop_probs: torch.Tensor, targets: torch.Tensor,
        stop_log_odds: torch.Tensor | None = None,
    ) -> None:
        """One batch of dense outputs. The rule is d ≥ θ on the model's stop log-odds; without them
        d = logit π (the same rule, blind only where π rounds to 0 or 1)."""
        log_probs, stop_probs, targets = (x.detach().float().cpu() for x in (log_probs, stop_probs, targets))
        stop_log_odds = log_odds_of(stop_probs) if stop_log_odds is None else stop_log_odds.detach().cpu()
        exits = first_stop_log_odds(stop_log_odds, self.theta)
        probs = cascade_probs(log_probs, stop_probs, exits, self.config.ensemble)
        onehot = torch.nn.functional.one_hot(exits, stop_probs.shape[1]).double()
        static_hits = _hits(log_probs, targets, 1).double()  # (N, K)
        s = self.sums
        self.num_classes = probs.shape[1]
        s["n"] += len(targets)
        s["correct"] += _hits(probs, targets, 1).sum()
        if probs.shape[1] >= 5:
            s["correct5"] += _hits(probs, targets, 5).sum()
        s["exits"] += onehot.sum(0)
        s["static_correct"] += static_hits.sum(0)
        s["matrix_correct"] += static_hits.T @ onehot
        for i, theta in enumerate(self.sweep_theta):
            ex = first_stop_log_odds(stop_log_odds, theta)
            s["sweep_correct"][i] += _hits(cascade_probs(log_probs, stop_probs, ex, self.config.ensemble), targets, 1).sum()
            s["sweep_macs"][i] += self.cum_macs[ex].sum()

    def all_reduce(self, all_reduce: AllReduce = local_sum) -> None:
        """Sum the statistics over workers (in place)."""
        for key, value in self.sums.items():
            self.sums[key] = all_reduce(value)

    def compute(self) -> EvalReport:
        s, ref = self.sums, self.macs.reference
        n = float(s["n"])
        if n == 0:
            raise ValueError("no samples were evaluated")
        exits = s["exits"]
        macs = float((exits * self.cum_macs).sum()) / n
        matrix = [
            [float(s["matrix_correct"][i, j] / exits[j]) if exits[j] > 0 else None for j in range(len(exits))]
            for i in range(len(exits))
        ]
        return EvalReport(
            num_samples=int(n),
            tau=self.tau,
            accuracy=float(s["correct"]) / n,
            top5_accuracy=float(s["correct5"]) / n if self.num_classes >= 5 else None,
            cost_pct=100 * macs / ref,
            macs_per_image=macs,
            exit_fractions=(exits / n).tolist(),
            static_accuracy=(s["static_correct"] / n).tolist(),
            static_cost_pct=[100 * m / ref for m in self.macs.classifier],
            accuracy_matrix=matrix,
            sweep=[
                {"tau": t, "cost_pct": 100 * float(m) / n / ref, "accuracy": float(c) / n}
                for t, c, m in zip(self.sweep_taus, s["sweep_correct"], s["sweep_macs"])
            ],
        )


@torch.no_grad()
def evaluate(
    model: Callable,
    loader,
    macs: CascadeMACs,
    config: EvalConfig | None = None,
    all_reduce: AllReduce = local_sum,
    device: torch.device | str = "cpu",
    theta: Sequence[float] | None = None,
) -> EvalReport:
    """Run `model` (a Cascade or an engine wrapping one) over `loader` and report the metrics."""
    was_training = model.training
    model.eval()
    evaluator = CascadeEvaluator(macs, config, theta)
    for images, targets in loader:
        out = model(images.to(device, non_blocking=True))
        evaluator.update(out.log_probs, out.stop_probs, targets, getattr(out, "stop_log_odds", None))
    model.train(was_training)
    evaluator.all_reduce(all_reduce)
    return evaluator.compute()
