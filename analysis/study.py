"""What every study driver shares: the study spec, the run options and small helpers.

A study driver (``scaling``, ``isoflop``, ``utd``, ``generalization``) has one entry point,
``run_study(st, df, spec, metric, out, opts)``: ``st`` is the
:class:`~analysis.report.StudyResult` it fills, ``df`` one experiment's rows of the tidy
table, ``spec`` the :class:`Study` detection resolved (kind and the table column of each
role), ``metric`` the performance metric, ``out`` the figure directory and ``opts`` the
pipeline's :class:`Options`. A law the data cannot support is recorded by :func:`attempt`
as a one-line reason, never raised.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis import curves
from analysis.fitting import FIT_FAILURES, one_line
from analysis.report import StudyResult

log = logging.getLogger(__name__)

RETURN_METRICS = ("return_mean", "eval_return", "success_rate", "eval_success")
LOSS_METRICS = ("val_loss", "loss")
SIZE_COLUMNS = ("params.effective", "params.total")
# The config keys the guesser reads as the model-size knobs (records without a study).
SIZE_KNOBS = {"width": "model.width", "depth": "model.depth"}
# Errors that mean "this law cannot be fitted on these data" (reported, not raised):
# the fits' own (FitError, ValueError, ArithmeticError such as an OverflowError in one law,
# LinAlgError) and lookups that find no usable rows.
FIT_ERRORS: tuple[type[BaseException], ...] = FIT_FAILURES + (KeyError, IndexError,
                                                              RuntimeError)


@dataclass
class Study:
    """One study to run on one experiment, as detection resolved it.

    ``kind``: one of :data:`rl_scaling.record.STUDY_KINDS`; ``axes``: role (``width``,
    ``sigma``, ``batch_size``, ``lr``, ``task``, ``complexity``...) -> the table column
    (flattened config key) holding it; ``metric``: the declared metric, or None;
    ``declared``: True when the runs' ``run.json`` declared it, False when it was guessed
    from config key names; ``notes``: one-line remarks for the report (disagreeing
    declarations, axes missing from the config).
    """

    kind: str
    axes: dict[str, str] = field(default_factory=dict)
    metric: str | None = None
    declared: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the report: where the study comes from and its axes."""
        axes = ", ".join(f"{role}={col}" for role, col in self.axes.items()) or "none"
        if self.declared:
            metric = f", metric {self.metric}" if self.metric else ""
            return f"declared in run.json (kind {self.kind}; axes {axes}{metric})"
        return f"guessed from config key names (run.json declares no study; axes {axes})"


@dataclass
class Options:
    """The pipeline's options that studies read (see ``python -m analysis --help``).

    ``generalization``: keyword arguments of
    :func:`analysis.generalization.study_generalization` (``level``, ``criterion``,
    ``fraction``, ``percentile``). ``loss_offset``: the isoFLOP study fits ``L_opt`` as a
    power law plus constant.
    """

    n_boot: int = 50
    budget: float | None = None
    thresholds: Sequence[float] | None = None
    generalization: Mapping[str, Any] | None = None
    loss_offset: bool = False


def attempt(st: StudyResult, name: str, fn: Callable[[], Any]) -> Any:
    """Run one fit/figure step; on a fitting error record a one-line reason and go on."""
    try:
        return fn()
    except FIT_ERRORS as err:
        st.skipped[name] = one_line(err)
        log.info("%s: %s not fitted: %s", st.key, name, st.skipped[name])
        log.debug("%s", traceback.format_exc())
        return None


def is_loss_metric(metric: str) -> bool:
    """Lower is better for losses and errors."""
    return bool(re.search(r"loss|error|perplexity", metric))


def choose_metric(df: pd.DataFrame, requested: str | None, bc: bool) -> str | None:
    """The performance metric of one experiment: ``requested`` if it has values there, else
    a return for RL (``return_mean``, ``eval_return``, ...) or a loss for BC."""
    def has(c: str) -> bool:
        return c in df and pd.to_numeric(df[c], errors="coerce").notna().any()

    if requested:
        return requested if has(requested) else None
    order = LOSS_METRICS + RETURN_METRICS if bc else RETURN_METRICS + LOSS_METRICS
    return next((c for c in order if has(c)), None)


def size_columns(df: pd.DataFrame, axes: Mapping[str, str] | None = None
                 ) -> tuple[str | None, str | None, str]:
    """``(N column, size-label column, label)``: parameters for laws (``axes["params"]``,
    else ``params.effective`` from ``run.json``), and the knob that is swept for legends
    (the ``width`` or ``depth`` axis when only one of them varies). ``axes`` default: the
    guessed knobs ``model.width``, ``model.depth``."""
    axes = dict(SIZE_KNOBS) if axes is None else axes
    cands = ([axes["params"]] if "params" in axes else []) + list(SIZE_COLUMNS)
    n_col = next((c for c in cands if c in df
                  and pd.to_numeric(df[c], errors="coerce").notna().all()), None)
    knobs = curves.varying(df, [axes[r] for r in ("width", "depth")
                                if r in axes and axes[r] in df])
    if len(knobs) == 1:
        return n_col, knobs[0], knobs[0].split(".")[-1]
    return n_col, n_col, "params"


def finite(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """The rows where every column of ``cols`` is a finite number (as floats)."""
    out = df.copy()
    for c in cols:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out.replace([np.inf, -np.inf], np.nan).dropna(subset=list(cols))


def slug(s: str) -> str:
    """A file-name-safe version of a study key (figure names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")
