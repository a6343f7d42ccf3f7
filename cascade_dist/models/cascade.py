"""The cascade: classifiers C_1..C_K of growing cost, a stopping policy per stage but the last."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import torch
from torch import nn

from ..flops import CascadeMACs, cascade_macs
from .policy import StoppingPolicy
from .registry import create_classifier


@dataclass
class CascadeOutput:
    """Every stage's output on a batch.

    log_probs: (N, K, C) log-softmax of each classifier C_t.
    stop_probs: (N, K) π_t(stop | s_t); the last column is exactly 1 (the last stage always stops).
    stop_log_odds: (N, K) log π_t(stop) − log π_t(continue), +inf in the last column: what the
        test-time rule compares with logit τ (π itself saturates at 1.0 in float32).
    """

    log_probs: torch.Tensor
    stop_probs: torch.Tensor
    stop_log_odds: torch.Tensor | None = None


torch.export.register_dataclass(CascadeOutput, serialized_type_name="cascade_dist.CascadeOutput")


class StageOutput(NamedTuple):
    """One stage on a batch: C_t's log-softmax (N, C), π_t(stop) (N,) and its log-odds (N,)."""

    log_probs: torch.Tensor
    stop_prob: torch.Tensor
    stop_log_odds: torch.Tensor


def stage_forward(classifier: nn.Module, policy: nn.Module | None, images: torch.Tensor) -> StageOutput:
    """Stage t of the cascade; `policy=None` is the last stage (π = 1, log-odds = +inf)."""
    log_probs = torch.log_softmax(classifier(images), dim=-1)
    if policy is None:
        ones = torch.ones_like(log_probs[:, 0])
        return StageOutput(log_probs, ones, torch.full_like(ones, float("inf")))
    log_pi = policy(log_probs.exp())
    return StageOutput(log_probs, log_pi[:, StoppingPolicy.STOP].exp(), StoppingPolicy.log_odds(log_pi))


class Cascade(nn.Module):
    """K ≥ 2 registered classifiers, K-1 stopping policies, and the per-stage cost vector.

    Training runs every stage on every image (`forward`); real early exit is the predictor's job
    (`cascade_dist.predictor`) and uses `run_stage` one stage at a time.
    """

    def __init__(
        self,
        classifiers: Sequence[str],
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        policy_hidden: int = 64,
        weights: Sequence[str | None] | None = None,
        policy_input: str = "softmax",
    ):
        super().__init__()
        names = list(classifiers)
        if len(names) < 2:
            raise ValueError(f"a cascade needs K >= 2 classifiers, got {len(names)}: {names}")
        weights = list(weights) if weights is not None else [None] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"got {len(weights)} weight files for {len(names)} classifiers")
        self.names = names
        self.num_classes = num_classes
        self.input_shape = (in_channels, image_size, image_size)
        self.classifiers = nn.ModuleList(
            create_classifier(n, num_classes, in_channels, weights=w) for n, w in zip(names, weights)
        )
        self.policies = nn.ModuleList(
            StoppingPolicy(num_classes, policy_hidden, policy_input) for _ in range(len(names) - 1)
        )
        self.macs: CascadeMACs = cascade_macs(
            self.classifiers, self.policies, self.input_shape, num_classes
        )
        self.register_buffer("costs", self.macs.costs(), persistent=False)

    @property
    def num_stages(self) -> int:
        return len(self.classifiers)

    def run_stage(self, t: int, images: torch.Tensor) -> StageOutput:
        """Stage t alone on `images`: what the early-exit predictor runs on the images still going."""
        return stage_forward(self.classifiers[t], self.policies[t] if t < self.num_stages - 1 else None, images)

    def forward(self, images: torch.Tensor) -> CascadeOutput:
        outs = [self.run_stage(t, images) for t in range(self.num_stages)]
        return CascadeOutput(*(torch.stack(parts, dim=1) for parts in zip(*outs)))

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        return self.classifiers.parameters()

    def policy_parameters(self) -> Iterator[nn.Parameter]:
        return self.policies.parameters()
