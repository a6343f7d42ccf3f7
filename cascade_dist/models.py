"""`cascade_dist.models`: the classifier registry and the cascade (they live in `cascade_dist.method.models`)."""

from .method.models import *  # noqa: F401,F403
from .method.models import __all__  # noqa: F401
