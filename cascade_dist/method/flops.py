"""MACs accounting and the normalised cost vector of a cascade (DESIGN §1).

Convention: the paper's "FLOPs" are multiply-accumulates (MACs) per image. We count them with
`torch.utils.flop_counter.FlopCounterMode`, which reports 2 FLOPs per multiply-accumulate of the
convolutions and matrix products, so MACs = FLOPs / 2. Element-wise work (BN, ReLU, additions,
pooling) is not counted, as in the usual MACs tables.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of `module` on `example`, per sample."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(example)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2 // example.shape[0]


@dataclass(frozen=True)
class CascadeMACs:
    """Per-stage MACs of the classifiers C_t and their policies π_t (0 for the last stage)."""

    classifier: tuple[int, ...]
    policy: tuple[int, ...]

    @property
    def stage(self) -> tuple[int, ...]:
        """MACs of stage t: C_t plus π_t."""
        return tuple(c + p for c, p in zip(self.classifier, self.policy))

    @property
    def reference(self) -> int:
        """MACs of the largest classifier: the 100 % of every cost figure."""
        return max(self.classifier)

    def costs(self) -> torch.Tensor:
        """c_t = (MACs of C_t + MACs of π_t) / MACs of the largest classifier, shape (K,)."""
        return torch.tensor(self.stage, dtype=torch.float64).div(self.reference).float()

    def cumulative_macs(self) -> torch.Tensor:
        """MACs spent by an image that stops at stage k: Σ_{t≤k} stage MACs, shape (K,)."""
        return torch.tensor(self.stage, dtype=torch.float64).cumsum(0)
