"""Every epoch of a trial's Train run, reported to the Tune trial that launched it (Ray Train V2's
pattern: a `TorchTrainer` inside a Tune function trainable, its metrics handed on by Ray's
`TuneReportCallback`). Imported inside the trial only: it needs Ray Tune.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

from ray.tune.integration.ray_train import TuneReportCallback

from .pareto import Point, accuracy_at_cost
from .scheduling import SCORE, TIME_ATTR


class EpochReports(TuneReportCallback):
    """Rank 0's report of each epoch, completed with the trial's name, its joint epoch (Tune's time
    axis: 1 after the first joint epoch, <= 0 in warm-up epochs), the score against `reference`
    (`sweep.scheduling`), the α reached (dual ascent) and the seconds since the trial started."""

    def __init__(self, run_name: str, warmup_epochs: int, alpha: float, reference: Sequence[Point]):
        super().__init__()
        self.run_name, self.warmup_epochs, self.alpha = run_name, warmup_epochs, alpha
        self.reference = list(reference)
        self.start = time.time()

    def tune_metrics(self, metrics: dict, checkpoint_path: Optional[str] = None) -> dict:
        out = {**metrics, "run_name": self.run_name, TIME_ATTR: int(metrics["epoch"]) + 1 - self.warmup_epochs,
               "trial_seconds": time.time() - self.start, "alpha_end": metrics.get("train_alpha_end", self.alpha)}
        if self.reference:
            out[SCORE] = metrics["accuracy"] - accuracy_at_cost(self.reference, metrics["cost_pct"])
        if checkpoint_path:
            out["checkpoint_path"] = checkpoint_path
        return out

    def after_report(self, run_context, metrics, checkpoint):
        if "epoch_step" in metrics[0]:  # a step checkpoint (run.checkpoint_every_steps): no epoch's result
            return
        super().after_report(run_context, [self.tune_metrics(metrics[0]), *metrics[1:]], checkpoint)
