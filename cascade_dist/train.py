"""`python -m cascade_dist.train`: train a cascade on Ray (see `cascade_dist.runtime.launch`)."""

import sys

from .runtime.launch import main

if __name__ == "__main__":
    sys.exit(main())
