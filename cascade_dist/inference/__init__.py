"""Inference: real batched early exit, threshold calibration, per-stage export, the weights loader,
figures, and `python -m cascade_dist.predict`. Imports the method and data layers only."""

from .calibration import Calibration, calibrate, collect_exit_table
from .export import ExportedCascade, export_cascade
from .predictor import CascadePrediction, CascadePredictor
from .weights import LoadedCascade, find_checkpoint, load_cascade, save_weights

__all__ = [
    "Calibration", "CascadePrediction", "CascadePredictor", "ExportedCascade", "LoadedCascade", "calibrate",
    "collect_exit_table", "export_cascade", "find_checkpoint", "load_cascade", "save_weights",
]
