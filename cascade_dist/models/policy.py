"""The stopping policy π_t (DESIGN §1): a 3-layer MLP over C_t's softmax ending in a 2-way softmax."""

from __future__ import annotations

import torch
from torch import nn


class StoppingPolicy(nn.Module):
    """π_t(s_t): Linear-ReLU-Linear-ReLU-Linear over the class probabilities s_t.

    Hidden width 64 for CIFAR-sized data, 256 for ImageNet. `forward` returns the 2-way
    log-softmax with column 0 = log π_t(stop) and column 1 = log (1 - π_t(stop)).
    """

    STOP, CONTINUE = 0, 1

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"policy hidden width must be >= 1, got {hidden}")
        self.net = nn.Sequential(
            nn.Linear(num_classes, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2),
        )

    def forward(self, class_probs: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(class_probs), dim=-1)
