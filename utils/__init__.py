"""Configs, data, losses, checkpoints and small helpers shared by the entry scripts."""
