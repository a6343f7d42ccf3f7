"""The runtime: the run's config tree, `python -m cascade_dist.train` (a Ray `TorchTrainer`), the
per-worker function (DeepSpeed engine, epochs, evaluation, checkpoint, report), checkpoints and
MLflow tracking. Imports the method, data and inference layers."""
