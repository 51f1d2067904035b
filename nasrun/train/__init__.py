"""Training: the trainer (device, precision, compile, the checkpointed epoch loop) and its settings."""
