"""A split reduced to what the stop thresholds change: O(N·K) numbers, never the (N, K, C) outputs.

Per image n and stage e the table holds the stop scores s[n, e] (the policies' log-odds, and where
asked the confidence scores of a threshold cascade over the same classifiers), whether the cascade
is right when n exits at e, whether classifier e alone is right, and the label. "Right" is top-k:
the label among the k most probable classes (k = `objective.topk`: 5 for the ImageNet configs, as
the paper's Table 2 there). Exiting at e with threshold θ (`ExitRule`) then reads off the table, so
the dense evaluation, calibration, the threshold baselines and the Table-2 protocol all count alike.

The table is built batch by batch (`ExitTableBuilder`, a `run_over` sink): its memory is
N·K·(4·scores + 2) bytes + 8·N, whatever the number of classes, and tables of disjoint shards
concatenate (`ExitTable.cat`), which is how the workers' parts are gathered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

SCORES = ("policy", "max_softmax", "entropy")
"""policy: the stop log-odds log π(stop) − log π(continue); max_softmax: logit of the classifier's
max softmax (monotone in it); entropy: −entropy of its softmax. The last stage always stops."""


def cascade_probs(
    log_probs: torch.Tensor, stop_probs: torch.Tensor, exits: torch.Tensor, ensemble: bool = True
) -> torch.Tensor:
    """Class probabilities of the cascade's prediction, (N, C): the exiting classifier's softmax, or
    (ensemble) the visited classifiers' softmaxes weighted by the stop probabilities they gave."""
    probs = log_probs.exp()
    if not ensemble:
        return probs[torch.arange(len(exits)), exits]
    stages = torch.arange(stop_probs.shape[1], device=stop_probs.device)
    weights = stop_probs * (stages[None, :] <= exits[:, None])
    return (weights[:, :, None] * probs).sum(1) / weights.sum(1, keepdim=True)


def topk_hits(probs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """True where the target is among the k most probable classes (last dim); k is capped at C."""
    k = min(int(k), probs.shape[-1])
    return (probs.topk(k, dim=-1).indices == targets.view(-1, *([1] * (probs.dim() - 1)))).any(-1)


def confidence_scores(log_probs: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, K) float32 stop scores of a threshold cascade over the classifiers (the last +inf)."""
    lp = log_probs.double()
    if kind == "max_softmax":
        top = lp.max(-1).values
        score = top - torch.log(-torch.expm1(top))  # logit of the max softmax; +inf where it is 1.0
    elif kind == "entropy":
        score = torch.special.xlogy(lp.exp(), lp.exp()).sum(-1)  # −entropy (0·log 0 = 0)
    else:
        raise ValueError(f"unknown confidence score {kind!r}: expected max_softmax or entropy")
    score[:, -1] = math.inf
    return score.float()


@dataclass
class ExitTable:
    """Per image and stage: stop scores, cascade and classifier correctness (top-k), and the labels."""

    scores: dict[str, torch.Tensor]
    """Each (N, K) float32: the scores named in `SCORES` that were recorded."""
    correct: torch.Tensor
    """(N, K) bool: the cascade's answer (with `ensemble`) is right if the image exits at stage e."""
    static_correct: torch.Tensor
    """(N, K) bool: classifier e alone is right (= `correct` without the ensemble)."""
    targets: torch.Tensor
    """(N,) int64."""
    topk: int = 1
    ensemble: bool = True

    @property
    def n(self) -> int:
        return len(self.targets)

    @property
    def k(self) -> int:
        return self.correct.shape[1]

    @property
    def nbytes(self) -> int:
        tensors = [*self.scores.values(), self.correct, self.static_correct, self.targets]
        return sum(t.numel() * t.element_size() for t in tensors)

    def view(self, score: str = "policy") -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, correct) of one exit rule: the policies answer as configured (`correct`); a
        confidence threshold answers with the exiting classifier alone (`static_correct`)."""
        if score not in self.scores:
            raise KeyError(f"score {score!r} was not recorded (this table has {sorted(self.scores)})")
        return self.scores[score], self.correct if score == "policy" else self.static_correct

    def accuracy(self, right: torch.Tensor, balanced: bool = False) -> float:
        """Mean of `right` (N,) over the images, or (balanced) the mean of the per-class means."""
        right = right.double()
        if not balanced:
            return float(right.mean())
        classes = self.targets.unique()
        return float(torch.stack([right[self.targets == c].mean() for c in classes]).mean())

    def accuracy_matrix(self, exits: torch.Tensor) -> list[list[float | None]]:
        """m[i][j]: accuracy of classifier i on the images exiting at stage j (the paper's Figure 4)."""
        onehot = torch.nn.functional.one_hot(exits, self.k).double()
        right, count = self.static_correct.double().T @ onehot, onehot.sum(0)
        return [[float(right[i, j] / count[j]) if count[j] > 0 else None for j in range(self.k)]
                for i in range(self.k)]

    @classmethod
    def cat(cls, parts: Sequence["ExitTable"]) -> "ExitTable":
        """The tables of disjoint parts of a split (batches, or the shards of several workers)."""
        if not parts:
            raise ValueError("no exit tables to concatenate (the split gave no images)")
        first = parts[0]
        return cls({s: torch.cat([p.scores[s] for p in parts]) for s in first.scores},
                   torch.cat([p.correct for p in parts]), torch.cat([p.static_correct for p in parts]),
                   torch.cat([p.targets for p in parts]), first.topk, first.ensemble)


class ExitTableBuilder:
    """`run_over` sink: one batch of dense cascade outputs at a time into table rows (on the CPU).

    The rows go into a few preallocated buffers that double when full, not into one small tensor
    per batch: small long-lived tensors between each batch's large temporaries fragment the heap,
    and the process then grows by about the batch's output size per batch (measured: 5 MB per
    (500, 3, 1000) batch with glibc), which is the N×K×C growth this table exists to avoid."""

    def __init__(self, topk: int = 1, ensemble: bool = True, scores: Sequence[str] = ("policy",)):
        unknown = set(scores) - set(SCORES)
        if unknown:
            raise ValueError(f"unknown scores {sorted(unknown)}: expected some of {', '.join(SCORES)}")
        self.topk, self.ensemble, self.score_names = int(topk), bool(ensemble), tuple(scores)
        self.n = 0
        self._buffers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, out, targets: torch.Tensor, images=None) -> None:
        rows = table_rows(out.log_probs, out.stop_probs, out.stop_log_odds, targets, self.topk, self.ensemble,
                          self.score_names)
        columns = {**{f"score:{s}": v for s, v in rows.scores.items()}, "correct": rows.correct,
                   "static_correct": rows.static_correct, "targets": rows.targets}
        end = self.n + rows.n
        for name, value in columns.items():
            buf = self._buffers.get(name)
            if buf is None or len(buf) < end:
                grown = torch.empty((max(end, 2 * (len(buf) if buf is not None else 0), 4096), *value.shape[1:]),
                                    dtype=value.dtype)
                if buf is not None:
                    grown[: self.n] = buf[: self.n]
                self._buffers[name] = buf = grown
            buf[self.n:end] = value
        self.n = end

    def table(self) -> ExitTable:
        if self.n == 0:
            raise ValueError("no exit tables to concatenate (the split gave no images)")
        b = {name: buf[: self.n].clone() for name, buf in self._buffers.items()}
        return ExitTable({s: b[f"score:{s}"] for s in self.score_names}, b["correct"], b["static_correct"],
                         b["targets"], self.topk, self.ensemble)


@torch.no_grad()
def table_rows(log_probs, stop_probs, stop_log_odds, targets, topk: int = 1, ensemble: bool = True,
               scores: Sequence[str] = ("policy",)) -> ExitTable:
    """The rows of one batch: dense outputs (N, K, C), π(stop) and the stop log-odds (N, K) in, N·K
    numbers out."""
    log_probs, stop_probs = log_probs.detach().float(), stop_probs.detach().float()
    targets = targets.to(log_probs.device)
    n, k, _ = log_probs.shape
    static = topk_hits(log_probs, targets, topk)  # (N, K)
    if ensemble:
        correct = torch.stack([topk_hits(cascade_probs(log_probs, stop_probs, torch.full((n,), e, device=log_probs.device),
                                                       True), targets, topk) for e in range(k)], 1)
    else:
        correct = static
    out = {}
    for s in scores:
        out[s] = stop_log_odds.detach().float() if s == "policy" else confidence_scores(log_probs, s)
    return ExitTable({s: v.cpu() for s, v in out.items()}, correct.cpu(), static.cpu(), targets.cpu().long(),
                     topk, ensemble)
