"""isoFLOP study: compute-optimal allocation on a fixed dataset (Tuyls et al. 2024), laws
and driver.

Model size varies on a fixed dataset (behavioural cloning: no env steps, a loss metric),
each run logging at many sample counts so one run fills every FLOP budget for its size.
Everything about compute-optimal allocation lives here:

- isoFLOP profiles (Hoffmann et al. Approach 2): :func:`isoflop_parabolas`,
  :func:`fit_isoflop`, :func:`forecast_isoflop`;
- the envelope (Approach 1): :func:`fit_envelope`;
- Chinchilla Approach 3, ``L = E + A/N^alpha + B/D^beta``: :func:`fit_chinchilla`,
  :func:`chinchilla_allocation`, :func:`forecast_chinchilla`;
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
    rolling_cv,
    safe_exp,
    single_blas_thread,
    t_quantile,
)
from analysis.report import StudyResult
from analysis.study import Options, Study, attempt, finite, is_loss_metric, size_columns, slug

__all__ = [
    "isoflop_parabolas",
    "fit_isoflop",
    "forecast_isoflop",
    "fit_envelope",
    "CHINCHILLA_GRID",
    "chinchilla_objective",
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


def isoflop_parabolas(
    N: Any, C: Any, L: Any, *, min_sizes: int = 3
) -> dict[float, dict[str, float]]:
    """Per FLOP budget, the parabola ``L = a (log N)^2 + b log N + c`` and its minimum.

    Least squares per budget (closed form, ``numpy.polyfit``) over the model sizes measured
    at that budget. A budget with fewer than ``min_sizes`` sizes, or whose parabola is not
    convex (``a <= 0``: the minimum is not bracketed), or whose minimum falls outside the
    measured sizes, is returned with ``ok = False`` and a ``why``. Keys per budget:
    ``a, b, c, N_opt, L_opt, n, ok, why``.
    """
    N = as_array(N, "N", positive=True)
    C = as_array(C, "C", positive=True)
    L = as_array(L, "loss")
    out: dict[float, dict[str, Any]] = {}
    for budget in np.unique(C):
        m = C == budget
        lx, ly = np.log(N[m]), L[m]
        n = int(np.unique(lx).size)
        rec: dict[str, Any] = {"n": n, "ok": False, "why": "", "a": float("nan"),
                               "b": float("nan"), "c": float("nan"),
                               "N_opt": float("nan"), "L_opt": float("nan")}
        if n < min_sizes:
            rec["why"] = f"{n} model sizes at this budget, {min_sizes} needed"
        else:
            a, b, c = np.polyfit(lx, ly, 2)
            rec.update(a=float(a), b=float(b), c=float(c))
            if a <= 0:
                rec["why"] = "profile is not convex (no interior minimum)"
            else:
                lmin = -b / (2 * a)
                rec["N_opt"] = float(math.exp(lmin))
                rec["L_opt"] = float(a * lmin**2 + b * lmin + c)
                if lmin < lx.min() - 1e-9 or lmin > lx.max() + 1e-9:
                    rec["why"] = "minimum outside the measured sizes"
                else:
                    rec["ok"] = True
        out[float(budget)] = rec
    return out


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
) -> FitResult:
    """isoFLOP-profile law: ``N_opt = k_N C^a``, ``D_opt = k_D C^b``, ``L_opt = k_L C^L_exponent``.

    Per budget a parabola in ``log N`` (:func:`isoflop_parabolas`) gives ``N_opt(C)`` and
    ``L_opt(C)``. ``D_opt`` is the data at the optimum: interpolated in log-log from the
    points' ``D`` at that budget when given, else ``C / (k N_opt)`` (so ``b = 1 - a``).
    Each is then a power law in ``C`` fitted by :func:`~analysis.fitting.fit_loglog` (OLS in
    log-log space, t-intervals on ``n_budgets - 2`` dof; needs 3 budgets with an interior
    minimum). With ``loss_offset`` ``L_opt = L_inf + k_L C^L_exponent`` is fitted by
    :func:`~analysis.fitting.fit_power_offset` (needs 4 budgets). ``loss`` is the summed
    squared log residuals of the three power laws.
    Parameters: ``a, b, L_exponent, N_coef, D_coef, L_coef`` (and ``L_inf``).
    """
    N = as_array(N, "N", positive=True, min_len=3)
    C = as_array(C, "C", positive=True, min_len=3)
    L = as_array(L, "loss", min_len=3)
    if not (N.size == C.size == L.size):
        raise FitError(f"inputs differ in length: N {N.size}, C {C.size}, loss {L.size}")
    Dv = None if D is None else as_array(D, "D", positive=True)
    par = isoflop_parabolas(N, C, L, min_sizes=min_sizes)
    good = [b for b, p in par.items() if p["ok"]]
    if len(good) < 3:
        reasons = "; ".join(f"C={b:.3g}: {p['why']}" for b, p in par.items() if not p["ok"])
        raise FitError(f"isoflop: {len(good)} budgets with an interior minimum, 3 needed"
                       + (f" ({reasons})" if reasons else ""))
    Cb = np.array(good)
    Nopt = np.array([par[b]["N_opt"] for b in good])
    Lopt = np.array([par[b]["L_opt"] for b in good])
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
    if loss_offset:
        if Lopt.min() <= 0:
            raise FitError("loss: non-positive L_opt, a power law plus constant needs L > 0")
        fl = fit_power_offset(Cb, Lopt, level=level, law="L_opt")
        params["L_exponent"] = fl.params["k"]
        ci["L_exponent"] = fl.ci["k"]
    else:
        if Lopt.min() <= 0:
            raise FitError("loss: non-positive L_opt where a log is taken")
        fl = fit_loglog(Cb, Lopt, level=level, law="L_opt")
        params["L_exponent"] = fl.params["k"]
        ci["L_exponent"] = fl.ci["k"]
    params.update(N_coef=fn.params["c"], D_coef=fd.params["c"], L_coef=fl.params["c"])
    ci.update(N_coef=fn.ci["c"], D_coef=fd.ci["c"], L_coef=fl.ci["c"])
    if loss_offset:
        params["L_inf"] = fl.params["offset"]
        ci["L_inf"] = fl.ci["offset"]
    return FitResult(
        law="isoflop",
        params=params,
        ci=ci,
        n_points=int(N.size),
        loss=float(fn.loss + fd.loss + fl.loss),
        extra={
            "level": level,
            "form": "N_opt = N_coef C^a, D_opt = D_coef C^b, L_opt = [L_inf +] L_coef C^L_exp",
            "method": "parabola in log N per budget; OLS log-log t-intervals across budgets",
            "n_budgets": len(good),
            "parabolas": par,
            "budgets": Cb,
            "N_opt": Nopt,
            "D_opt": Dopt,
            "L_opt": Lopt,
            "_fits": {"N_opt": fn, "D_opt": fd, "L_opt": fl},
        },
    )


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
    for a power law plus constant)."""
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
                for n in ("N_opt", "L_opt")}
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


@single_blas_thread
def fit_chinchilla(
    N: Any,
    D: Any,
    loss: Any,
    *,
    delta: float = 1e-3,
    n_starts: int | None = 32,
    grid: Mapping[str, Sequence[float]] | None = None,
    n_boot: int = 100,
    groups: Any = None,
    level: float = LEVEL,
    seed: int = 0,
) -> FitResult:
    """Chinchilla Approach 3: ``L(N, D) = E + A / N^alpha + B / D^beta``.

    Form and loss (Hoffmann et al. 2022; Besiroglu et al. 2024, Epoch's replication): with
    ``A = e^a, B = e^b, E = e^e`` minimise
    ``sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)``, delta = 1e-3.

    Optimiser and starts: L-BFGS-B (analytic gradient) from a grid of starts
    (:data:`CHINCHILLA_GRID`: alpha, beta in 0..2 step 0.5, e in -1..1 step 0.5, a, b in 0..25
    step 5; 4500 starts). The objective is first evaluated on the whole grid in one vectorised
    pass and L-BFGS is run only from the ``n_starts`` best starts (``n_starts=None`` runs all
    4500, as Epoch did); the best optimum is kept. Pruning is safe in practice because
    neighbouring starts converge to the same basin; the test-suite checks the pruned fit against
    the full grid.

    Uncertainty: percentile bootstrap over points (or over ``groups``, e.g. run ids, so all
    points of a run are resampled together), ``n_boot`` resamples, each refitted with L-BFGS
    warm-started at the full-data optimum. ``n_boot=0`` gives NaN intervals.

    Parameters reported: ``E, A, B, alpha, beta`` and the compute-optimal allocation exponents
    ``a = beta / (alpha + beta)`` (``N_opt ~ C^a``), ``b = alpha / (alpha + beta)``
    (``D_opt ~ C^b``) and the prefactor ``G`` (``N_opt = G (C/k)^a`` for ``C = k N D``).
    ``loss`` is the minimised Huber sum. ``extra`` states ``form``, ``method`` (Huber delta,
    log-sum-exp, grid size, refined starts, intervals) and ``theta`` (``log_A``, ``log_B``,
    ``log_E`` at the optimum). Exponents do not depend on the units of N and D.
    Needs >= 6 points.
    """
    N = as_array(N, "N", positive=True, min_len=6)
    D = as_array(D, "D", positive=True, min_len=6)
    L = as_array(loss, "loss", positive=True, min_len=6)
    _same_length(N=N, D=D, loss=L)
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    g = {k: np.asarray(v, dtype=float) for k, v in (grid or CHINCHILLA_GRID).items()}
    starts = np.array(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])))
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
    params = _chinchilla_params(best_theta)
    names = ["E", "A", "B", "alpha", "beta", "a", "b", "G"]
    fit_desc = (f"Huber loss (delta {delta:g}) on log L, prediction by log-sum-exp of "
                f"(log A - alpha log N, log B - beta log D, log E); L-BFGS-B from a "
                f"{len(starts)}-start grid scored in one pass, best {len(order)} refined")
    extra: dict[str, Any] = {
        "level": level,
        "form": "L = E + A/N^alpha + B/D^beta",
        "delta": delta,
        "n_starts_grid": int(len(starts)),
        "n_starts_refined": int(len(order)),
        "method": f"{fit_desc}; no intervals (n_boot=0)",
        # log-parameters at the optimum; not "a"/"b", which are the allocation exponents
        "theta": {"log_A": best_theta[0], "log_B": best_theta[1], "log_E": best_theta[2]},
    }
    ci = {k: (float("nan"), float("nan")) for k in names}
    if n_boot > 0:

        def boot_fn(idx: np.ndarray) -> dict[str, float]:
            th, _ = _chinchilla_lbfgs(best_theta, logN[idx], logD[idx], logL[idx], delta)
            return _chinchilla_params(th)

        bs = bootstrap(boot_fn, N.size, groups=groups, n_boot=n_boot, level=level, seed=seed)
        ci = {k: bs.ci.get(k, (float("nan"), float("nan"))) for k in names}
        extra["method"] = (f"{fit_desc}; percentile bootstrap over {bs.unit} ({n_boot} draws, "
                           "warm-started)")
        extra["bootstrap"] = bs.summary()
        extra["_draws"] = bs.draws
    return FitResult(
        law="chinchilla", params=params, ci=ci, n_points=N.size, loss=best_val, extra=extra
    )


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
    """isoFLOP profiles and the allocation laws on a BC-style size sweep. ``loss_offset``:
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
    par = isoflop_parabolas(N, C, L)
    st.figures += figures.plot_isoflop(
        prof, n_col, metric, out, f"{slug(st.key)}_isoflop_profiles",
        parabolas={b: p for b, p in par.items() if np.isfinite(p["a"])},
        title=f"{st.experiment}: isoFLOP profiles", ylabel=metric)
    if iso is not None:
        st.fits["isoFLOP profiles"] = iso
        fc = forecast_isoflop(iso, target)
        for k, v in fc.items():
            st.forecasts[f"{k} (isoFLOP)"] = v
        for name, ylab in (("N_opt", "parameters N"), ("D_opt", "data D"),
                           ("L_opt", metric)):
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
