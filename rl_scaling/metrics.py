"""Metrics that training logs and analysis reads, defined once for both (numpy only).

Generalization over a set of held-out tasks (Meulemans, Lindner, Dorner 2021): each task has a
normalised score (0: a random policy, 1: a reference policy); "sufficient generalization" is
read either as the fraction of tasks at or above a threshold, or as the mean score of the
lowest-scoring tasks.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["lowest_mean", "task_generalization"]


def lowest_mean(scores: np.ndarray, percentile: float) -> float:
    """Mean of the lowest ``percentile`` % of ``scores`` (at least one score; NaN if none)."""
    v = np.sort(np.asarray(scores, float))
    if not v.size:
        return math.nan
    m = max(1, math.floor(percentile / 100 * v.size + 1e-9))
    return float(v[:m].mean())


def task_generalization(scores: np.ndarray, threshold: float,
                        percentile: float) -> dict[str, float]:
    """``normalized_score`` (mean over tasks), ``solved_fraction`` (share of tasks scoring at
    least ``threshold``) and ``lowest_score`` (:func:`lowest_mean`) of one score per task."""
    s = np.asarray(scores, float)
    return {"normalized_score": float(s.mean()),
            "solved_fraction": float((s >= threshold).mean()),
            "lowest_score": lowest_mean(s, percentile)}
