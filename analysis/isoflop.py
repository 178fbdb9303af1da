"""isoFLOP study: compute-optimal allocation on a fixed dataset (Tuyls et al. 2024), laws
and driver.

Model size varies on a fixed dataset (behavioural cloning: no env steps, a loss metric),
each run logging at many sample counts so one run fills every FLOP budget for its size.
Everything about compute-optimal allocation lives here:

- isoFLOP profiles (Hoffmann et al. Approach 2), robust to lopsided real sweeps (a
  parabola in log loss on a window around the best measured size; budgets whose optimum
  is not bracketed or passes the data are dropped with a reason):
  :func:`isoflop_parabolas`, :func:`fit_isoflop`, :func:`forecast_isoflop`, with
  :func:`group_budgets` and :func:`average_repeats` for tables;
- the envelope (Approach 1): :func:`fit_envelope`;
- Chinchilla Approach 3, ``L = E + A/N^alpha + B/D^beta`` (variable projection by
  default, the 4500-start grid selectable; refuses non-identifiable data):
  :func:`fit_chinchilla`, :func:`chinchilla_allocation`, :func:`forecast_chinchilla`;
- Tuyls et al.'s quadratic surface in ``(log N, log D)``: :func:`fit_quadratic_surface`,
  :func:`quadratic_surface_optimum`, :func:`forecast_quadratic_surface`;
- method choice by held-out RMSE and the headline forecast:
  :func:`compare_isoflop_methods`, :func:`forecast_isoflop_method`;
- return vs loss: :func:`fit_return_vs_loss`;
- the driver :func:`study_isoflop` (``run_study``).

Each law states its form, loss, starts and uncertainty in its docstring.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special

from analysis import curves, figures
from analysis.fitting import (
    LEVEL,
    FitError,
    FitResult,
    _same_length,
    as_array,
    bootstrap,
    delta_method,
    fit_loglog,
    fit_power_offset,
    loglog_intervals,
    power_offset_intervals,
    predict_power,
    require_distinct,
    rolling_cv,
    safe_exp,
    single_blas_thread,
    t_quantile,
)
from analysis.report import StudyResult
from analysis.study import Options, Study, attempt, finite, is_loss_metric, size_columns, slug

__all__ = [
    "isoflop_parabolas",
    "group_budgets",
    "average_repeats",
    "summarize_dropped",
    "fit_isoflop",
    "forecast_isoflop",
    "fit_envelope",
    "CHINCHILLA_GRID",
    "chinchilla_objective",
    "CHINCHILLA_METHODS",
    "fit_chinchilla",
    "predict_chinchilla",
    "chinchilla_allocation",
    "forecast_chinchilla",
    "fit_quadratic_surface",
    "quadratic_surface_optimum",
    "forecast_quadratic_surface",
    "ISOFLOP_METHODS",
    "compare_isoflop_methods",
    "forecast_isoflop_method",
    "fit_return_vs_loss",
    "study_isoflop",
    "run_study",
]


# =========================================================================== isoFLOP profiles

#: defaults of the robust profile rule (:func:`isoflop_parabolas`), shared with the CLI
PROFILE_WINDOW = 2
PROFILE_MAX_RATIO = 2.0
PROFILE_TOL = 0.1
POOR_RMS = 0.05  # a budget's parabola with a larger rms residual (log space) is flagged

# short names of the reasons a budget is dropped, for one-line summaries
_DROP_CODES = ("too-few-sizes", "best-at-smallest-size", "best-at-largest-size", "not-convex",
               "optimum-outside-sizes", "optimum-beyond-data")


def group_budgets(C: Any, rtol: float) -> tuple[np.ndarray, int]:
    """Merge near-equal budgets: sorted distinct values of ``C`` form one group while each
    is within ``rtol`` (relative) of the group's smallest; every value is replaced by its
    group's geometric mean. Returns ``(grouped C, number of distinct values merged away)``
    (budgets computed per run as ``6 N D`` differ in the last digits; ``rtol=0`` keeps
    every distinct value)."""
    C = np.asarray(C, dtype=float)
    if rtol < 0 or not math.isfinite(rtol):
        raise FitError(f"budget tolerance must be >= 0, got {rtol:g}")
    ub = np.unique(C)
    if rtol == 0 or ub.size < 2:
        return C.copy(), 0
    rep = np.empty_like(ub)
    start = 0
    for i in range(1, ub.size + 1):
        if i == ub.size or ub[i] > ub[start] * (1 + rtol):
            rep[start:i] = ub[start] if i - start == 1 else math.exp(np.log(ub[start:i]).mean())
            start = i
    return rep[np.searchsorted(ub, C)], int(ub.size - np.unique(rep).size)


def average_repeats(N: np.ndarray, C: np.ndarray, y: np.ndarray,
                    D: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Mean of ``y`` (and ``D``) over rows with the same ``(N, C)`` (repeated seeds), as the
    pipeline averages seeds before its profiles. Returns ``(N, C, y, D or None)``."""
    frame = pd.DataFrame({"N": N, "C": C, "y": y})
    if D is not None:
        frame["D"] = D
    g = frame.groupby(["N", "C"], as_index=False, sort=True).mean()
    return (g["N"].to_numpy(float), g["C"].to_numpy(float), g["y"].to_numpy(float),
            g["D"].to_numpy(float) if D is not None else None)


def _check_profile_options(window: int | None, max_ratio: float, tol: float, space: str,
                           min_sizes: int) -> None:
    if space not in ("log", "linear"):
        raise FitError(f"space must be 'log' or 'linear', not {space!r}")
    if window is not None and (int(window) != window or window < 1):
        raise FitError(f"window must be a whole number >= 1 (sizes on each side of the best) "
                       f"or all, got {window!r}")
    if not max_ratio > 1:  # also false for NaN
        raise FitError(f"window ratio must be > 1, got {max_ratio:g}")
    if not tol >= 0:
        raise FitError(f"tolerance must be >= 0, got {tol:g}")
    if min_sizes < 3:
        raise FitError(f"min_sizes must be >= 3 (a parabola has 3 coefficients), got {min_sizes}")


def isoflop_parabolas(
    N: Any,
    C: Any,
    L: Any,
    *,
    min_sizes: int = 3,
    window: int | None = PROFILE_WINDOW,
    max_ratio: float = PROFILE_MAX_RATIO,
    tol: float = PROFILE_TOL,
    space: str = "log",
    maximize: bool = False,
) -> dict[float, dict[str, Any]]:
    """Per FLOP budget, a parabola around the best measured size and its optimum.

    Robust profile rule (real sweeps are lopsided: the largest, barely trained models can
    have 10-50x the minimum loss, and one parabola through every size then puts its minimum
    far below every measured loss, even below 0):

    1. ``y`` is ``log L`` (``space="log"``, the default; needs L > 0) or ``L``
       (``"linear"``). Repeated sizes are averaged (mean of ``y``) to find the best size.
    2. The best measured size (lowest loss; highest score with ``maximize``) must be
       interior: best at the smallest or largest size means the optimum is not bracketed
       (an extrapolation), and the budget is dropped.
    3. Window: the best size, its two neighbours, and up to ``window - 1`` further sizes
       on each side, stopping at the first whose ``y`` is more than ``log(max_ratio)``
       from the best (linear space: ``(max_ratio - 1) |best|``): an untrained model is
       not part of the bowl. ``window=None`` takes every size.
    4. Least squares (closed form) of ``y = a u^2 + b u + c``, ``u = log N``, on the
       window's points. The budget is dropped if it has fewer than ``min_sizes`` sizes,
       the parabola is not convex (concave with ``maximize``), its optimum lies outside
       the window's sizes, or its optimum passes the best measured value by more than
       ``tol`` (in ``y``: log space 0.1 is about 10%; linear space relative to
       ``|best|``).
    5. ``L_opt`` is the parabola's value at its optimum (``exp`` of it in log space): a
       local fit, so within ``tol`` of the measured best, which is reported beside it
       (``L_measured``).

    Keys per budget: ``ok``, ``why`` (one line) and ``code`` (one of ``too-few-sizes``,
    ``best-at-smallest-size``, ``best-at-largest-size``, ``not-convex``,
    ``optimum-outside-sizes``, ``optimum-beyond-data``) when dropped; ``n`` (distinct
    sizes), ``n_window``, ``N_lo``, ``N_hi`` (the window), ``a, b, c`` (coefficients in
    ``space`` of ``u = log N``), ``space``, ``N_opt``, ``L_opt``, ``N_measured``,
    ``L_measured``, ``gap`` (how far the optimum passes the best measured value, in
    ``y``; negative: it does not), and the fit quality ``rms`` (root-mean-square residual
    of ``y`` in the window) and ``r2``.
    """
    name = "score" if maximize else "loss"
    N = as_array(N, "N", positive=True)
    C = as_array(C, "C", positive=True)
    L = as_array(L, name)
    if not (N.size == C.size == L.size):
        raise FitError(f"inputs differ in length: N {N.size}, C {C.size}, {name} {L.size}")
    _check_profile_options(window, max_ratio, tol, space, min_sizes)
    if space == "log" and (L <= 0).any():
        raise FitError(f"{name}: {int((L <= 0).sum())} non-positive value(s) where a log is "
                       f"taken (min {L.min():g}); space='linear' (CLI --space linear) fits "
                       f"the profiles in {name} itself")
    y_all = np.log(L) if space == "log" else L
    sgn = -1.0 if maximize else 1.0  # minimise sgn * y
    opt = "maximum" if maximize else "minimum"
    out: dict[float, dict[str, Any]] = {}
    for budget in np.unique(C):
        m = C == budget
        lx, y = np.log(N[m]), y_all[m]
        sizes = np.unique(lx)
        mean = np.array([y[lx == s].mean() for s in sizes])
        nan = float("nan")
        rec: dict[str, Any] = {"ok": False, "why": "", "code": "", "n": int(sizes.size),
                               "n_window": 0, "space": space, "a": nan, "b": nan, "c": nan,
                               "N_opt": nan, "L_opt": nan, "N_measured": nan,
                               "L_measured": nan, "N_lo": nan, "N_hi": nan, "gap": nan,
                               "rms": nan, "r2": nan}
        out[float(budget)] = rec

        def drop(code: str, why: str, rec: dict[str, Any] = rec) -> None:
            rec.update(code=code, why=why)

        if sizes.size < min_sizes:
            drop("too-few-sizes", f"{sizes.size} model size{'s' if sizes.size != 1 else ''} "
                 f"at this budget, {min_sizes} needed")
            continue
        j = int(np.argmin(sgn * mean))
        best = float(mean[j])
        rec.update(N_measured=float(math.exp(sizes[j])),
                   L_measured=float(math.exp(best) if space == "log" else best))
        best_word = "highest score" if maximize else "lowest loss"
        if j == 0 or j == sizes.size - 1:
            edge = "smallest" if j == 0 else "largest"
            drop(f"best-at-{edge}-size", f"{best_word} at the {edge} size "
                 f"(N={rec['N_measured']:.3g}): the {opt} is not bracketed")
            continue
        lo, hi = _profile_window(mean, j, window, max_ratio, space)
        keep = (lx >= sizes[lo]) & (lx <= sizes[hi])
        u0 = float(sizes[j])
        u, yw = lx[keep] - u0, y[keep]
        rec.update(n_window=int(hi - lo + 1), N_lo=float(math.exp(sizes[lo])),
                   N_hi=float(math.exp(sizes[hi])))
        if hi - lo + 1 < min_sizes:
            drop("too-few-sizes", f"{hi - lo + 1} sizes in the window, {min_sizes} needed")
            continue
        a, b1, c1 = (float(v) for v in np.polyfit(u, yw, 2))
        resid = yw - (a * u**2 + b1 * u + c1)
        sst = float(((yw - yw.mean()) ** 2).sum())
        # coefficients in u = log N (uncentred)
        rec.update(a=a, b=b1 - 2 * a * u0, c=a * u0**2 - b1 * u0 + c1,
                   rms=float(np.sqrt(np.mean(resid**2))),
                   r2=1.0 - float((resid**2).sum()) / sst if sst > 0 else nan)
        if sgn * a <= 0:
            drop("not-convex", f"parabola around the best size is not "
                 f"{'concave' if maximize else 'convex'} (no interior {opt})")
            continue
        v = -b1 / (2 * a)
        y_opt = c1 - b1 * b1 / (4 * a)
        rec.update(N_opt=float(math.exp(u0 + v)),
                   L_opt=float(math.exp(y_opt) if space == "log" else y_opt))
        if not sizes[lo] - u0 - 1e-9 <= v <= sizes[hi] - u0 + 1e-9:
            drop("optimum-outside-sizes", f"parabola {opt} at N={rec['N_opt']:.3g} is outside "
                 f"the fitted sizes [{rec['N_lo']:.3g}, {rec['N_hi']:.3g}]")
            continue
        gap = sgn * (best - y_opt) / (1.0 if space == "log" else max(abs(best), 1e-300))
        rec["gap"] = float(gap)
        if gap > tol:
            side = "above the highest measured score" if maximize else \
                "below the lowest measured loss"
            drop("optimum-beyond-data", f"parabola {opt} {rec['L_opt']:.3g} is {side} "
                 f"{rec['L_measured']:.3g} by more than the tolerance "
                 f"({'log ' if space == 'log' else 'relative '}gap {gap:.3g} > {tol:g})")
            continue
        rec["ok"] = True
    return out


def _profile_window(y: np.ndarray, j: int, window: int | None, max_ratio: float,
                    space: str) -> tuple[int, int]:
    """Index range ``[lo, hi]`` of the sizes around the best one (``y`` per distinct size,
    ``j`` its index; :func:`isoflop_parabolas`, step 3)."""
    if window is None:
        return 0, y.size - 1
    limit = math.log(max_ratio) if space == "log" else (max_ratio - 1) * abs(y[j])
    lo, hi = j - 1, j + 1  # the neighbours always count
    while lo > 0 and j - lo < window and abs(y[lo - 1] - y[j]) <= limit:
        lo -= 1
    while hi < y.size - 1 and hi - j < window and abs(y[hi + 1] - y[j]) <= limit:
        hi += 1
    return lo, hi


def summarize_dropped(par: Mapping[float, Mapping[str, Any]]) -> str:
    """One line for the budgets :func:`isoflop_parabolas` dropped: ``"3 of 8 budgets
    dropped: 2 best-at-smallest-size, 1 optimum-beyond-data"`` (counts, not a list)."""
    codes = [p["code"] for p in par.values() if not p["ok"]]
    if not codes:
        return f"0 of {len(par)} budgets dropped"
    counts = [f"{codes.count(c)} {c}" for c in _DROP_CODES if c in codes]
    return f"{len(codes)} of {len(par)} budgets dropped: {', '.join(counts)}"


def fit_isoflop(
    N: Any,
    C: Any,
    L: Any,
    *,
    D: Any = None,
    flops_per_param_sample: float = 6.0,
    loss_offset: bool = False,
    level: float = LEVEL,
    min_sizes: int = 3,
    window: int | None = PROFILE_WINDOW,
    max_ratio: float = PROFILE_MAX_RATIO,
    tol: float = PROFILE_TOL,
    space: str = "log",
    maximize: bool = False,
    budget_rtol: float = 0.0,
    seeds: str = "mean",
) -> FitResult:
    """isoFLOP-profile law: ``N_opt = k_N C^a``, ``D_opt = k_D C^b``, ``L_opt = k_L C^L_exponent``.

    Input rows are ``(N, C, L[, D])``. Budgets within ``budget_rtol`` (relative) of each
    other are one budget (:func:`group_budgets`); with ``seeds="mean"`` (default, as the
    pipeline) rows with the same ``(N, C)`` are averaged (mean L and D), with
    ``seeds="all"`` every row is its own point (a size with more seeds weighs more).

    Per budget a parabola in ``log N`` around the best measured size
    (:func:`isoflop_parabolas`: in log loss by default, on a window of ``window`` sizes on
    each side, budgets whose optimum is not bracketed or passes the data by more than
    ``tol`` dropped with a reason) gives ``N_opt(C)`` and ``L_opt(C)``. ``maximize``
    profiles a score (return) instead of a loss: the best size has the highest value and
    ``L_opt`` is the best score. ``D_opt`` is the data at the optimum: interpolated in
    log-log from the points' ``D`` at that budget when given, else ``C / (k N_opt)`` (so
    ``b = 1 - a``). Each is then a power law in ``C`` fitted by
    :func:`~analysis.fitting.fit_loglog` (OLS in log-log space, t-intervals on
    ``n_budgets - 2`` dof; needs 3 usable budgets, else a one-line FitError that counts the
    dropped budgets by reason). With ``loss_offset`` ``L_opt = L_inf + k_L C^L_exponent``
    is fitted by :func:`~analysis.fitting.fit_power_offset` (log space, ``0 <= L_inf <=
    min L_opt``; needs 4 budgets). With ``space="linear"`` an ``L_opt <= 0`` leaves the
    ``L_opt`` law unfitted (flagged, ``L_exponent`` NaN) while ``a`` and ``b`` are kept.
    ``loss`` is the summed squared log residuals of the power laws.

    Parameters: ``a, b, L_exponent, N_coef, D_coef, L_coef`` (and ``L_inf``). ``used``
    lists the budgets used, ``dropped`` each dropped one (``what``: the budget) with its
    reason (``"CODE: one line"``);
    ``extra["parabolas"]`` holds every budget's record (quality ``rms``, ``r2``, the
    measured best beside ``L_opt``), ``extra["L_exponent_measured"]`` the exponent of the
    measured best values over the same budgets.
    """
    name = "score" if maximize else "loss"
    N = as_array(N, "N", positive=True, min_len=3)
    C = as_array(C, "C", positive=True, min_len=3)
    L = as_array(L, name, min_len=3)
    if not (N.size == C.size == L.size):
        raise FitError(f"inputs differ in length: N {N.size}, C {C.size}, {name} {L.size}")
    Dv = None if D is None else as_array(D, "D", positive=True)
    if Dv is not None and Dv.size != N.size:
        raise FitError(f"inputs differ in length: N {N.size}, D {Dv.size}")
    if seeds not in ("mean", "all"):
        raise FitError(f"seeds must be 'mean' or 'all', not {seeds!r}")
    _check_profile_options(window, max_ratio, tol, space, min_sizes)
    n_rows = int(N.size)
    C, n_merged = group_budgets(C, budget_rtol)
    notes: list[str] = []
    if n_merged:
        notes.append(f"{n_merged + np.unique(C).size} distinct budgets grouped into "
                     f"{np.unique(C).size} (relative tolerance {budget_rtol:g})")
    if seeds == "mean":
        N, C, L, Dv = average_repeats(N, C, L, Dv)
        if N.size < n_rows:
            notes.append(f"repeated (N, C) rows averaged (mean {name}): {n_rows} rows -> "
                         f"{N.size} points")
    elif np.unique(np.column_stack([N, C]), axis=0).shape[0] < n_rows:
        notes.append("repeated (N, C) rows kept as separate points (seeds='all': a size "
                     "with more rows weighs more)")
    par = isoflop_parabolas(N, C, L, min_sizes=min_sizes, window=window,
                            max_ratio=max_ratio, tol=tol, space=space, maximize=maximize)
    good = [b for b, p in par.items() if p["ok"]]
    dropped_line = summarize_dropped(par)
    if len(good) < 3:
        hint = ""
        few = sum(p["code"] == "too-few-sizes" for p in par.values())
        if few > len(par) / 2 and len(par) > 3:
            hint = ("; most budgets have too few sizes: budgets computed per run? group "
                    "near-equal ones (budget_rtol, CLI --budget-tolerance)")
        word = "maximum" if maximize else "minimum"
        raise FitError(f"isoflop: {len(good)} budgets with an interior {word}, 3 needed "
                       f"({dropped_line}){hint}")
    Cb = np.array(good)
    Nopt = np.array([par[b]["N_opt"] for b in good])
    Lopt = np.array([par[b]["L_opt"] for b in good])
    Lmeas = np.array([par[b]["L_measured"] for b in good])
    if Dv is not None:
        Dopt = np.empty_like(Nopt)
        for i, b in enumerate(good):
            m = C == b
            o = np.argsort(N[m])
            Dopt[i] = math.exp(np.interp(math.log(Nopt[i]), np.log(N[m][o]), np.log(Dv[m][o])))
    else:
        Dopt = Cb / (flops_per_param_sample * Nopt)
    fn = fit_loglog(Cb, Nopt, level=level, law="N_opt")
    fd = fit_loglog(Cb, Dopt, level=level, law="D_opt")
    params = {"a": fn.params["k"], "b": fd.params["k"]}
    ci = {"a": fn.ci["k"], "b": fd.ci["k"]}
    fits: dict[str, FitResult] = {"N_opt": fn, "D_opt": fd}
    flags: list[str] = []
    bounds: dict[str, tuple[float, float]] = {}
    nan = float("nan")
    if Lopt.min() <= 0:  # linear-space profiles only: log-space optima are positive
        flags.append(f"L_opt law not fitted: {int((Lopt <= 0).sum())} budget(s) have "
                     f"L_opt <= 0 (min {Lopt.min():.3g}) where a log is taken; a and b are "
                     "unaffected")
        params.update(L_exponent=nan, L_coef=nan)
        ci.update(L_exponent=(nan, nan), L_coef=(nan, nan))
        if loss_offset:
            params["L_inf"], ci["L_inf"] = nan, (nan, nan)
    else:
        if loss_offset:
            if len(good) < 4:
                raise FitError(f"isoflop: {len(good)} usable budgets, 4 needed for L_opt = "
                               f"L_inf + c C^k ({dropped_line})")
            fl = fit_power_offset(Cb, Lopt, level=level, law="L_opt", names=("C", "L_opt"))
            params["L_inf"], ci["L_inf"] = fl.params["offset"], fl.ci["offset"]
            bounds["L_inf"] = (0.0, float(Lopt.min()))
        else:
            fl = fit_loglog(Cb, Lopt, level=level, law="L_opt")
        params["L_exponent"], ci["L_exponent"] = fl.params["k"], fl.ci["k"]
        params["L_coef"], ci["L_coef"] = fl.params["c"], fl.ci["c"]
        fits["L_opt"] = fl
    order = ("a", "b", "L_exponent", "N_coef", "D_coef", "L_coef", "L_inf")
    params.update(N_coef=fn.params["c"], D_coef=fd.params["c"])
    ci.update(N_coef=fn.ci["c"], D_coef=fd.ci["c"])
    params = {k: params[k] for k in order if k in params}
    ci = {k: ci[k] for k in order if k in ci}
    scale = {b: 1.0 if space == "log" else abs(par[b]["L_measured"]) for b in good}
    poor = [b for b in good if par[b]["rms"] > POOR_RMS * scale[b]]
    if poor:
        worst = max(poor, key=lambda b: par[b]["rms"] / scale[b])
        flags.append(f"{len(poor)} of {len(good)} budgets' parabolas fit their window "
                     f"poorly (rms residual > {POOR_RMS:g} "
                     f"{'in log ' + name if space == 'log' else 'relative'}; worst "
                     f"C={worst:.3g}): see extra.parabolas")
    l_meas_exp = (fit_loglog(Cb, Lmeas).params["k"] if (Lmeas > 0).all() else nan)
    total = float(fn.loss + fd.loss + (fits["L_opt"].loss if "L_opt" in fits else 0.0))
    word = "maximum" if maximize else "minimum"
    win = "all sizes" if window is None else f"window {window} sizes each side"
    rule = (f"parabola in {'log ' if space == 'log' else ''}{name} vs log N around the best "
            f"measured size ({win}, within {max_ratio:g}x of the best), L_opt at its {word}; "
            f"budgets whose {word} is not bracketed or passes the data by more than {tol:g} "
            "dropped")
    res = FitResult(
        law="isoflop",
        params=params,
        ci=ci,
        n_points=int(N.size),
        loss=total,
        extra={
            "level": level,
            "form": "N_opt = N_coef C^a, D_opt = D_coef C^b, L_opt = [L_inf +] L_coef C^L_exp"
                    + (" (L: the score, maximised)" if maximize else ""),
            "method": f"{rule}; OLS log-log t-intervals across budgets",
            "n_budgets": len(good),
            "n_rows": n_rows,
            "seeds": seeds,
            "notes": notes,
            "dropped_summary": dropped_line,
            "parabolas": par,
            "budgets": Cb,
            "N_opt": Nopt,
            "D_opt": Dopt,
            "L_opt": Lopt,
            "L_measured": Lmeas,
            "L_exponent_measured": l_meas_exp,
            "_fits": fits,
        },
        used=[float(b) for b in good],
        dropped=[{"what": float(b), "reason": f"{p['code']}: {p['why']}"}
                 for b, p in par.items() if not p["ok"]],
        bounds=bounds,
    )
    for f in flags:
        res.flag(f)
    return res


def fit_envelope(N: Any, C: Any, L: Any, *, level: float = LEVEL) -> FitResult:
    """Envelope method (Hoffmann et al. Approach 1): at each budget the measured size with
    the lowest loss; ``N_env = c C^a`` and ``L_env = c_L C^L_exponent`` by log-log OLS.

    No interpolation between sizes, so it is coarse where sizes are far apart, but it needs
    no parabola. Parameters ``a, L_exponent, N_coef, L_coef``; t-intervals. Needs 3 budgets.
    """
    N = as_array(N, "N", positive=True, min_len=3)
    C = as_array(C, "C", positive=True, min_len=3)
    L = as_array(L, "loss", positive=True, min_len=3)
    ub = np.unique(C)
    if ub.size < 3:
        raise FitError(f"envelope: {ub.size} budgets, 3 needed")
    Nb = np.empty(ub.size)
    Lb = np.empty(ub.size)
    for i, b in enumerate(ub):
        m = np.flatnonzero(C == b)
        j = m[np.argmin(L[m])]
        Nb[i], Lb[i] = N[j], L[j]
    if np.unique(Nb).size < 2:
        raise FitError("envelope: the same size is best at every budget; no slope")
    fn = fit_loglog(ub, Nb, level=level, law="N_env")
    fl = fit_loglog(ub, Lb, level=level, law="L_env")
    return FitResult(
        law="envelope",
        params={"a": fn.params["k"], "L_exponent": fl.params["k"], "N_coef": fn.params["c"],
                "L_coef": fl.params["c"]},
        ci={"a": fn.ci["k"], "L_exponent": fl.ci["k"], "N_coef": fn.ci["c"],
            "L_coef": fl.ci["c"]},
        n_points=int(N.size),
        loss=float(fn.loss + fl.loss),
        extra={"level": level, "form": "N_env = N_coef C^a, L_env = L_coef C^L_exponent",
               "method": "best measured size per budget; OLS log-log t-intervals",
               "budgets": ub, "N_env": Nb, "L_env": Lb,
               "_fits": {"N_env": fn, "L_env": fl}},
    )


_QUAD_NAMES = ("c0", "cN", "cD", "cNN", "cDD", "cND")


def _quad_design(lN: np.ndarray, lD: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(lN), lN, lD, lN**2, lD**2, lN * lD])


def quadratic_surface_optimum(coef: Any) -> tuple[float, float, float]:
    """Allocation exponents of a quadratic surface ``log L = q(log N, log D)``.

    On the budget line ``log D = s - log N`` (``s = log(C/k)``) the optimum is
    ``log N* = ((2 cDD - cND) s + cD - cN) / (2 (cNN + cDD - cND))``, so ``a = d log N*/ds``,
    ``b = 1 - a``. Returns ``(a, b, curvature)``; the optimum is a minimum iff curvature > 0.
    """
    c0, cN, cD, cNN, cDD, cND = (float(v) for v in coef)
    curv = cNN + cDD - cND
    a = (2 * cDD - cND) / (2 * curv) if curv != 0 else float("nan")
    return a, 1.0 - a, curv


def fit_quadratic_surface(
    N: Any, D: Any, L: Any, *, flops_per_param_sample: float = 6.0, level: float = LEVEL
) -> FitResult:
    """Quadratic surface ``log L = c0 + cN u + cD v + cNN u^2 + cDD v^2 + cND u v`` with
    ``u = log N``, ``v = log D`` (Tuyls et al.'s parametric fit).

    Loss: OLS in log L (closed form). Uncertainty: OLS covariance of the six coefficients
    and delta-method (:func:`~analysis.fitting.delta_method`) t-intervals for the allocation
    exponents ``a`` (``N_opt ~ C^a``) and ``b = 1 - a`` (:func:`quadratic_surface_optimum`).
    Needs >= 8 points; raises if the surface has no minimum along the budget lines.
    """
    N = as_array(N, "N", positive=True, min_len=8)
    D = as_array(D, "D", positive=True, min_len=8)
    L = as_array(L, "loss", positive=True, min_len=8)
    if not (N.size == D.size == L.size):
        raise FitError(f"inputs differ in length: N {N.size}, D {D.size}, loss {L.size}")
    u, v, y = np.log(N), np.log(D), np.log(L)
    # centre so the coefficients are well conditioned; exponents do not depend on it
    um, vm = u.mean(), v.mean()
    X = _quad_design(u - um, v - vm)
    if np.linalg.matrix_rank(X) < 6:
        raise FitError("quadratic surface: N and D do not vary enough (design is singular)")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    sse = float(resid @ resid)
    dof = N.size - 6
    cov = sse / max(dof, 1) * np.linalg.inv(X.T @ X)
    a, b, curv = quadratic_surface_optimum(coef)
    if not curv > 0:
        raise FitError("quadratic surface: no minimum along budget lines (curvature <= 0)")
    dm = delta_method(lambda th: quadratic_surface_optimum(th)[0], coef, cov, level=level,
                      dof=dof)
    se_a = float(dm["se"])
    t = t_quantile(level, dof)
    params = {"a": a, "b": b}
    ci = {"a": (a - t * se_a, a + t * se_a), "b": (b - t * se_a, b + t * se_a)}
    for name, val, s in zip(_QUAD_NAMES, coef, np.sqrt(np.diag(cov)), strict=True):
        params[name] = float(val)
        ci[name] = (float(val - t * s), float(val + t * s))
    return FitResult(
        law="quadratic_surface", params=params, ci=ci, n_points=int(N.size), loss=sse,
        extra={"level": level, "form": "log L = quadratic in (log N - u0, log D - v0)",
               "method": "OLS in log L; delta-method t-intervals for a, b",
               "centre": {"u0": um, "v0": vm}, "curvature": curv, "dof": dof,
               "k": flops_per_param_sample, "_cov": cov},
    )


def _quad_predict_opt(fit: FitResult, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, L_opt) of a quadratic surface at budgets C."""
    coef = np.array([fit.params[n] for n in _QUAD_NAMES])
    u0, v0 = fit.extra["centre"]["u0"], fit.extra["centre"]["v0"]
    s = np.log(np.atleast_1d(np.asarray(C, float)) / fit.extra["k"]) - u0 - v0  # centred line
    u, log_l = _quad_opt_logs(coef, s)
    return np.exp(u + u0), np.exp(log_l)


def _quad_opt_logs(coef: np.ndarray, s: Any) -> np.ndarray:
    """``[log N* - u0, log L*]`` of a quadratic surface on the centred budget line(s) ``s``
    (the one place the optimum's formula lives; see :func:`quadratic_surface_optimum`)."""
    c0, cN, cD, cNN, cDD, cND = coef
    u = ((2 * cDD - cND) * s + cD - cN) / (2 * (cNN + cDD - cND))
    v = s - u
    return np.array([u, c0 + cN * u + cD * v + cNN * u**2 + cDD * v**2 + cND * u * v])


@single_blas_thread
def compare_isoflop_methods(
    N: Any,
    C: Any,
    L: Any,
    D: Any,
    *,
    flops_per_param_sample: float = 6.0,
    loss_offset: bool = False,
    min_train: int = 3,
    n_starts: int = 16,
) -> dict[str, Any]:
    """Score every allocation method on held-out larger budgets (rolling CV).

    Target: at each held-out budget, the lowest measured loss (the envelope point). Each
    method predicts ``L_opt`` there from fits on the smaller budgets only: isoFLOP profiles
    (``L_opt`` power law, plus a constant with ``loss_offset``: its folds with fewer than 4
    training budgets fail and are skipped), envelope, Chinchilla Approach 3, quadratic
    surface. Score: RMSE of
    log loss (:func:`~analysis.fitting.rolling_cv`). Returns
    ``{"rmse": {method: value}, "folds": {...}, "best": method, "budgets": ..., "targets": ...}``
    (the envelope point per budget that the folds forecast).
    """
    N = as_array(N, "N", positive=True)
    C = as_array(C, "C", positive=True)
    L = as_array(L, "loss", positive=True)
    D = as_array(D, "D", positive=True)
    ub = np.unique(C)
    if ub.size <= min_train:
        raise FitError(f"method comparison: {ub.size} budgets, {min_train + 1} needed")
    # one target per budget: the envelope point
    tgt = np.array([L[C == b].min() for b in ub])

    def pick(train_b: np.ndarray) -> np.ndarray:
        return np.isin(C, train_b)

    def isoflop_fp(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        m = pick(ub[tr])
        f = fit_isoflop(N[m], C[m], L[m], D=D[m], loss_offset=loss_offset)
        if "L_opt" not in f.extra["_fits"]:
            raise FitError("isoflop: the L_opt law was not fitted")
        return predict_power(f.extra["_fits"]["L_opt"].params, ub[te])

    def envelope_fp(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        m = pick(ub[tr])
        f = fit_envelope(N[m], C[m], L[m])
        return f.params["L_coef"] * ub[te] ** f.params["L_exponent"]

    def chinchilla_fp(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        m = pick(ub[tr])
        f = fit_chinchilla(N[m], D[m], L[m], n_boot=0, n_starts=n_starts)
        return chinchilla_allocation(f.params, ub[te],
                                     flops_per_param_sample=flops_per_param_sample)[2]

    def quad_fp(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        m = pick(ub[tr])
        f = fit_quadratic_surface(N[m], D[m], L[m],
                                  flops_per_param_sample=flops_per_param_sample)
        return _quad_predict_opt(f, ub[te])[1]

    methods = {"isoflop_profiles": isoflop_fp, "envelope": envelope_fp,
               "chinchilla": chinchilla_fp, "quadratic_surface": quad_fp}
    rmse: dict[str, float] = {}
    folds: dict[str, Any] = {}
    for name, fp in methods.items():
        cv = rolling_cv(ub, tgt, fp, min_train=min_train)
        rmse[name] = cv.rmse
        folds[name] = cv.folds
    finite = {k: v for k, v in rmse.items() if math.isfinite(v)}
    best = min(finite, key=finite.get) if finite else None
    return {"rmse": rmse, "folds": folds, "best": best, "budgets": ub, "targets": tgt}


def forecast_isoflop(
    fit: FitResult, C: float, *, level: float = LEVEL
) -> dict[str, dict[str, float]]:
    """``N_opt``, ``D_opt``, ``L_opt`` at budget ``C`` from :func:`fit_isoflop`, each with its
    confidence interval (:func:`~analysis.fitting.loglog_intervals`, or the delta method
    for a power law plus constant). ``L_opt`` is absent where its law was not fitted
    (linear-space profiles with ``L_opt <= 0``)."""
    out = {}
    for name, f in fit.extra["_fits"].items():
        if f.law == "L_opt" and "offset" in f.params:
            iv = power_offset_intervals(f, [C], level=level)
        else:
            iv = loglog_intervals(f, [C], level=level)
        out[name] = {"value": float(iv["y"][0]), "low": float(iv["conf_low"][0]),
                     "high": float(iv["conf_high"][0]), "at": f"C={C:.3g}"}
    return out


# isoFLOP methods of compare_isoflop_methods, by the name it reports as "best"
ISOFLOP_METHODS = ("isoflop_profiles", "envelope", "chinchilla", "quadratic_surface")


def forecast_isoflop_method(method: str, fit: FitResult, C: float, *,
                            flops_per_param_sample: float = 6.0,
                            level: float | None = None) -> dict[str, dict[str, Any]]:
    """``N_opt`` and ``L_opt`` at budget ``C`` from the full-data fit of one method of
    :func:`compare_isoflop_methods` (``method`` as it names them), each ``{"value", "low",
    "high", "method"}`` with that method's own interval: isoFLOP profiles
    (:func:`forecast_isoflop`), envelope (log-log t confidence interval; too narrow on a
    coarse size grid), Chinchilla (:func:`forecast_chinchilla`, bootstrap percentiles; NaN
    without draws), quadratic surface (:func:`forecast_quadratic_surface`)."""
    level = fit.extra.get("level", LEVEL) if level is None else level
    if method == "isoflop_profiles":
        fc = forecast_isoflop(fit, C, level=level)
        how = "isoFLOP profiles' power laws, confidence interval"
        return {n: {**{k: fc[n][k] for k in ("value", "low", "high")}, "method": how}
                for n in ("N_opt", "L_opt") if n in fc}
    if method == "envelope":
        out = {}
        for n, sub in (("N_opt", "N_env"), ("L_opt", "L_env")):
            iv = loglog_intervals(fit.extra["_fits"][sub], [C], level=level)
            out[n] = {"value": float(iv["y"][0]), "low": float(iv["conf_low"][0]),
                      "high": float(iv["conf_high"][0]),
                      "method": "envelope log-log t confidence interval (ignores the size "
                                "grid: too narrow where sizes are far apart)"}
        return out
    if method == "chinchilla":
        fc = forecast_chinchilla(fit, C, flops_per_param_sample=flops_per_param_sample,
                                 level=level)
        return {n: fc[n] for n in ("N_opt", "L_opt")}
    if method == "quadratic_surface":
        fc = forecast_quadratic_surface(fit, C, level=level)
        return {n: fc[n] for n in ("N_opt", "L_opt")}
    raise FitError(f"unknown isoFLOP method {method!r}; one of {', '.join(ISOFLOP_METHODS)}")


def forecast_quadratic_surface(fit: FitResult, C: float, *, level: float | None = None
                               ) -> dict[str, dict[str, Any]]:
    """``N_opt``, ``D_opt``, ``L_opt`` at budget ``C`` from :func:`fit_quadratic_surface`:
    the minimum of ``log L`` on the budget line ``log D = log(C/k) - log N``. Intervals:
    delta method on ``log N*`` and ``log L*`` through the OLS covariance of the six
    coefficients, t on ``n - 6`` dof, then exponentiated; ``D_opt``'s ends are ``C/(k N*)``
    at ``N*``'s other ends."""
    level = fit.extra.get("level", LEVEL) if level is None else level
    coef = np.array([fit.params[n] for n in _QUAD_NAMES])
    u0, v0 = fit.extra["centre"]["u0"], fit.extra["centre"]["v0"]
    k = fit.extra["k"]
    s = math.log(C / k) - u0 - v0
    dm = delta_method(lambda th: _quad_opt_logs(th, s), coef, fit.extra["_cov"], level=level,
                      dof=max(fit.extra["dof"], 1))
    val, lo, hi = (np.asarray(dm[key], float) for key in ("value", "low", "high"))
    method = f"delta-method {level:.0%} t-interval (OLS covariance, {fit.extra['dof']} dof)"
    n = [safe_exp(float(x[0]) + u0) for x in (val, lo, hi)]
    out = {"N_opt": {"value": n[0], "low": n[1], "high": n[2], "method": method},
           "L_opt": {"value": safe_exp(float(val[1])), "low": safe_exp(float(lo[1])),
                     "high": safe_exp(float(hi[1])), "method": method}}
    out["D_opt"] = {"value": C / (k * n[0]), "low": C / (k * n[2]) if n[2] > 0 else math.nan,
                    "high": C / (k * n[1]) if n[1] > 0 else math.inf, "method": method}
    return out


# ========================================================================= Chinchilla Approach 3


#: Epoch / Hoffmann starting grid: alpha, beta in 0..2 step 0.5; e in -1..1 step 0.5;
#: a, b (log A, log B) in 0..25 step 5 -> 5*5*5*6*6 = 4500 starts.
CHINCHILLA_GRID: dict[str, np.ndarray] = {
    "a": np.arange(0.0, 25.0 + 1e-9, 5.0),
    "b": np.arange(0.0, 25.0 + 1e-9, 5.0),
    "e": np.arange(-1.0, 1.0 + 1e-9, 0.5),
    "alpha": np.arange(0.0, 2.0 + 1e-9, 0.5),
    "beta": np.arange(0.0, 2.0 + 1e-9, 0.5),
}


def chinchilla_objective(
    theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float = 1e-3
) -> np.ndarray:
    """Sum over points of ``Huber_delta(LSE(a - alpha logN, b - beta logD, e) - log L)``.

    ``theta`` is ``[a, b, e, alpha, beta]`` (``A = e^a, B = e^b, E = e^e``) or a 2-D array of
    such rows; evaluation is vectorised over rows (used to score the whole start grid at once).
    """
    th = np.atleast_2d(theta)
    a, b, e, al, be = (th[:, i : i + 1] for i in range(5))
    terms = np.stack(
        [a - al * logN[None, :], b - be * logD[None, :], np.broadcast_to(e, (th.shape[0], 1))
         * np.ones_like(logN)[None, :]],
        axis=0,
    )
    pred = special.logsumexp(terms, axis=0)
    out = special.huber(delta, pred - logL[None, :]).sum(axis=1)
    return out if np.ndim(theta) == 2 else out[0]


def _chinchilla_value_grad(
    theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    a, b, e, al, be = theta
    t1 = a - al * logN
    t2 = b - be * logD
    t3 = np.full_like(logN, e)
    m = np.maximum(np.maximum(t1, t2), t3)
    w1, w2, w3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
    s = w1 + w2 + w3
    r = m + np.log(s) - logL
    w1, w2, w3 = w1 / s, w2 / s, w3 / s
    absr = np.abs(r)
    hub = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    psi = np.clip(r, -delta, delta)
    grad = np.array(
        [
            (psi * w1).sum(),
            (psi * w2).sum(),
            (psi * w3).sum(),
            -(psi * w1 * logN).sum(),
            -(psi * w2 * logD).sum(),
        ]
    )
    return float(hub.sum()), grad


def _chinchilla_lbfgs(
    start: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float
) -> tuple[np.ndarray, float]:
    # The Huber sum is O(delta * n); divide by delta so L-BFGS's absolute gradient tolerance
    # is meaningful (same argmin).
    def f(th: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = _chinchilla_value_grad(th, logN, logD, logL, delta)
        return v / delta, g / delta

    res = optimize.minimize(
        f, start, jac=True, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-9,
                                                       "ftol": 1e-14}
    )
    return res.x, float(res.fun * delta)


def _chinchilla_params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, al, be = (float(v) for v in theta)
    A, B, E = math.exp(a), math.exp(b), math.exp(e)
    s = al + be
    p = {"E": E, "A": A, "B": B, "alpha": al, "beta": be}
    if s > 0 and al > 0 and be > 0:
        p["a"] = be / s
        p["b"] = al / s
        # N_opt = G (C/k)^a, D_opt = (C/k)^b / G  (Hoffmann eq. 4)
        p["G"] = math.exp((math.log(al) + a - math.log(be) - b) / s)
    else:
        p["a"] = p["b"] = p["G"] = float("nan")
    return p


#: methods of :func:`fit_chinchilla`; the first is the default
CHINCHILLA_METHODS = ("varpro", "grid")
#: variable projection: exponents searched in [0, VARPRO_EXP_MAX], first on a grid of step
#: VARPRO_STEP from VARPRO_STEP
VARPRO_EXP_MAX = 3.0
VARPRO_STEP = 0.1
# a term of the law below this fraction of every loss is not seen by the data
NEGLIGIBLE = 1e-4


def _chinchilla_identifiable(logN: np.ndarray, logD: np.ndarray) -> None:
    """Refuse (one-line FitError) data on which alpha and beta are not identifiable: N or D
    constant, every point on one budget (``N D`` equal within 1%), or ``log N`` and
    ``log D`` collinear (``D = c N^k`` at every point). An optimiser would otherwise return
    numbers (alpha 5.3, A 7.6e40 with an overflow warning on one budget)."""
    require_distinct(logN, "N", 2, "A/N^alpha is not identifiable")
    require_distinct(logD, "D", 2, "B/D^beta is not identifiable")
    lc = np.sort(logN + logD)
    n_budgets = 1 + int((np.diff(lc) > math.log1p(0.01)).sum())
    if n_budgets < 2:
        raise FitError("chinchilla: every point is on one budget (N D equal within 1%), so N "
                       "and D are collinear and alpha, beta are not identifiable; fit one "
                       "budget's profile with isoflop, or add budgets")
    uN, uD = logN - logN.mean(), logD - logD.mean()
    r = float(uN @ uD / math.sqrt((uN @ uN) * (uD @ uD)))
    if 1 - abs(r) < 1e-6:
        raise FitError(f"chinchilla: log N and log D are collinear (correlation {r:.7f}: D is "
                       "a power of N at every point), so alpha and beta are not "
                       "identifiable; vary N and D independently")


def _varpro_design(al: float, be: float, uN: np.ndarray, uD: np.ndarray,
                   w: np.ndarray) -> np.ndarray:
    return np.column_stack([w, w * np.exp(-al * uN), w * np.exp(-be * uD)])


def _varpro_linear(al: float, be: float, uN: np.ndarray, uD: np.ndarray,
                   w: np.ndarray) -> tuple[np.ndarray, float]:
    """For fixed exponents, ``(E, A', B') >= 0`` minimising ``sum ((E + A' e^{-alpha uN} +
    B' e^{-beta uD}) / L - 1)^2`` (NNLS, closed form up to the active set; ``w = 1/L``) and
    that sum."""
    coef, rnorm = optimize.nnls(_varpro_design(al, be, uN, uD, w), np.ones_like(w))
    return coef, float(rnorm * rnorm)


def _huber_linear(th: np.ndarray, uN: np.ndarray, uD: np.ndarray, logL: np.ndarray,
                  delta: float) -> tuple[float, np.ndarray]:
    """Huber objective / delta and its gradient in ``[E, A', B', alpha, beta]`` (centred
    logs: the prediction is ``E + A' e^{-alpha uN} + B' e^{-beta uD}``)."""
    E, A, B, al, be = th
    xN, xD = np.exp(-al * uN), np.exp(-be * uD)
    p = np.maximum(E + A * xN + B * xD, 1e-300)
    r = np.log(p) - logL
    absr = np.abs(r)
    hub = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    psi = np.clip(r, -delta, delta) / p
    grad = np.array([psi.sum(), (psi * xN).sum(), (psi * xD).sum(),
                     -(psi * A * uN * xN).sum(), -(psi * B * uD * xD).sum()])
    return float(hub.sum()) / delta, grad / delta


def _huber_linear_refine(start: np.ndarray, uN: np.ndarray, uD: np.ndarray,
                         logL: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    """Bounded L-BFGS-B on the Huber objective (E, A', B' >= 0, 0 <= alpha, beta <=
    VARPRO_EXP_MAX) from ``start``; returns ``(theta, Huber sum)``."""
    bounds = [(0.0, None)] * 3 + [(0.0, VARPRO_EXP_MAX)] * 2
    with np.errstate(over="ignore", invalid="ignore"):
        res = optimize.minimize(_huber_linear, np.clip(start, [0, 0, 0, 0, 0],
                                                       [np.inf] * 3 + [VARPRO_EXP_MAX] * 2),
                                args=(uN, uD, logL, delta), jac=True, method="L-BFGS-B",
                                bounds=bounds,
                                options={"maxiter": 2000, "gtol": 1e-9, "ftol": 1e-14})
    return res.x, float(res.fun * delta)


def _varpro_fit(logN: np.ndarray, logD: np.ndarray, L: np.ndarray,
                delta: float) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Approach 3 by variable projection (:func:`fit_chinchilla`, ``method="varpro"``);
    returns ``(theta = [E, A', B', alpha, beta] with centred logs, Huber sum, info)``."""
    mN, mD = float(logN.mean()), float(logD.mean())
    uN, uD, w = logN - mN, logD - mD, 1.0 / L
    exps = np.arange(VARPRO_STEP, VARPRO_EXP_MAX + 1e-9, VARPRO_STEP)
    best, best_r = (exps[0], exps[0]), np.inf
    for al in exps:
        for be in exps:
            _, r = _varpro_linear(al, be, uN, uD, w)
            if r < best_r:
                best, best_r = (al, be), r
    res = optimize.minimize(lambda p: _varpro_linear(p[0], p[1], uN, uD, w)[1],
                            np.array(best), method="L-BFGS-B",
                            bounds=[(0.0, VARPRO_EXP_MAX)] * 2)
    al, be = (float(v) for v in res.x)
    coef, _ = _varpro_linear(al, be, uN, uD, w)
    logL = np.log(L)
    theta, val = _huber_linear_refine(np.array([*coef, al, be]), uN, uD, logL, delta)
    # L-BFGS-B stops short of a bound where the objective is flat there: an exponent within
    # 1e-3 of its box edge goes onto it if that is no worse (so it is flagged as at a bound)
    for i in (3, 4):
        for edge in (0.0, VARPRO_EXP_MAX):
            if 0 < abs(theta[i] - edge) < 1e-3:
                trial = theta.copy()
                trial[i] = edge
                v = _huber_linear(trial, uN, uD, logL, delta)[0] * delta
                if v <= val * (1 + 1e-6):
                    theta, val = trial, min(val, v)
    return theta, val, {"centre": (mN, mD), "grid": int(exps.size) ** 2, "uN": uN, "uD": uD}


def _linear_params(theta: np.ndarray, centre: tuple[float, float]) -> dict[str, float]:
    """``E, A, B, alpha, beta, a, b, G`` from ``[E, A', B', alpha, beta]`` (centred logs);
    a, b and G are NaN where a term or exponent is 0 (no allocation follows)."""
    E, Ap, Bp, al, be = (float(v) for v in theta)
    mN, mD = centre
    A, B = Ap * safe_exp(al * mN), Bp * safe_exp(be * mD)
    p = {"E": E, "A": A, "B": B, "alpha": al, "beta": be}
    if al > 0 and be > 0 and Ap > 0 and Bp > 0 and math.isfinite(A) and math.isfinite(B):
        s = al + be
        p["a"], p["b"] = be / s, al / s
        p["G"] = math.exp((math.log(al) + math.log(Ap) + al * mN - math.log(be)
                           - math.log(Bp) - be * mD) / s)
    else:
        p["a"] = p["b"] = p["G"] = float("nan")
    return p


def _chinchilla_flags(fit: FitResult, N: np.ndarray, D: np.ndarray, L: np.ndarray) -> None:
    """Flag what the data do not pin: a term below NEGLIGIBLE of every loss (its exponent
    is then not identified) and negative exponents (the grid method is unbounded)."""
    p = fit.params
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        terms = {"A/N^alpha": (p["A"] / N ** p["alpha"], "alpha"),
                 "B/D^beta": (p["B"] / D ** p["beta"], "beta")}
    for term, (vals, exp_name) in terms.items():
        coef = term[0]
        if p[coef] == 0:
            continue  # exactly 0: at its bound, flagged by FitResult
        if np.all(np.isfinite(vals)) and float(np.max(vals / L)) < NEGLIGIBLE:
            fit.flag(f"{term} is below {NEGLIGIBLE:.0e} of every loss: {exp_name} (and the "
                     "allocation a, b) are not identified by these data")
    if 0 < p["E"] < NEGLIGIBLE * float(L.min()):
        fit.flag(f"E = {p['E']:.3g} is below {NEGLIGIBLE:.0e} of every loss: at its lower "
                 "bound 0 in effect (no irreducible loss is seen)")
    for name in ("alpha", "beta"):
        if p[name] < 0:
            fit.flag(f"{name} = {p[name]:.3g} < 0: the loss rises with "
                     f"{'N' if name == 'alpha' else 'D'}; the law and its allocation are "
                     "not meaningful here")


@single_blas_thread
def fit_chinchilla(
    N: Any,
    D: Any,
    loss: Any,
    *,
    method: str = "varpro",
    delta: float = 1e-3,
    n_starts: int | None = 32,
    grid: Mapping[str, Sequence[float]] | None = None,
    n_boot: int = 100,
    groups: Any = None,
    level: float = LEVEL,
    seed: int = 0,
) -> FitResult:
    """Chinchilla Approach 3: ``L(N, D) = E + A / N^alpha + B / D^beta``.

    Form and loss (Hoffmann et al. 2022; Besiroglu et al. 2024, Epoch's replication):
    minimise ``sum_i Huber_delta(log(E + A/N_i^alpha + B/D_i^beta) - log L_i)``,
    delta = 1e-3. Both methods minimise this same objective; ``loss`` is its value.

    Identifiability (both methods, before any optimisation): N or D constant, every point
    on one budget (``N D`` equal within 1%) or ``log N``, ``log D`` collinear is a one-line
    FitError, not numbers.

    ``method="varpro"`` (default), variable projection: the law is linear in
    ``(E, A, B)``. Solved in closed form: for fixed ``(alpha, beta)``, ``E, A, B >= 0`` by
    non-negative least squares of the relative residuals ``(E + A/N^alpha + B/D^beta -
    L) / L`` (the first-order expansion of the log residual; logs centred so the columns
    are O(1)). Optimised: the exponents only, on that projected sum of squares, first on a
    30 x 30 grid (0.1..3 step 0.1) and then by bounded L-BFGS-B (0 <= alpha, beta <= 3).
    Not closed form: the Huber loss (delta is tiny, so it is nearly least absolute
    deviations of log L); the projected optimum therefore starts one bounded L-BFGS-B
    (analytic gradient) over all five parameters (``E, A, B >= 0``) on the Huber objective.
    A term at 0 (e.g. ``E = 0``) is reached exactly and flagged as at its bound.

    ``method="grid"`` (the earlier default): with ``A = e^a, B = e^b, E = e^e`` the
    prediction is the log-sum-exp of ``(a - alpha log N, b - beta log D, e)``, unbounded
    L-BFGS-B (analytic gradient) from a grid of starts (:data:`CHINCHILLA_GRID`: alpha,
    beta in 0..2 step 0.5, e in -1..1 step 0.5, a, b in 0..25 step 5; 4500 starts),
    scored in one vectorised pass, the ``n_starts`` best refined (``None``: all 4500, as
    Epoch did). ``n_starts`` and ``grid`` apply to this method only.

    Measured on the synthetic BC studies (same optimum to 1e-7 in the objective; varpro
    about 15x faster, and where E = 0 it reaches the bound instead of e -> -inf; see
    docs/analysis.md).

    Uncertainty: percentile bootstrap over points (or over ``groups``, e.g. run ids, so all
    points of a run are resampled together), ``n_boot`` resamples, each refitted by
    L-BFGS-B warm-started at the full-data optimum (in the method's own parameters: bounded
    for varpro). ``n_boot=0`` gives NaN intervals. Zero-width intervals and parameters at a
    bound are flagged (:class:`~analysis.fitting.FitResult`), as is a term below 1e-4 of
    every loss (its exponent is not identified) and a negative exponent.

    Parameters reported: ``E, A, B, alpha, beta`` and the compute-optimal allocation exponents
    ``a = beta / (alpha + beta)`` (``N_opt ~ C^a``), ``b = alpha / (alpha + beta)``
    (``D_opt ~ C^b``) and the prefactor ``G`` (``N_opt = G (C/k)^a`` for ``C = k N D``);
    ``a, b, G`` are NaN where A or B is 0. ``used`` lists the model sizes. ``extra`` states
    ``form``, ``method`` and ``theta`` (``log_A``, ``log_B``, ``log_E`` at the optimum).
    Exponents do not depend on the units of N and D. Needs >= 6 points.
    """
    if method not in CHINCHILLA_METHODS:
        raise FitError(f"chinchilla: unknown method {method!r}; one of "
                       f"{', '.join(CHINCHILLA_METHODS)}")
    N = as_array(N, "N", positive=True, min_len=6)
    D = as_array(D, "D", positive=True, min_len=6)
    L = as_array(loss, "loss", positive=True, min_len=6)
    _same_length(N=N, D=D, loss=L)
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    _chinchilla_identifiable(logN, logD)
    names = ["E", "A", "B", "alpha", "beta", "a", "b", "G"]
    form = "L = E + A/N^alpha + B/D^beta"
    huber = f"Huber loss (delta {delta:g}) on log L"
    bounds: dict[str, tuple[float, float]] = {}
    if method == "varpro":
        theta, best_val, info = _varpro_fit(logN, logD, L, delta)
        centre = info["centre"]
        params = _linear_params(theta, centre)
        k = int(round(math.sqrt(info["grid"])))
        fit_desc = (f"{huber} of E + A/N^alpha + B/D^beta; variable projection: E, A, B >= 0 "
                    f"by NNLS on relative residuals for each (alpha, beta), exponents on a "
                    f"{k}x{k} grid ({VARPRO_STEP:g}..{VARPRO_EXP_MAX:g}) then bounded "
                    f"L-BFGS-B on the projected sum of squares; then bounded L-BFGS-B on the "
                    f"Huber objective over all five (E, A, B >= 0, 0 <= alpha, beta <= "
                    f"{VARPRO_EXP_MAX:g})")
        bounds = {"E": (0.0, math.inf), "A": (0.0, math.inf), "B": (0.0, math.inf),
                  "alpha": (0.0, VARPRO_EXP_MAX), "beta": (0.0, VARPRO_EXP_MAX)}
        uN, uD = info["uN"], info["uD"]

        def refit(idx: np.ndarray) -> dict[str, float]:
            th, _ = _huber_linear_refine(theta, uN[idx], uD[idx], logL[idx], delta)
            return _linear_params(th, centre)

        extra_method: dict[str, Any] = {"grid_exponents": info["grid"]}
    else:
        g = {k: np.asarray(v, dtype=float) for k, v in (grid or CHINCHILLA_GRID).items()}
        starts = np.array(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"],
                                                 g["beta"])))
        # Score the whole grid in chunks (keeps memory at a few MB for large data sets).
        vals = np.concatenate(
            [chinchilla_objective(starts[i : i + 512], logN, logD, logL, delta)
             for i in range(0, len(starts), 512)]
        )
        order = np.argsort(vals, kind="stable")
        if n_starts is not None:
            order = order[:n_starts]
        best_theta, best_val = None, np.inf
        for i in order:
            th, v = _chinchilla_lbfgs(starts[i], logN, logD, logL, delta)
            if np.isfinite(v) and v < best_val:
                best_theta, best_val = th, v
        if best_theta is None:
            raise FitError("chinchilla: no start converged")
        theta = best_theta
        params = _chinchilla_params(best_theta)
        fit_desc = (f"{huber}, prediction by log-sum-exp of "
                    f"(log A - alpha log N, log B - beta log D, log E); L-BFGS-B from a "
                    f"{len(starts)}-start grid scored in one pass, best {len(order)} refined")

        def refit(idx: np.ndarray) -> dict[str, float]:
            th, _ = _chinchilla_lbfgs(best_theta, logN[idx], logD[idx], logL[idx], delta)
            return _chinchilla_params(th)

        extra_method = {"n_starts_grid": int(len(starts)), "n_starts_refined": int(len(order))}

    def log_or_ninf(v: float) -> float:
        return math.log(v) if v > 0 else -math.inf

    extra: dict[str, Any] = {
        "level": level,
        "form": form,
        "delta": delta,
        "chinchilla_method": method,
        **extra_method,
        "method": f"{fit_desc}; no intervals (n_boot=0)",
        # log-parameters at the optimum; not "a"/"b", which are the allocation exponents
        "theta": {"log_A": log_or_ninf(params["A"]), "log_B": log_or_ninf(params["B"]),
                  "log_E": log_or_ninf(params["E"])},
    }
    ci = {k: (float("nan"), float("nan")) for k in names}
    if n_boot > 0:
        bs = bootstrap(refit, N.size, groups=groups, n_boot=n_boot, level=level, seed=seed)
        ci = {k: bs.ci.get(k, (float("nan"), float("nan"))) for k in names}
        extra["method"] = (f"{fit_desc}; percentile bootstrap over {bs.unit} ({n_boot} draws, "
                           "warm-started)")
        extra["bootstrap"] = bs.summary()
        extra["_draws"] = bs.draws
    fit = FitResult(law="chinchilla", params=params, ci=ci, n_points=N.size, loss=best_val,
                    extra=extra, used=[float(n) for n in np.unique(N)], bounds=bounds)
    _chinchilla_flags(fit, N, D, L)
    return fit


def predict_chinchilla(params: Mapping[str, float], N: Any, D: Any) -> np.ndarray:
    """``E + A / N^alpha + B / D^beta``."""
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def chinchilla_allocation(
    params: Mapping[str, float], C: Any, *, flops_per_param_sample: float = 6.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute-optimal ``(N_opt, D_opt, L_opt)`` at budget ``C = k N D`` (k = 6 for BC)."""
    C = np.asarray(C, dtype=float)
    al, be = params["alpha"], params["beta"]
    G = (al * params["A"] / (be * params["B"])) ** (1.0 / (al + be))
    Ck = C / flops_per_param_sample
    N_opt = G * Ck ** (be / (al + be))
    D_opt = Ck / N_opt
    return N_opt, D_opt, predict_chinchilla(params, N_opt, D_opt)


def forecast_chinchilla(fit: FitResult, C: float, *, flops_per_param_sample: float = 6.0,
                        level: float | None = None) -> dict[str, dict[str, Any]]:
    """``N_opt``, ``D_opt``, ``L_opt`` at budget ``C = k N D`` from a
    :func:`fit_chinchilla` result, each ``{"value", "low", "high",
    "method"}``. Intervals: the ``(1 -+ level) / 2`` percentiles (``level`` defaults to the
    fit's own) of the same quantity computed from each bootstrap draw's parameters; with 3
    draws or fewer (or ``n_boot=0``) they are NaN."""
    level = fit.extra.get("level", LEVEL) if level is None else level
    k = flops_per_param_sample
    point = chinchilla_allocation(fit.params, [C], flops_per_param_sample=k)
    names = ("N_opt", "D_opt", "L_opt")
    draws = fit.extra.get("_draws") or {}
    n_draws = len(draws.get("alpha", ()))
    out = {n: {"value": float(v[0]), "low": math.nan, "high": math.nan,
               "method": f"point estimate only ({n_draws} bootstrap draws; an interval "
                         "needs at least 4)"}
           for n, v in zip(names, point, strict=True)}
    if n_draws <= 3:
        return out
    keys = ("E", "A", "B", "alpha", "beta")
    with np.errstate(all="ignore"):  # a far-off draw may overflow: dropped below
        per = np.array([[float(v[0]) for v in chinchilla_allocation(
            {q: draws[q][i] for q in keys}, [C], flops_per_param_sample=k)]
            for i in range(len(draws["alpha"]))])
    q = [50 * (1 - level), 50 * (1 + level)]
    for j, n in enumerate(names):
        v = per[:, j][np.isfinite(per[:, j])]
        if v.size > 3:
            lo, hi = np.percentile(v, q)
            out[n].update(low=float(lo), high=float(hi),
                          method=f"{level:.0%} percentiles over {v.size} bootstrap draws")
    return out


# =========================================================================== return vs loss


def fit_return_vs_loss(loss: Any, ret: Any, *, level: float = LEVEL) -> FitResult:
    """Return vs validation loss (Tuyls et al.): ``R = offset + c L^k`` with ``k < 0`` (an
    inverse power law plus constant).

    :func:`~analysis.fitting.fit_power_offset` on the raw return scale (``space="linear"``,
    returns may approach a ceiling from below), ``k`` in [-10, -0.01], offset free; delta-
    method t-intervals. Needs >= 4 points and 3 distinct losses; errors name ``loss`` and
    ``return``.
    """
    f = fit_power_offset(loss, ret, space="linear", k_bounds=(-10.0, -0.01),
                         offset_bounds=(-np.inf, np.inf), level=level, law="return_vs_loss",
                         names=("loss", "return"))
    f.extra["form"] = "R = offset + c L^k"
    return f


# =========================================================================== driver


def _fit_curve(fit: FitResult, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x, fit.params.get("offset", 0.0) + fit.params["c"] * x ** fit.params["k"]


def study_isoflop(st: StudyResult, df: pd.DataFrame, metric: str, out: Path, *,
                  n_boot: int = 50, budget: float | None = None, n_budgets: int = 8,
                  loss_offset: bool = False, axes: Mapping[str, str] | None = None) -> None:
    """isoFLOP profiles and the allocation laws on a BC-style size sweep. The profiles'
    used and dropped budgets go into the fit (``laws.json``, ``report.md``), with a table
    ``isoFLOP profiles per budget`` (:func:`profile_table`) and the context line
    ``isoFLOP budgets``. ``loss_offset``:
    fit ``L_opt = L_inf + L_coef C^L_exponent`` instead of a pure power law. ``axes``: the
    study's roles (``params`` may name the parameter-count column; default
    ``params.effective``)."""
    n_col, _, _ = size_columns(df, axes)
    if n_col is None:
        raise FitError("no parameter count (params.effective) in run.json")
    if not is_loss_metric(metric):
        raise FitError(f"isoFLOP profiles need a loss metric, not {metric}")
    dcol = curves.data_column(df)
    d = finite(df, [n_col, "flops", metric, dcol])
    d = d[(d["flops"] > 0) & (d[metric] > 0) & (d[dcol] > 0)]
    # budgets inside the logged range of at least 3 model sizes
    rng = d.groupby(n_col)["flops"].agg(["min", "max"])
    cand = np.geomspace(d["flops"].min(), d["flops"].max(), 60)
    cover = np.array([((rng["min"] <= c) & (rng["max"] >= c)).sum() for c in cand])
    cand = cand[cover >= 3]
    if cand.size < 3:
        raise FitError("fewer than 3 FLOP budgets are reached by 3 model sizes")
    budgets = np.geomspace(cand.min(), cand.max(), n_budgets)
    prof = curves.at_budgets(d, budgets, metric, x="flops", keep=[n_col])
    prof = prof.groupby([n_col, "budget"], as_index=False).agg(
        **{metric: (metric, "mean"), "data": ("data", "mean")})
    st.context["budgets"] = ", ".join(f"{b:.3g}" for b in budgets)
    N, C, L, D = (prof[c].to_numpy(float) for c in (n_col, "budget", metric, "data"))
    target = budget or float(budgets.max() * 10)

    iso = attempt(st, "isoFLOP profiles", lambda: fit_isoflop(N, C, L, D=D,
                                                              loss_offset=loss_offset))
    par = iso.extra["parabolas"] if iso is not None else attempt(
        st, "isoFLOP parabolas", lambda: isoflop_parabolas(N, C, L))
    if par:
        st.tables["isoFLOP profiles per budget"] = profile_table(par)
        st.context["isoFLOP budgets"] = (
            f"{sum(p['ok'] for p in par.values())} used; {summarize_dropped(par)}")
    st.figures += figures.plot_isoflop(
        prof, n_col, metric, out, f"{slug(st.key)}_isoflop_profiles",
        parabolas=_figure_parabolas(par or {}),
        title=f"{st.experiment}: isoFLOP profiles", ylabel=metric)
    if iso is not None:
        st.fits["isoFLOP profiles"] = iso
        fc = forecast_isoflop(iso, target)
        for k, v in fc.items():
            st.forecasts[f"{k} (isoFLOP)"] = v
        for name, ylab in (("N_opt", "parameters N"), ("D_opt", "data D"),
                           ("L_opt", metric)):
            if name not in iso.extra["_fits"]:
                continue
            f = iso.extra["_fits"][name]
            xg = np.geomspace(iso.extra["budgets"].min(), target * 1.5, 100)
            offset = "offset" in f.params
            iv = power_offset_intervals(f, xg) if offset else loglog_intervals(f, xg)
            label = (f"{name} = {f.params['offset']:.3g} + c C^{f.params['k']:.3g}" if offset
                     else f"{name} ∝ C^{f.params['k']:.3g}")
            st.figures += figures.plot_power_law(
                iso.extra["budgets"], iso.extra[name], out,
                f"{slug(st.key)}_{name}_vs_compute", fit_x=xg, fit_y=iv["y"],
                band=(iv["conf_low"], iv["conf_high"]),
                forecast={"x": target, "y": fc[name]["value"], "low": fc[name]["low"],
                          "high": fc[name]["high"]},
                title=f"{st.experiment}: {name} vs compute", xlabel="training FLOPs C",
                ylabel=ylab, fit_label=label)
    env = attempt(st, "envelope", lambda: fit_envelope(N, C, L))
    if env is not None:
        st.fits["envelope"] = env
    # parametric surfaces on every log point (not only the profile points)
    groups = d["run_dir"].to_numpy()
    Nall, Dall, Lall = (d[c].to_numpy(float) for c in (n_col, dcol, metric))
    kflops = float(np.median(d["flops"] / (d[n_col] * d[dcol])))
    st.context["FLOPs per parameter per sample (k in C = k N D)"] = kflops
    ch = attempt(st, "Chinchilla Approach 3", lambda: fit_chinchilla(
        Nall, Dall, Lall, n_boot=n_boot, groups=groups))
    if ch is not None:
        st.fits["Chinchilla Approach 3"] = ch
        # percentiles of the bootstrap draws at the fit's own level
        for name, r in forecast_chinchilla(ch, target,
                                           flops_per_param_sample=kflops).items():
            st.forecasts[f"{name} (Chinchilla)"] = {**r, "at": f"C={target:.3g}"}
    qs = attempt(st, "quadratic surface", lambda: fit_quadratic_surface(
        Nall, Dall, Lall, flops_per_param_sample=kflops))
    if qs is not None:
        st.fits["quadratic surface"] = qs
    cmp_ = attempt(st, "method choice (held-out RMSE)", lambda: compare_isoflop_methods(
        N, C, L, D, flops_per_param_sample=kflops, loss_offset=loss_offset))
    if cmp_ is not None:
        st.tables["held-out RMSE of log L_opt on larger budgets (rolling CV)"] = pd.DataFrame(
            {"method": list(cmp_["rmse"]), "rmse": list(cmp_["rmse"].values())})
        st.context["method chosen by held-out RMSE"] = str(cmp_["best"])
        if cmp_["best"] is not None:
            full = {"isoflop_profiles": iso, "envelope": env, "chinchilla": ch,
                    "quadratic_surface": qs}
            attempt(st, "headline forecast (best method)", lambda: _best_method_forecast(
                st, cmp_, full, target, kflops))
        forecasts = {m: [(c, p) for fold in folds if "pred" in fold
                         for c, p in zip(fold["budget"], fold["pred"], strict=True)]
                     for m, folds in cmp_["folds"].items()}
        st.figures += figures.plot_extrapolation(
            cmp_["budgets"], cmp_["targets"], forecasts, out,
            f"{slug(st.key)}_extrapolation_check",
            title=f"{st.experiment}: L_opt forecast one budget ahead vs measured")
    # return vs loss
    rcol = next((c for c in ("eval_return", "return_mean") if c in d), None)
    if rcol is not None:
        rl = finite(d, [rcol])

        def rvl() -> None:
            fit = fit_return_vs_loss(rl[metric], rl[rcol])
            st.fits[f"{rcol} vs {metric}"] = fit
            xg = np.geomspace(rl[metric].min(), rl[metric].max(), 100)
            st.figures.extend(figures.plot_scatter(
                rl[metric].to_numpy(float), rl[rcol].to_numpy(float), out,
                f"{slug(st.key)}_{rcol}_vs_{metric}", color_by=rl[n_col].to_numpy(float),
                color_label="N", fit_curve=_fit_curve(fit, xg),
                fit_label=f"R = {fit.params['offset']:.3g} + c L^{fit.params['k']:.3g}",
                title=f"{st.experiment}: {rcol} vs {metric}", xlabel=metric, ylabel=rcol))
        attempt(st, f"{rcol} vs {metric}", rvl)
    else:
        st.skipped["return vs loss"] = "no eval_return logged"


def profile_table(par: Mapping[float, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per budget of :func:`isoflop_parabolas`: sizes (in the window / at the
    budget), the parabola's optimum beside the best measured point, the fit quality, and
    ``used`` or the reason it was dropped (the report's per-budget table)."""
    rows = []
    for b, p in par.items():
        rows.append({"budget C": b, "sizes (window/all)": f"{p['n_window']}/{p['n']}",
                     "N_opt": p["N_opt"], "L_opt": p["L_opt"], "best measured N": p["N_measured"],
                     "best measured L": p["L_measured"], "rms": p["rms"],
                     "status": "used" if p["ok"] else f"dropped: {p['code']}"})
    return pd.DataFrame(rows)


def _figure_parabolas(par: Mapping[float, Mapping[str, Any]]) -> dict[float, dict[str, float]]:
    """What :func:`~analysis.figures.plot_isoflop` draws for each budget with an optimum:
    the parabola in its own space (``log y`` or ``y`` against ``u = log N``) over the window
    of sizes it was fitted on."""
    return {b: {k: p[k] for k in ("a", "b", "c", "space", "N_lo", "N_hi")}
            for b, p in par.items() if np.isfinite(p["a"]) and np.isfinite(p["N_opt"])}


def _best_method_forecast(st: StudyResult, cmp_: dict[str, Any],
                          full: dict[str, FitResult | None], target: float,
                          kflops: float) -> None:
    """Headline forecasts ``L_opt (best method: NAME)`` and ``N_opt (best method: NAME)`` at
    the target budget from the full-data fit of the method with the least held-out RMSE,
    with that method's own interval; listed first among the study's forecasts."""
    best = cmp_["best"]
    fit = full.get(best)
    if fit is None:
        raise FitError(f"{best} was chosen by held-out RMSE but its fit on all budgets failed")
    fc = forecast_isoflop_method(best, fit, target, flops_per_param_sample=kflops)
    why = f"method chosen by held-out RMSE of log L_opt ({cmp_['rmse'][best]:.3g})"
    head = {f"{name} (best method: {best})": {**fc[name], "at": f"C={target:.3g}",
                                              "method": f"{fc[name]['method']}; {why}"}
            for name in ("L_opt", "N_opt") if name in fc}
    st.forecasts = {**head, **st.forecasts}


def run_study(st: StudyResult, df: pd.DataFrame, spec: Study, metric: str, out: Path,
              opts: Options) -> None:
    """The ``isoflop`` study (:func:`study_isoflop`)."""
    study_isoflop(st, df, metric, out, n_boot=opts.n_boot, budget=opts.budget,
                  loss_offset=opts.loss_offset, axes=spec.axes)
