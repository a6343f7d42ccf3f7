"""`python -m cascade_dist.predict`: real early exit over a split (see `cascade_dist.inference.cli`)."""

import sys

from .inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
