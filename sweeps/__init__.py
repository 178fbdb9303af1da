"""Sweep planners: study designs -> plans of runs (see sweeps/plan.py)."""
