"""`python tuning/sweep_alpha.py [--config FILE] [--alphas ...] [--policy-lrs ...] [--max-concurrent N] [key=value ...]`

Ray Tune sweep over the cost weight α × policy learning rate (and Ours / Ours (S)): a shared
warm-up, one training run per trial (a `TorchTrainer`, the same code path as
`python -m cascade_dist.train`), MLflow parent/child runs, the Pareto front and a Table-2 report.
Runs locally or under `ray job submit -- python tuning/sweep_alpha.py ...`. See cascade_dist/sweep/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root (ray job --working-dir)

from cascade_dist.sweep.driver import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
