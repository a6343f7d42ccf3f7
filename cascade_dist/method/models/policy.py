"""The stopping policy π_t (DESIGN §1): a 3-layer MLP over C_t's softmax ending in a 2-way softmax."""

from __future__ import annotations

import torch
from torch import nn

POLICY_INPUTS = ("softmax", "sorted_softmax")


def policy_problems(hidden: int, input: str) -> list[tuple[str, str]]:
    """The policy's argument checks (used by `StoppingPolicy` and by the model config)."""
    out = []
    if hidden < 1:
        out.append(("policy_hidden", f"must be >= 1, got {hidden}"))
    if input not in POLICY_INPUTS:
        out.append(("policy_input", f"must be one of {POLICY_INPUTS}, got {input!r}"))
    return out


class StoppingPolicy(nn.Module):
    """π_t(s_t): Linear-ReLU-Linear-ReLU-Linear over the class probabilities s_t.

    Hidden width 64 for CIFAR-sized data, 256 for ImageNet. `forward` returns the 2-way
    log-softmax with column 0 = log π_t(stop) and column 1 = log (1 - π_t(stop)).

    `input="sorted_softmax"` feeds s_t sorted in decreasing order: the confidence profile, the same
    for every class, which the policy learns from in a fraction of the updates (the paper's
    `input="softmax"` must first learn that profile separately for each class).
    """

    STOP, CONTINUE = 0, 1

    def __init__(self, num_classes: int, hidden: int = 64, input: str = "softmax"):
        super().__init__()
        problems = policy_problems(hidden, input)
        if problems:  # "policy input must be one of ..."
            raise ValueError("; ".join(f"{f.replace('_', ' ')} {m}" for f, m in problems))
        self.sort_input = input == "sorted_softmax"
        self.net = nn.Sequential(
            nn.Linear(num_classes, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2),
        )

    def forward(self, class_probs: torch.Tensor) -> torch.Tensor:
        """(N, 2) log-softmax in float32: [log π(stop), log π(continue)].

        The input (float32 probabilities) is cast to the weights' dtype, so a bf16-cast policy runs."""
        class_probs = class_probs.to(self.net[0].weight.dtype)
        if self.sort_input:
            class_probs = class_probs.sort(dim=-1, descending=True).values
        return torch.log_softmax(self.net(class_probs).float(), dim=-1)
