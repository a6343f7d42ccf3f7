"""cascade_dist: distributed training of cascaded deep classifiers with a learned stopping policy.

Guan, Liu, Liu, Peng, "Energy-efficient Amortized Inference with Cascaded Deep Classifiers",
IJCAI 2018 (arXiv 1710.03368).

Layers (imports point down only): `method` (pure PyTorch) and `data` (loaders) ← `inference`
(early exit, calibration, export) ← `runtime` (config, Ray Train + DeepSpeed worker, checkpoints,
MLflow) ← `sweep` (Ray Tune, Pareto front, baselines).
"""

from .inference import Calibration, CascadePrediction, CascadePredictor, calibrate
from .method import (Cascade, CascadeEvaluator, CascadeMACs, CascadeOutput, EvalConfig, EvalReport, ExitRule,
                     LocalEngine, ModelConfig, ObjectiveConfig, OptimConfig, StoppingPolicy, build_optimizer,
                     cascade_loss, cascade_macs, cascade_probs, count_macs, create_classifier, evaluate,
                     exit_distribution, exit_stages, fit, list_classifiers, train_epoch, training_step, warmup_loss)

__version__ = "0.1.0"
__all__ = [
    "Calibration", "Cascade", "CascadeEvaluator", "CascadeMACs", "CascadeOutput", "CascadePrediction",
    "CascadePredictor", "EvalConfig", "EvalReport", "ExitRule", "LocalEngine", "ModelConfig", "ObjectiveConfig",
    "OptimConfig", "StoppingPolicy", "build_optimizer", "calibrate", "cascade_loss", "cascade_macs", "cascade_probs",
    "count_macs", "create_classifier", "evaluate", "exit_distribution", "exit_stages", "fit", "list_classifiers",
    "train_epoch", "training_step", "warmup_loss",
]
