"""Flowception method: pure PyTorch (no Ray, DeepSpeed, S3 or MLflow imports here)."""
