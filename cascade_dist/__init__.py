"""cascade_dist: distributed training of cascaded deep classifiers with a learned stopping policy.

Guan, Liu, Liu, Peng, "Energy-efficient Amortized Inference with Cascaded Deep Classifiers",
IJCAI 2018 (arXiv 1710.03368).
"""

from .calibration import Calibration, calibrate
from .evaluate import CascadeEvaluator, EvalConfig, EvalReport, cascade_probs, evaluate, exit_stages
from .flops import CascadeMACs, cascade_macs, count_macs
from .models import Cascade, CascadeOutput, StoppingPolicy, create_classifier, list_classifiers
from .objective import ObjectiveConfig, cascade_loss, exit_distribution, warmup_loss
from .predictor import CascadePrediction, CascadePredictor
from .training import LocalEngine, OptimConfig, build_optimizer, fit, train_epoch, training_step

__version__ = "0.1.0"
__all__ = [
    "Calibration", "Cascade", "CascadeEvaluator", "CascadeMACs", "CascadeOutput", "CascadePrediction",
    "CascadePredictor", "EvalConfig", "EvalReport", "calibrate",
    "LocalEngine", "ObjectiveConfig", "OptimConfig", "StoppingPolicy", "build_optimizer",
    "cascade_loss", "cascade_macs", "cascade_probs", "count_macs", "create_classifier", "evaluate",
    "exit_distribution", "exit_stages", "fit", "list_classifiers", "train_epoch", "training_step",
    "warmup_loss",
]
