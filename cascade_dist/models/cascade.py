"""The cascade: classifiers C_1..C_K of growing cost, a stopping policy per stage but the last."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

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
    """

    log_probs: torch.Tensor
    stop_probs: torch.Tensor


torch.export.register_dataclass(CascadeOutput, serialized_type_name="cascade_dist.CascadeOutput")


class Cascade(nn.Module):
    """K ≥ 2 registered classifiers, K-1 stopping policies, and the per-stage cost vector.

    Training runs every stage on every image (`forward`); real early exit is the predictor's job
    and uses `stage` one stage at a time.
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

    def stage(self, t: int, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """C_t's log-softmax (N, C) and π_t(stop) (N,) on `images`; π = 1 at the last stage."""
        log_probs = torch.log_softmax(self.classifiers[t](images), dim=-1)
        if t == self.num_stages - 1:
            return log_probs, torch.ones_like(log_probs[:, 0])
        stop = self.policies[t](log_probs.exp())[:, StoppingPolicy.STOP].exp()
        return log_probs, stop

    def forward(self, images: torch.Tensor) -> CascadeOutput:
        outs = [self.stage(t, images) for t in range(self.num_stages)]
        return CascadeOutput(
            log_probs=torch.stack([lp for lp, _ in outs], dim=1),
            stop_probs=torch.stack([sp for _, sp in outs], dim=1),
        )

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        return self.classifiers.parameters()

    def policy_parameters(self) -> Iterator[nn.Parameter]:
        return self.policies.parameters()
