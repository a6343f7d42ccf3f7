"""`python tuning/table2.py --config CONFIG --seeds 0 1 2 --out results/DIR [--balanced] [key=value ...]`

Table 2 on real data with controls and seeds: static classifiers trained alone for the same total
epochs, Ours (joint REINFORCE, the recommended and the paper's recipes), Ours (S), and
confidence/entropy-threshold cascades over the same classifiers, each at operating points chosen
on the held-out split. See cascade_dist/sweep/protocol.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root (ray job --working-dir)

from cascade_dist.sweep.table2 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
