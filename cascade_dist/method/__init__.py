"""The method (pure PyTorch: no Ray, DeepSpeed or MLflow): classifiers, policies and the cascade,
MACs and the cost vector, the objective (reward, baselines, estimators), the exit rule and the
metrics, and the training step and loop."""

from .evaluate import CascadeEvaluator, EvalConfig, EvalReport, evaluate, run_over
from .exit_rule import ExitRule, exit_stages
from .exit_table import ExitTable, ExitTableBuilder, cascade_probs
from .flops import CascadeMACs, count_macs
from .models import (Cascade, CascadeOutput, ModelConfig, StoppingPolicy, cascade_macs, create_classifier,
                     dense_forward, list_classifiers)
from .objective import CostBudget, ObjectiveConfig, cascade_loss, exit_distribution, warmup_loss
from .training import LocalEngine, OptimConfig, build_optimizer, fit, train_epoch, training_step

__all__ = [
    "Cascade", "CascadeEvaluator", "CascadeMACs", "CascadeOutput", "CostBudget", "EvalConfig", "EvalReport",
    "ExitRule", "ExitTable", "ExitTableBuilder", "LocalEngine", "ModelConfig", "ObjectiveConfig", "OptimConfig", "StoppingPolicy",
    "build_optimizer", "cascade_loss", "cascade_macs", "cascade_probs", "count_macs", "create_classifier",
    "dense_forward", "evaluate", "exit_distribution", "exit_stages", "fit", "list_classifiers", "run_over",
    "train_epoch", "training_step", "warmup_loss",
]
