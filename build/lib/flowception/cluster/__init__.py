"""Training on Ray Train with DeepSpeed ZeRO, checkpoints, MLflow tracking, job submission."""
