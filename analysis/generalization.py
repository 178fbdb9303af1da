"""Generalization vs problem complexity (Meulemans, Lindner, Dorner 2021): laws and driver.

Problem complexity (``study.axes.complexity``: arena size, number of objects, ...) varies;
per run and log point a "sufficient generalization" score is built from the held-out test
tasks' scores (:func:`generalization_score`), seeds are averaged per complexity, and the
data ``D`` and compute ``C`` at the first crossing of a level are fitted against complexity
(:func:`fit_complexity`: a power law, log-log OLS with t-intervals).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import curves, figures
from analysis.fitting import LEVEL, FitError, FitResult, fit_loglog, loglog_intervals
from analysis.report import StudyResult
from analysis.study import Options, Study, attempt, finite, slug
from rl_scaling.metrics import lowest_mean

__all__ = [
    "GENERALIZATION_CRITERIA",
    "generalization_score",
    "fit_complexity",
    "test_task_columns",
    "study_generalization",
    "run_study",
]


# =========================================================================== laws


GENERALIZATION_CRITERIA = ("fraction", "lowest")


def generalization_score(
    scores: Any,
    *,
    criterion: str = "fraction",
    fraction: float = 0.95,
    percentile: float = 10.0,
) -> np.ndarray:
    """One "sufficient generalization" score per row of a (points x test tasks) array of
    normalised test-task scores (NaN = task not evaluated at that point; ignored).

    - ``criterion="fraction"`` (Meulemans et al.: above the threshold on nearly all test
      tasks): the score reached by at least a ``fraction`` of the test tasks, i.e. the
      ``ceil(fraction * n)``-th largest task score. ``score >= J`` exactly when at least
      ``ceil(fraction * n)`` of the ``n`` tasks score ``>= J``.
    - ``criterion="lowest"``: the mean of the lowest ``percentile`` % of the task scores
      (at least one task).

    The criterion "reached" is then ``score >= J`` for a threshold ``J`` (first crossing).
    """
    if criterion not in GENERALIZATION_CRITERIA:
        raise FitError(f"criterion must be one of {GENERALIZATION_CRITERIA}, not {criterion!r}")
    if not 0 < fraction <= 1:
        raise FitError(f"fraction must be in (0, 1], not {fraction}")
    if not 0 < percentile <= 100:
        raise FitError(f"percentile must be in (0, 100], not {percentile}")
    a = np.asarray(scores, float)
    a = a.reshape(-1, 1) if a.ndim == 1 else a
    out = np.full(a.shape[0], np.nan)
    for i, row in enumerate(a):
        v = np.sort(row[np.isfinite(row)])  # ascending
        n = v.size
        if n == 0:
            continue
        if criterion == "fraction":
            out[i] = v[n - math.ceil(fraction * n - 1e-9)]
        else:
            out[i] = lowest_mean(v, percentile)
    return out


def fit_complexity(
    complexity: Any, amount: Any, *, level: float = LEVEL, name: str = "D"
) -> FitResult:
    """Data (or compute) to reach sufficient generalization vs a problem-complexity
    parameter: ``amount = c complexity^k`` by log-log OLS (t-intervals). Needs 3 points."""
    f = fit_loglog(complexity, amount, level=level, law=f"{name}_vs_complexity")
    f.extra["form"] = f"{name}_J = c complexity^k"
    return f


# =========================================================================== driver


TEST_TASK_PATTERN = r"^(test|heldout|test_task)[/_.:]"
# per-task scores already normalised by the env (0: random, 1: reference policy), logged by
# agents.evaluation.evaluate as task_score/<task set>/<task>
NORMALISED_PREFIX = "task_score/"


def normalised_task_columns(df: pd.DataFrame, task_set: str = "test") -> list[str]:
    """``task_score/<task_set>/<task>`` metrics with at least one value."""
    prefix = f"{NORMALISED_PREFIX}{task_set}/"
    return [c for c in df.columns if str(c).startswith(prefix)
            and pd.to_numeric(df[c], errors="coerce").notna().any()]


def test_task_columns(df: pd.DataFrame) -> list[str]:
    """Metrics holding one held-out test task's score each (``test/<task>``,
    ``heldout/<task>``, ``test_task_<i>``...), with at least one value."""
    return [c for c in df.columns if re.match(TEST_TASK_PATTERN, str(c))
            and pd.to_numeric(df[c], errors="coerce").notna().any()]


def study_generalization(st: StudyResult, df: pd.DataFrame, metric: str, out: Path, *,
                         complexity: str | None, level: float = 0.8,
                         criterion: str = "fraction", fraction: float = 0.95,
                         percentile: float = 10.0, size: str | None = None,
                         task_set: str = "test", label: str = "") -> None:
    """Data and compute to reach "sufficient generalization" vs problem complexity (the
    config column ``complexity``, the study's ``complexity`` axis).

    Per-task scores the env normalised already (``task_score/<task_set>/<task>``, 0 = a
    random policy, 1 = the reference policy; :func:`normalised_task_columns`) are used as
    they are. Otherwise, with per-test-task metrics (:func:`test_task_columns`) each task's
    score is normalised by the best value seen for that task. :func:`generalization_score`
    turns them into one score per run and log point (``criterion`` "fraction": the score
    reached on at least ``fraction`` of the test tasks; "lowest": the mean of the lowest
    ``percentile`` %); seeds are then averaged per complexity and the first crossing of
    ``level`` gives D and C. Without them, one test metric (``eval_return``...) normalised
    by the best seen plays that role. Each law's ``used`` lists the complexities fitted,
    ``dropped`` those that never reached ``level`` (or have no D/C at the crossing).

    ``size`` (the study's ``width`` or ``params`` axis, when it varies): seeds are averaged
    per (complexity, size), each size's crossing is tabulated, and the law is fitted to the
    fewest data and the least compute over sizes at each complexity (the best model size
    for that target, as in Meulemans et al.'s "compute needed").

    ``label`` is appended to every table, fit, figure and context name (one study per
    evaluation task set: ``" [ood_objects]"``).
    """
    ccol = complexity
    if ccol is None:
        raise FitError("no complexity axis (declare study.axes.complexity: the config key "
                       "holding the problem complexity)")
    xdata = curves.data_column(df)
    normalised = normalised_task_columns(df, task_set)
    cols = normalised or test_task_columns(df)
    if cols:
        d = finite(df, [ccol, xdata]).copy()
        sc = d[cols].apply(pd.to_numeric, errors="coerce")
        d = d[sc.notna().any(axis=1)]  # evaluation lines only
        sc = sc.loc[d.index]
        if normalised:
            best = pd.Series(1.0, index=sc.columns)
        else:
            best = sc.max()
        if not (best > 0).all():
            bad = ", ".join(str(c) for c in best.index[~(best > 0)][:3])
            raise FitError(f"test task(s) with no positive score to normalise by: {bad}")
        d["score"] = generalization_score((sc / best).to_numpy(float),
                                          criterion=criterion, fraction=fraction,
                                          percentile=percentile)
        d = d.dropna(subset=["score"])
        what = (f"at least {fraction:.0%} of the {len(cols)} test tasks"
                if criterion == "fraction" else
                f"mean of the lowest {percentile:g}% of the {len(cols)} test tasks")
        how = ("normalised by the env: 0 random, 1 reference policy" if normalised
               else "each task's score ÷ its best seen")
        st.context["criterion" + label] = (f"{what} >= {level} ({how}; per run, then "
                                           "averaged over seeds)")
        test = f"{task_set} task score" if normalised else "test-task score"
    else:
        test = next((c for c in ("eval_return", "eval_success") if c in df
                     and df[c].notna().any()), metric)
        d = finite(df, [ccol, xdata, test])
        score_max = float(d[test].max())
        if not score_max > 0:
            raise FitError(f"{test}: no positive score to normalise by")
        d["score"] = d[test] / score_max
        st.context["criterion" + label] = (f"normalised {test} (÷ best seen, {score_max:.4g}) "
                                           f">= {level} (no per-test-task metrics test/<task>)")
    st.context["criterion kind" + label] = criterion if cols else "single test metric"
    criterion_text = st.context["criterion" + label]
    sizes = size is not None and size in d and d[size].nunique() > 1
    group = [ccol, size] if sizes else [ccol]
    avg = curves.average_seeds(d, xdata, "score", by=group)
    if "flops" in d:
        # compute at each data point of the averaged curve (seeds share their counters)
        fl = d.groupby([*group, xdata])["flops"].mean().reset_index()
        avg = avg.merge(fl, on=[*group, xdata], how="left")
    thr = curves.to_threshold(avg, level, "score", x=xdata, compute="flops", by=group)
    if sizes:
        st.tables["data and compute to sufficient generalization, per size" + label] = thr
        st.context["size axis"] = f"{size}: the fewest data and least compute over sizes"
        thr = _best_over_sizes(thr, ccol)
        avg = (avg.sort_values([ccol, xdata]).groupby([ccol, xdata], as_index=False)
               .agg(score=("score", "max")))  # the upper envelope over sizes, for the figure
    st.tables["data and compute to sufficient generalization" + label] = thr
    fig_key = slug(st.key) + (f"_{slug(task_set)}" if label else "")
    st.figures += figures.plot_curves(
        avg.assign(**{ccol: pd.to_numeric(avg[ccol])}), xdata, "score", ccol, out,
        f"{fig_key}_generalization_curves", title=f"{st.experiment}: normalised {test}",
        ylabel=f"criterion score ({st.context['criterion kind' + label]})",
        size_label=ccol.split(".")[-1])
    reached = thr[thr["reached"]]
    for col, name in (("D_J", "D"), ("C_J", "C")):
        r = reached.dropna(subset=[col])

        def fitc(r=r, col=col, name=name) -> None:
            fit = fit_complexity(pd.to_numeric(r[ccol]), r[col], name=name)
            fit.extra["criterion"] = criterion_text
            fit.used = pd.to_numeric(r[ccol]).tolist()
            fit.dropped = [
                {"what": f"{ccol.split('.')[-1]}={row[ccol]}",
                 "reason": (f"never reached the criterion score {level:g}" if not row["reached"]
                            else f"no {'compute' if col == 'C_J' else 'data'} value at the "
                                 "crossing")}
                for _, row in thr.iterrows() if row.name not in r.index]
            st.fits[f"{name} to sufficient generalization vs complexity{label}"] = fit
            x = pd.to_numeric(r[ccol]).to_numpy(float)
            xg = np.geomspace(x.min(), x.max(), 50)
            iv = loglog_intervals(fit, xg)
            st.figures.extend(figures.plot_power_law(
                x, r[col].to_numpy(float), out, f"{fig_key}_{name}_vs_complexity",
                fit_x=xg, fit_y=iv["y"], band=(iv["conf_low"], iv["conf_high"]),
                title=f"{st.experiment}: {name} to reach the criterion",
                xlabel=ccol, ylabel=name, fit_label=f"∝ complexity^{fit.params['k']:.3g}"))
        attempt(st, f"{name} vs complexity{label}", fitc)


def _best_over_sizes(thr: pd.DataFrame, ccol: str) -> pd.DataFrame:
    """Per complexity: reached if any size reached; ``D_J`` and ``C_J`` the least over the
    sizes that reached (each may come from another size), ``y_max`` the best."""
    rows = []
    for c, g in thr.groupby(ccol, sort=True):
        r = g[g["reached"]]
        rows.append({ccol: c, "D_J": r["D_J"].min() if len(r) else np.nan,
                     "C_J": r["C_J"].min() if len(r) else np.nan, "reached": bool(len(r)),
                     "y_max": g["y_max"].max(), "sizes_reached": int(len(r))})
    return pd.DataFrame(rows)


def run_study(st: StudyResult, df: pd.DataFrame, spec: Study, metric: str, out: Path,
              opts: Options) -> None:
    """The ``generalization`` study (:func:`study_generalization` with the options'
    criterion) for each evaluation task set logged as ``task_score/<set>/<task>`` (``test``
    first, the others' names labelled ``[<set>]``); the ``width`` (else ``params``) axis is the
    model size."""
    axes = spec.axes
    kwargs = dict(opts.generalization or {})
    # one study per evaluation task set the env logged (test first, unlabelled)
    sets = sorted({str(c).split("/")[1] for c in df.columns
                   if str(c).startswith(NORMALISED_PREFIX) and str(c).count("/") >= 2},
                  key=lambda s: (s != "test", s)) or ["test"]
    for i, task_set in enumerate(sets):
        label = "" if i == 0 else f" [{task_set}]"

        def one(task_set: str = task_set, label: str = label) -> None:
            study_generalization(st, df, metric, out, complexity=axes.get("complexity"),
                                 size=axes.get("width") or axes.get("params"),
                                 task_set=task_set, label=label, **kwargs)

        if i == 0:
            one()  # the study itself: its errors are the study's
        else:
            attempt(st, f"generalization{label}", one)
