"""The α sweep behind `python tuning/sweep_alpha.py` (Ray Tune), the Pareto front and report, and
the Table-2 baselines. The top layer: imports the runtime and everything below it."""

from .driver import main
from .trials import Trial, TrialSpec, budget_choice, next_alpha

__all__ = ["Trial", "TrialSpec", "budget_choice", "main", "next_alpha"]
