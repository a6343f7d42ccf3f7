"""Real early exit (DESIGN §1, test time): run stage t only on the images that have not stopped yet.

>>> predictor = CascadePredictor(cascade, tau=0.5)          # or theta=calibration.theta
>>> out = predictor(images)                                  # any batch size, CPU or GPU
>>> out.predictions, out.probs, out.exit_stage, out.macs

Stage 1 runs on the whole batch; the images whose policy says stop (log-odds d_t ≥ θ_t, i.e.
π_t ≥ τ_t) leave, and the rest are gathered into a smaller batch for stage 2, and so on: the
skipped stages cost nothing. The outputs of the visited stages are scattered back into (N, K, ·)
buffers and the exit stage and the ensemble come from the very functions the dense evaluation
uses (`ExitRule.exits`, `evaluate.cascade_probs`), so the two cannot drift apart.

Numerics: a stage run on a subset gives, per image, the same numbers as on the whole batch, with
one exception seen on CPU: a subset of exactly one image takes another convolution kernel, whose
logits differ in the last bits (~2e-6). Exit stages and predictions only change if a log-odds lies
that close to θ (or two classes tie that closely).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..method.evaluate import cascade_probs
from ..method.exit_rule import ExitRule
from ..method.models import CascadeOutput, StageRunner, dense_forward


@dataclass
class CascadePrediction:
    """Per-image results of a batch (N images, K stages, C classes), on the predictor's device.

    Stages an image did not visit hold log-prob -inf, stop probability 0 and log-odds -inf.
    """

    predictions: torch.Tensor
    """(N,) int64: argmax of `probs`."""
    probs: torch.Tensor
    """(N, C) class probabilities of the cascade (the stop-probability weighted ensemble)."""
    exit_stage: torch.Tensor
    """(N,) int64: 0-based index of the stage the image stopped at."""
    macs: torch.Tensor
    """(N,) float64: MACs actually spent on the image (classifiers and policies it ran)."""
    stage_log_probs: torch.Tensor
    """(N, K, C) log-softmax of each classifier the image visited."""
    stop_probs: torch.Tensor
    """(N, K) π_t(stop) the image was given at each visited stage."""
    stop_log_odds: torch.Tensor
    """(N, K) log-odds of stopping at each visited stage."""

    def __len__(self) -> int:
        return len(self.predictions)

    def visited(self) -> torch.Tensor:
        """(N, K) bool: stage t ran on image n."""
        stages = torch.arange(self.stop_probs.shape[1], device=self.exit_stage.device)
        return stages[None, :] <= self.exit_stage[:, None]

    @classmethod
    def cat(cls, parts: Sequence["CascadePrediction"]) -> "CascadePrediction":
        """Concatenate batches (e.g. over a loader)."""
        return cls(**{f: torch.cat([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__})


def _pick(log_probs, stop_probs, stop_log_odds, rule: ExitRule, cum_macs, ensemble) -> CascadePrediction:
    exits = rule.exits(stop_log_odds)
    probs = cascade_probs(log_probs, stop_probs, exits, ensemble)
    return CascadePrediction(probs.argmax(-1), probs, exits, cum_macs[exits], log_probs, stop_probs, stop_log_odds)


class CascadePredictor:
    """Batched early-exit inference over a trained cascade (eval mode, no autograd).

    Args:
        model: a `Cascade` (moved to `device`) or an `ExportedCascade`.
        tau: stop threshold on π, one value or one per stage but the last (ignored with `theta`).
        theta: log-odds thresholds instead of τ, e.g. `Calibration.theta` (any real).
        ensemble: the stop-probability weighted ensemble of the visited classifiers (else the
            exiting classifier alone).
    """

    def __init__(
        self,
        model: StageRunner,
        tau: float | Sequence[float] = 0.5,
        theta: Sequence[float] | None = None,
        ensemble: bool = True,
        device: torch.device | str | None = None,
    ):
        self.model = model
        if isinstance(model, torch.nn.Module):
            model.eval()
            if device is not None:
                model.to(device)
        self.device = torch.device(device) if device is not None else _device_of(model)
        self.rule = ExitRule.of(model.num_stages, tau, theta)
        self.ensemble = ensemble
        self.cum_macs = model.macs.cumulative_macs().to(self.device)

    @property
    def tau(self) -> list[float]:
        """The thresholds as stop probabilities (for display)."""
        return self.rule.tau

    @property
    def theta(self) -> torch.Tensor:
        """The log-odds thresholds (K,) float64, the last −inf (it always stops)."""
        return self.rule.thresholds(self.device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> CascadePrediction:
        images = images.to(self.device, non_blocking=True)
        n, k, c = images.shape[0], self.model.num_stages, self.model.num_classes
        log_probs = torch.full((n, k, c), -torch.inf, device=self.device)
        stop_probs = torch.zeros((n, k), device=self.device)
        stop_log_odds = torch.full((n, k), -torch.inf, device=self.device)
        going = torch.arange(n, device=self.device)  # indices of the images still in the cascade
        for t in range(k):
            if len(going) == 0:
                break
            out = self.model.run_stage(t, images)
            log_probs[going, t] = out.log_probs.float()
            stop_probs[going, t] = out.stop_prob.float()
            stop_log_odds[going, t] = out.stop_log_odds.float()
            if t < k - 1:
                keep = (~self.rule.stops(out.stop_log_odds, t)).nonzero().squeeze(1)
                going, images = going[keep], images[keep]
        return _pick(log_probs, stop_probs, stop_log_odds, self.rule, self.cum_macs, self.ensemble)

    @torch.inference_mode()
    def dense(self, images: torch.Tensor) -> CascadePrediction:
        """The reference: every stage on every image, then pick (what training-time evaluation does)."""
        return self.pick(dense_forward(self.model, images.to(self.device, non_blocking=True)))

    def pick(self, out: CascadeOutput) -> CascadePrediction:
        """Exit stages and ensemble from dense outputs (all stages, all images)."""
        return _pick(out.log_probs.float(), out.stop_probs.float(), out.stop_log_odds, self.rule, self.cum_macs,
                     self.ensemble)


def _device_of(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        return next(model.parameters()).device
    return torch.device(getattr(model, "device", "cpu"))
