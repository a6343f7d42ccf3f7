"""The stopping policy π_t (DESIGN §1): a 3-layer MLP over C_t's softmax ending in a 2-way softmax."""

from __future__ import annotations

import torch
from torch import nn


class StoppingPolicy(nn.Module):
    """π_t(s_t): Linear-ReLU-Linear-ReLU-Linear over the class probabilities s_t.

    Hidden width 64 for CIFAR-sized data, 256 for ImageNet. `forward` returns the 2-way
    log-softmax with column 0 = log π_t(stop) and column 1 = log (1 - π_t(stop)).

    `input="sorted_softmax"` feeds s_t sorted in decreasing order: the confidence profile, the same
    for every class, which the policy learns from in a fraction of the updates (the paper's
    `input="softmax"` must first learn that profile separately for each class).
    """

    STOP, CONTINUE = 0, 1
    INPUTS = ("softmax", "sorted_softmax")

    def __init__(self, num_classes: int, hidden: int = 64, input: str = "softmax"):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"policy hidden width must be >= 1, got {hidden}")
        if input not in self.INPUTS:
            raise ValueError(f"policy input must be one of {self.INPUTS}, got {input!r}")
        self.sort_input = input == "sorted_softmax"
        self.net = nn.Sequential(
            nn.Linear(num_classes, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2),
        )

    def forward(self, class_probs: torch.Tensor) -> torch.Tensor:
        if self.sort_input:
            class_probs = class_probs.sort(dim=-1, descending=True).values
        return torch.log_softmax(self.net(class_probs), dim=-1)

    @classmethod
    def log_odds(cls, log_pi: torch.Tensor) -> torch.Tensor:
        """log π(stop) − log π(continue) from `forward`'s output, (N,).

        Never saturates, unlike π(stop) itself (which is exactly 1.0 in float32 from log-odds ≈ 17
        on): the test-time rule π ≥ τ is applied as log-odds ≥ logit τ (`evaluate.log_odds_thresholds`).
        """
        return log_pi[:, cls.STOP] - log_pi[:, cls.CONTINUE]
