"""The cascade: classifiers C_1..C_K of growing cost, a stopping policy per stage but the last.

`ModelConfig` is the config section that describes one (and `build()`s it); `cascade_macs` is the
one place the per-stage MACs, hence the cost vector c_t, are counted; `dense_forward` is the one
forward of every stage on every image (training and the dense evaluation), for a `Cascade` or any
other stage runner (an exported cascade).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Optional, Protocol, Sequence

import torch
from torch import nn

from ..flops import CascadeMACs, count_macs
from ..sections import Problem, Section
from .policy import StoppingPolicy, policy_problems
from .registry import create_classifier, list_classifiers


@dataclass
class CascadeOutput:
    """Every stage's output on a batch, in log space and float32 (DESIGN §1, numerics).

    log_probs: (N, K, C) log-softmax of each classifier C_t.
    log_stop: (N, K) log π_t(stop | s_t) from the policy's 2-way log-softmax; 0 in the last column
        (the last stage always stops).
    log_continue: (N, K) log π_t(continue | s_t) = log(1 − π_t), from the same log-softmax; −inf in
        the last column. Nothing downstream rebuilds a log from a clamped probability.
    """

    log_probs: torch.Tensor
    log_stop: torch.Tensor
    log_continue: torch.Tensor

    @property
    def stop_probs(self) -> torch.Tensor:
        """(N, K) π_t(stop); the last column is exactly 1 (saturates at 1.0 in float32 from log-odds ≈ 17)."""
        return self.log_stop.exp()

    @property
    def stop_log_odds(self) -> torch.Tensor:
        """(N, K) log π_t(stop) − log π_t(continue), +inf in the last column: what the test-time rule
        compares with logit τ (it orders images whose π is 1.0 in float32)."""
        return self.log_stop - self.log_continue


torch.export.register_dataclass(CascadeOutput, serialized_type_name="cascade_dist.CascadeOutput")


class StageOutput(NamedTuple):
    """One stage on a batch: C_t's log-softmax (N, C), log π_t(stop) (N,) and log π_t(continue) (N,)."""

    log_probs: torch.Tensor
    log_stop: torch.Tensor
    log_continue: torch.Tensor

    @property
    def stop_prob(self) -> torch.Tensor:
        return self.log_stop.exp()

    @property
    def stop_log_odds(self) -> torch.Tensor:
        return self.log_stop - self.log_continue


class StageRunner(Protocol):
    """What runs a cascade stage by stage: a `Cascade`, or an exported one (`inference.export`)."""

    names: list[str]
    num_classes: int
    macs: CascadeMACs

    @property
    def num_stages(self) -> int: ...

    def run_stage(self, t: int, images: torch.Tensor) -> StageOutput: ...


def module_dtype(module: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (`default` if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def stage_forward(classifier: nn.Module, policy: nn.Module | None, images: torch.Tensor) -> StageOutput:
    """Stage t of the cascade; `policy=None` is the last stage (log π = 0, log(1 − π) = −inf).

    The images are cast to the classifier's weight dtype (a bf16 engine's model takes bf16 inputs);
    the log-softmaxes are taken in float32 whatever the dtype of the layers before them.
    """
    log_probs = torch.log_softmax(classifier(images.to(module_dtype(classifier, images.dtype))).float(), dim=-1)
    if policy is None:
        zeros = torch.zeros_like(log_probs[:, 0])
        return StageOutput(log_probs, zeros, torch.full_like(zeros, -float("inf")))
    log_pi = policy(log_probs.exp())
    return StageOutput(log_probs, log_pi[:, StoppingPolicy.STOP], log_pi[:, StoppingPolicy.CONTINUE])


def dense_forward(model: StageRunner, images: torch.Tensor) -> CascadeOutput:
    """Every stage on every image, stacked to (N, K, ·): what training and dense evaluation run."""
    outs = [model.run_stage(t, images) for t in range(model.num_stages)]
    return CascadeOutput(*(torch.stack(parts, dim=1) for parts in zip(*outs)))


@functools.lru_cache(maxsize=64)
def cascade_macs(
    classifiers: tuple[str, ...], num_classes: int, input_shape: tuple[int, int, int], policy_hidden: int
) -> CascadeMACs:
    """MACs of every stage (C_t and π_t) on one image of `input_shape` (C, H, W), counted on the
    meta device: no weights are allocated, so a config can be costed without building its cascade."""
    with torch.device("meta"):
        image = torch.zeros(1, *input_shape)
        probs = torch.zeros(1, num_classes)
        classifier = tuple(count_macs(create_classifier(n, num_classes, input_shape[0]), image) for n in classifiers)
        policy = count_macs(StoppingPolicy(num_classes, policy_hidden), probs)
    return CascadeMACs(classifier, (policy,) * (len(classifier) - 1) + (0,))


@dataclass
class ModelConfig(Section):
    """The cascade: classifier names in order of cost, the data's shape, and the policies."""

    classifiers: list[str] = field(default_factory=lambda: ["preact_resnet8", "preact_resnet20"])
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    policy_hidden: int = 64
    policy_input: str = "softmax"
    """What π_t reads: "softmax" (the paper's) or "sorted_softmax" (its sorted confidence profile)."""
    weights: Optional[list[Optional[str]]] = None
    """Local state-dict files, one per classifier (null entries: random init)."""

    def problems(self) -> list[Problem]:
        out = []
        known = list_classifiers()
        for i, name in enumerate(self.classifiers):
            if name not in known:
                out.append((f"classifiers[{i}]", f"unknown classifier {name!r}; known: {', '.join(known)}"))
        if len(self.classifiers) < 2:
            out.append(("classifiers", f"a cascade needs K >= 2 classifiers, got {len(self.classifiers)}"))
        for key in ("num_classes", "in_channels", "image_size"):
            if getattr(self, key) < 1:
                out.append((key, f"must be >= 1, got {getattr(self, key)}"))
        out += policy_problems(self.policy_hidden, self.policy_input)
        if self.weights is not None and len(self.weights) != len(self.classifiers):
            out.append(("weights", f"{len(self.weights)} files for {len(self.classifiers)} classifiers"))
        return out

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def macs(self) -> CascadeMACs:
        """The per-stage MACs of the cascade this config describes (without building it)."""
        return cascade_macs(tuple(self.classifiers), self.num_classes, self.input_shape, self.policy_hidden)

    def build(self) -> "Cascade":
        return Cascade(self.classifiers, self.num_classes, self.in_channels, self.image_size, self.policy_hidden,
                       self.weights, self.policy_input)


class Cascade(nn.Module):
    """K ≥ 2 registered classifiers, K-1 stopping policies, and the per-stage cost vector.

    Training runs every stage on every image (`forward`); real early exit is the predictor's job
    (`cascade_dist.inference.predictor`) and uses `run_stage` one stage at a time.
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
        self.macs: CascadeMACs = cascade_macs(tuple(names), num_classes, self.input_shape, policy_hidden)
        self.register_buffer("costs", self.macs.costs(), persistent=False)

    @property
    def num_stages(self) -> int:
        return len(self.classifiers)

    def run_stage(self, t: int, images: torch.Tensor) -> StageOutput:
        """Stage t alone on `images`: what the early-exit predictor runs on the images still going."""
        return stage_forward(self.classifiers[t], self.policies[t] if t < self.num_stages - 1 else None, images)

    def forward(self, images: torch.Tensor) -> CascadeOutput:
        return dense_forward(self, images)

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        return self.classifiers.parameters()

    def policy_parameters(self) -> Iterator[nn.Parameter]:
        return self.policies.parameters()
