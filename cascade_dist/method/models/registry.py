"""Classifier registry: `@register_classifier` entry points and one `create_classifier`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

_CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {}


def register_classifier(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an entry point `fn(num_classes, in_channels, **kw) -> nn.Module` under its name."""
    if fn.__name__ in _CLASSIFIERS:
        raise ValueError(f"classifier {fn.__name__!r} is registered twice")
    _CLASSIFIERS[fn.__name__] = fn
    return fn


def list_classifiers() -> list[str]:
    """Names accepted by `create_classifier`, sorted."""
    return sorted(_CLASSIFIERS)


def create_classifier(
    name: str, num_classes: int, in_channels: int = 3, weights: str | Path | None = None, **kwargs
) -> nn.Module:
    """Build a registered classifier returning logits (N, num_classes).

    `weights` is a local state-dict file (loaded with `weights_only=True`); nothing is downloaded.
    """
    if name not in _CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(list_classifiers())}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    model = _CLASSIFIERS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file for {name!r} not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[1:2] or [str(err)]
            raise ValueError(f"{path}: state dict does not fit {name!r}: {first[0].strip()}") from err
    return model
