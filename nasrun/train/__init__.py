"""Training: the trainer (device, precision, compile), checkpoints and metrics."""
