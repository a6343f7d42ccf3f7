"""The operating point a user gets, chosen in training: in budget mode, the stop thresholds θ are
calibrated at the end of every joint epoch on the held-out split (`data.calibration_split`) so that
the *hard-exit* cost, what the deployed cascade spends, meets `objective.budget`. (Dual ascent holds
the expected training cost, Σ_k Π(k|x)·cum_k of the soft policy, at the budget; the hard exits of
τ = 0.5 can land far from it.) Each worker reduces its shard of the split to an `ExitTable`
(N·K numbers); the tables are all-gathered, so every rank computes the same θ. The calibration is
saved in the checkpoint, where `python -m cascade_dist.predict` finds it.
"""

from __future__ import annotations

import torch.distributed as dist

from ..inference.calibration import Calibration, calibrate, collect_exit_table
from ..method.exit_table import ExitTable


def gathered(table: ExitTable) -> ExitTable:
    """Every rank's exit table on every rank (rank order)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return table
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, table)
    return ExitTable.cat(parts)


def budget_calibration(engine, macs, held_out_loader, budget_pct: float, ensemble: bool, split: str,
                       device, topk: int = 1) -> Calibration:
    """θ whose hard-exit cost on the held-out split is the largest within the budget (one θ for all stages)."""
    table = gathered(collect_exit_table(engine, held_out_loader, topk=topk, ensemble=ensemble, device=device))
    return calibrate(table, macs, budget=budget_pct, split=split)


def describe(calibration: Calibration) -> str:
    return f"theta calibrated on {calibration.split} to {calibration.value:g} % cost"
