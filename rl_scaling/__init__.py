"""rl-scaling: train agents across model sizes and fit scaling laws to what they logged."""

__version__ = "0.1.0"
