"""Data generators and loaders for training."""
