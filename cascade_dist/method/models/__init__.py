"""Classifier registry, stopping policy and cascade."""

from . import imagenet, preact_resnet, wide_resnet  # noqa: F401  (register the entry points)
from .cascade import (Cascade, CascadeOutput, ModelConfig, StageOutput, StageRunner, cascade_macs, dense_forward,
                      stage_forward)
from .policy import StoppingPolicy
from .registry import create_classifier, list_classifiers, register_classifier

__all__ = [
    "Cascade",
    "CascadeOutput",
    "ModelConfig",
    "StageOutput",
    "StageRunner",
    "StoppingPolicy",
    "cascade_macs",
    "create_classifier",
    "dense_forward",
    "list_classifiers",
    "register_classifier",
    "stage_forward",
]
