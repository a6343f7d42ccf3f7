"""Test-time metrics of a cascade (DESIGN §1; the paper's Table 2, Figures 4–5), and the one loop
that runs a model over a loader.

An image stops where the `ExitRule` says (the first stage t with π_t(stop) ≥ τ_t). The prediction
is the ensemble of the visited classifiers' softmaxes weighted by the stop probabilities they gave
(or, with `ensemble=False`, the exiting classifier's softmax alone). Accuracy is top-k with the
run's k (`objective.topk`), everywhere: the cascade, each classifier, the matrix and the τ sweep,
all read off the batch's `ExitTable` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from .exit_rule import ExitRule, check_tau, log_odds_of
from .exit_table import ExitTable, cascade_probs, table_rows, topk_hits
from .flops import CascadeMACs
from .objective import AllReduce, local_sum
from .sections import Problem, Section

DEFAULT_SWEEP = tuple(round(t, 3) for t in torch.linspace(0.05, 0.95, 19).tolist())


@dataclass
class EvalConfig(Section):
    """Operating point and sweep of the test-time cascade."""

    tau: list[float] = field(default_factory=lambda: [0.5])
    """Stop threshold: one value, or one per stage except the last."""
    ensemble: bool = True
    sweep: list[float] = field(default_factory=lambda: list(DEFAULT_SWEEP))

    def problems(self) -> list[Problem]:
        out = []
        for key in ("tau", "sweep"):
            value = getattr(self, key)
            for t in value if isinstance(value, (list, tuple)) else [value]:
                try:
                    check_tau(t)
                except ValueError as err:
                    out.append((key, str(err).replace("tau ", "", 1)))
        return out

    def rule(self, num_stages: int) -> ExitRule:
        return ExitRule.from_tau(self.tau, num_stages)


Sink = Callable[[Any, torch.Tensor, torch.Tensor], None]
"""Receives each batch's (model outputs, targets, images) from `run_over`."""


@torch.no_grad()
def run_over(model: Callable, loader: Iterable, *sinks: Sink, device: torch.device | str = "cpu") -> int:
    """The one loop over a loader: `model` (a cascade, an engine wrapping one, an exported cascade
    or an early-exit predictor) runs on each batch in eval mode, and every sink gets
    (outputs, targets, images). Returns the number of images."""
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    n = 0
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            out = model(images)
            for sink in sinks:
                sink(out, targets, images)
            n += len(targets)
    finally:
        if was_training is not None:
            model.train(was_training)
    return n


@dataclass
class EvalReport:
    """Metrics of one evaluation of the cascade (floats and lists: JSON- and MLflow-ready)."""

    num_samples: int
    tau: list[float]
    accuracy: float
    """Top-k accuracy, k = `topk` (as every accuracy below but the top-1 and top-5 side metrics)."""
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
    operating_point: str | None = None
    """How the thresholds were chosen, when not the config's τ (e.g. calibrated to a budget)."""
    topk: int = 1
    top1_accuracy: float | None = None

    def table(self, names: Sequence[str] | None = None) -> str:
        """The summary table: each classifier alone, the cascade, and where images stop."""
        names = list(names or [f"C{t + 1}" for t in range(len(self.static_accuracy))])
        point = self.operating_point or "tau=" + "/".join(f"{t:.2f}" for t in self.tau)
        width = max(len(n) for n in [*names, f"cascade ({point})"]) + 2
        head = "accuracy %" if self.topk == 1 else f"top-{self.topk} %"
        lines = [f"{'model':<{width}}{head:>11}{'cost %':>9}{'exits %':>9}", "-" * (width + 29)]
        for name, acc, cost, frac in zip(names, self.static_accuracy, self.static_cost_pct, self.exit_fractions):
            lines.append(f"{name:<{width}}{100 * acc:>11.2f}{cost:>9.2f}{100 * frac:>9.1f}")
        lines.append(f"{'cascade (' + point + ')':<{width}}{100 * self.accuracy:>11.2f}{self.cost_pct:>9.2f}{'-':>9}")
        lines.append(f"largest classifier alone{'' if self.topk == 1 else f' (top-{self.topk})'}: "
                     f"{100 * self.static_accuracy[-1]:.2f} % at 100 % cost; "
                     f"cascade: {100 * self.accuracy:.2f} % at {self.cost_pct:.2f} % "
                     f"({self.macs_per_image / 1e6:.2f} M MACs per image, {self.num_samples} images)")
        return "\n".join(lines)

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics for trackers."""
        out = {"accuracy": self.accuracy, "cost_pct": self.cost_pct, "macs_per_image": self.macs_per_image}
        if self.top1_accuracy is not None and self.topk != 1:
            out["top1_accuracy"] = self.top1_accuracy
        if self.top5_accuracy is not None:
            out["top5_accuracy"] = self.top5_accuracy
        for t, (f, a) in enumerate(zip(self.exit_fractions, self.static_accuracy)):
            out[f"exit_frac_stage{t}"] = f
            out[f"static_accuracy_stage{t}"] = a
        return out


class CascadeEvaluator:
    """Accumulates sufficient statistics over batches; all-reducible, then `compute()`."""

    def __init__(self, macs: CascadeMACs, config: EvalConfig | None = None, theta: Sequence[float] | None = None,
                 topk: int = 1):
        """`theta`: log-odds thresholds (1 or K-1) in place of `config.tau`, e.g. a calibrated θ;
        `topk`: the accuracy's k (the run's `objective.topk`)."""
        self.config = config or EvalConfig()
        self.topk = int(topk)
        self.macs = macs
        k = len(macs.classifier)
        self.rule = ExitRule.of(k, self.config.tau, theta)
        taus = self.config.tau if isinstance(self.config.tau, (list, tuple)) else [self.config.tau]
        self.tau = self.rule.tau if theta is not None else [float(t) for t in taus] * (k - 1 if len(taus) == 1 else 1)
        self.sweep_taus = list(self.config.sweep)
        self.sweep_rules = [ExitRule.from_tau(t, k) for t in self.sweep_taus]
        self.cum_macs = macs.cumulative_macs()
        self.num_classes = 0
        self.sums = {
            "n": torch.zeros((), dtype=torch.float64),
            "correct": torch.zeros((), dtype=torch.float64),
            "correct1": torch.zeros((), dtype=torch.float64),
            "correct5": torch.zeros((), dtype=torch.float64),
            "exits": torch.zeros(k, dtype=torch.float64),
            "static_correct": torch.zeros(k, dtype=torch.float64),
            "matrix_correct": torch.zeros(k, k, dtype=torch.float64),
            "sweep_correct": torch.zeros(len(self.sweep_taus), dtype=torch.float64),
            "sweep_macs": torch.zeros(len(self.sweep_taus), dtype=torch.float64),
        }

    def __call__(self, out, targets: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """`run_over`'s sink: one batch of a cascade's dense outputs."""
        self.update(out.log_probs, out.stop_probs, targets, out.stop_log_odds)

    @torch.no_grad()
    def update(
        self, log_probs: torch.Tensor, stop_probs: torch.Tensor, targets: torch.Tensor,
        stop_log_odds: torch.Tensor | None = None,
    ) -> None:
        """One batch of dense outputs. The rule is d ≥ θ on the model's stop log-odds; without them
        d = logit π (the same rule, blind only where π rounds to 0 or 1)."""
        log_probs, stop_probs, targets = (x.detach().float().cpu() for x in (log_probs, stop_probs, targets))
        stop_log_odds = log_odds_of(stop_probs) if stop_log_odds is None else stop_log_odds.detach().float().cpu()
        rows = table_rows(log_probs, stop_probs, stop_log_odds, targets, self.topk, self.config.ensemble)
        exits = self.rule.exits(stop_log_odds)
        probs = cascade_probs(log_probs, stop_probs, exits, self.config.ensemble)
        self.num_classes = probs.shape[1]
        self.sums["correct1"] += topk_hits(probs, targets, 1).sum()
        if probs.shape[1] >= 5:
            self.sums["correct5"] += topk_hits(probs, targets, 5).sum()
        self.update_table(rows)

    @torch.no_grad()
    def update_table(self, table: ExitTable, score: str = "policy") -> None:
        """Rows of an `ExitTable` (the top-1/top-5 side metrics need `update`'s dense outputs)."""
        scores, correct = table.view(score)
        correct, static = correct.double(), table.static_correct.double()
        exits = self.rule.exits(scores)
        onehot = torch.nn.functional.one_hot(exits, table.k).double()
        s = self.sums
        s["n"] += table.n
        s["correct"] += correct.gather(1, exits[:, None]).sum()
        s["exits"] += onehot.sum(0)
        s["static_correct"] += static.sum(0)
        s["matrix_correct"] += static.T @ onehot
        for i, rule in enumerate(self.sweep_rules):
            ex = rule.exits(scores)
            s["sweep_correct"][i] += correct.gather(1, ex[:, None]).sum()
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
            top1_accuracy=float(s["correct1"]) / n if self.num_classes else None,
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
            topk=self.topk,
        )


def evaluate(
    model: Callable,
    loader,
    macs: CascadeMACs,
    config: EvalConfig | None = None,
    all_reduce: AllReduce = local_sum,
    device: torch.device | str = "cpu",
    theta: Sequence[float] | None = None,
    topk: int = 1,
) -> EvalReport:
    """Run `model` (a Cascade or an engine wrapping one) over `loader` and report the metrics (top-k)."""
    evaluator = CascadeEvaluator(macs, config, theta, topk)
    run_over(model, loader, evaluator, device=device)
    evaluator.all_reduce(all_reduce)
    return evaluator.compute()
