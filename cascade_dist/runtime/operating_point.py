"""The operating point a user gets, chosen in training: in budget mode, the stop thresholds θ are
calibrated at the end of every joint epoch on the held-out split (`data.calibration_split`) so that
the *hard-exit* cost, what the deployed cascade spends, meets `objective.budget`. (Dual ascent holds
the expected training cost, Σ_k Π(k|x)·cum_k of the soft policy, at the budget; the hard exits of
τ = 0.5 can land far from it.) The calibration is saved in the checkpoint, where
`python -m cascade_dist.predict` finds it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..inference.calibration import Calibration, calibrate, collect_outputs
from ..method.models import CascadeOutput


def gathered(outputs: CascadeOutput, targets: torch.Tensor) -> tuple[CascadeOutput, torch.Tensor]:
    """Every rank's held-out outputs on every rank (rank order), so that all compute one θ."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return outputs, targets
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (outputs.log_probs, outputs.log_stop, outputs.log_continue, targets))
    return CascadeOutput(*(torch.cat([p[i] for p in parts]) for i in range(3))), torch.cat([p[3] for p in parts])


def budget_calibration(engine, macs, held_out_loader, budget_pct: float, ensemble: bool, split: str,
                       device) -> Calibration:
    """θ whose hard-exit cost on the held-out split is the largest within the budget (one θ for all stages)."""
    outputs, targets = collect_outputs(engine, held_out_loader, device)
    outputs, targets = gathered(outputs, targets)
    return calibrate(outputs, targets, macs, budget=budget_pct, ensemble=ensemble, split=split)


def describe(calibration: Calibration) -> str:
    return f"theta calibrated on {calibration.split} to {calibration.value:g} % cost"
