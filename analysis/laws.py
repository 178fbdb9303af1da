"""The studies' laws, built on the primitives of :mod:`analysis.fitting`.

Each function takes plain arrays (the pipeline and the ``fit`` CLI prepare them from the
tidy table or a CSV) and returns a :class:`~analysis.fitting.FitResult` (or a small dict of
them). Every law states its functional form, its loss, its starting points and its
uncertainty in its docstring; ``docs/analysis.md`` collects them.

- isoFLOP profiles (Tuyls et al. 2024; Hoffmann et al. 2022 Approach 2):
  :func:`isoflop_parabolas`, :func:`fit_isoflop`, :func:`fit_envelope`,
  :func:`fit_quadratic_surface`, :func:`compare_isoflop_methods`.
- Hilton et al. 2023 intrinsic performance: :func:`fit_intrinsic`,
  :func:`intrinsic_performance`, :func:`frontier_size_law`.
- Rybkin et al. 2025 UTD workflow: :func:`best_hparams`, :func:`fit_hparam_law`,
  :func:`fit_utd`, :func:`utd_compute`, :func:`pareto_front`, :func:`optimal_utd`.
- Imitation return vs loss: :func:`fit_return_vs_loss`.
- Generalization vs problem complexity: :func:`fit_complexity`.
- Forecasts: :func:`forecast_power`, :func:`forecast_isoflop`,
  :func:`forecast_intrinsic_allocation` (N_opt and D_opt), :func:`forecast_utd`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from analysis import curves
from analysis.fitting import (
    FIT_FAILURES,
    LEVEL,
    LOG_FLOAT_MAX,
    LOG_FLOAT_MIN,
    FitError,
    FitResult,
    _power_offset_core,
    as_array,
    bootstrap,
    chinchilla_allocation,
    delta_method,
    fit_chinchilla,
    fit_fixed_effects,
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

__all__ = [
    "isoflop_parabolas",
    "fit_isoflop",
    "fit_envelope",
    "fit_quadratic_surface",
    "quadratic_surface_optimum",
    "compare_isoflop_methods",
    "forecast_isoflop",
    "forecast_chinchilla",
    "forecast_quadratic_surface",
    "forecast_isoflop_method",
    "intrinsic_g",
    "fit_intrinsic",
    "intrinsic_performance",
    "intrinsic_n_opt",
    "forecast_intrinsic",
    "intrinsic_d_opt",
    "forecast_intrinsic_allocation",
    "frontier_size_law",
    "best_hparams",
    "fit_hparam_law",
    "fit_utd_workflow",
    "UTDWorkflow",
    "fit_utd",
    "predict_utd",
    "utd_compute",
    "pareto_front",
    "optimal_utd",
    "fit_return_vs_loss",
    "fit_complexity",
    "generalization_score",
    "forecast_power",
]


def _nan_ci(names: Sequence[str]) -> dict[str, tuple[float, float]]:
    return {n: (float("nan"), float("nan")) for n in names}


# =========================================================================== isoFLOP


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


def forecast_chinchilla(fit: FitResult, C: float, *, flops_per_param_sample: float = 6.0,
                        level: float | None = None) -> dict[str, dict[str, Any]]:
    """``N_opt``, ``D_opt``, ``L_opt`` at budget ``C = k N D`` from a
    :func:`~analysis.fitting.fit_chinchilla` result, each ``{"value", "low", "high",
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


def _quad_opt_logs(coef: np.ndarray, s: Any) -> np.ndarray:
    """``[log N* - u0, log L*]`` of a quadratic surface on the centred budget line(s) ``s``
    (the one place the optimum's formula lives; see :func:`quadratic_surface_optimum`)."""
    c0, cN, cD, cNN, cDD, cND = coef
    u = ((2 * cDD - cND) * s + cD - cN) / (2 * (cNN + cDD - cND))
    v = s - u
    return np.array([u, c0 + cN * u + cD * v + cNN * u**2 + cDD * v**2 + cND * u * v])


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


def forecast_power(fit: FitResult, x: float, *, level: float = LEVEL) -> dict[str, float]:
    """Value of a fitted power law (``fit_loglog`` or ``fit_power_offset``) at ``x`` with its
    confidence interval."""
    if "offset" in fit.params and "_cov_theta" in fit.extra:
        iv = power_offset_intervals(fit, [x], level=level)
    else:
        iv = loglog_intervals(fit, [x], level=level)
    return {"value": float(iv["y"][0]), "low": float(iv["conf_low"][0]),
            "high": float(iv["conf_high"][0])}


# =========================================================================== Hilton


def intrinsic_g(params: Mapping[str, float], N: Any, E: Any) -> np.ndarray:
    """``g = I^-beta = (N_c/N)^alpha_N + (E_c/E)^alpha_E``."""
    N = np.asarray(N, float)
    E = np.asarray(E, float)
    return (params["N_c"] / N) ** params["alpha_N"] + (params["E_c"] / E) ** params["alpha_E"]


def _frontier_constant(N_c: float, E_c: float, aN: float, aE: float, kappa: float) -> float:
    """``K`` with ``min_{N E = C/kappa} g = K C^-beta`` (closed form of the frontier)."""
    s = aN + aE
    # at the optimum the two terms are in ratio aE : aN; x* = (aN N_c^aN/(aE E_c^aE))^(1/s) M^(aE/s)
    log_r = (math.log(aN) + aN * math.log(N_c) - math.log(aE) - aE * math.log(E_c)) / s
    # term2 = E_c^aE M^-aE x*^aE, with M = C / kappa and the C-dependence pulled out
    log_term2 = aE * math.log(E_c) + aE * log_r + (aN * aE / s) * math.log(kappa)
    return math.exp(log_term2) * s / aN


def _normalise_intrinsic(N_c: float, E_c: float, aN: float, aE: float, kappa: float):
    """Rescale ``(N_c, E_c)`` so that ``I`` equals compute on the efficient frontier."""
    K = _frontier_constant(N_c, E_c, aN, aE, kappa)
    lam = 1.0 / K  # g -> lam g leaves the level sets (what returns identify) unchanged
    return N_c * lam ** (1 / aN), E_c * lam ** (1 / aE)


# Knots of the monotone return map inside the intrinsic-performance search.
INTRINSIC_MAP_KNOTS = 12


def _map_sse(z: np.ndarray, y: np.ndarray) -> float:
    """SSE of the best non-increasing piecewise-linear map from ``z = log g`` to return."""
    r = y - curves.monotone_piecewise_linear(y, z, n_knots=INTRINSIC_MAP_KNOTS,
                                             increasing=False)
    return float(r @ r)


def _intrinsic_core(lN: np.ndarray, lE: np.ndarray, y: np.ndarray, lE0: float,
                    starts: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimise the profiled map SSE over ``theta = (log N_c, alpha_N, alpha_E)`` (E_c fixed)."""

    def obj(th: np.ndarray) -> float:
        lnc, aN, aE = th
        if not (0.02 < aN < 5 and 0.02 < aE < 5):
            return 1e300
        g = np.exp(aN * (lnc - lN)) + np.exp(aE * (lE0 - lE))
        if not np.all(np.isfinite(g)):
            return 1e300
        return _map_sse(np.log(g), y)

    best, best_v = None, np.inf
    for s in starts:
        res = optimize.minimize(obj, s, method="Nelder-Mead",
                                options={"xatol": 1e-4, "fatol": 1e-12, "maxiter": 3000})
        if res.fun < best_v:
            best, best_v = res.x, float(res.fun)
    if best is None or not math.isfinite(best_v):
        raise FitError("intrinsic: no start converged")
    return best, best_v


@single_blas_thread
def fit_intrinsic(
    N: Any,
    E: Any,
    ret: Any,
    *,
    C: Any = None,
    groups: Any = None,
    n_boot: int = 0,
    n_starts: int = 4,
    level: float = LEVEL,
    seed: int = 0,
) -> FitResult:
    """Hilton et al.'s intrinsic performance law, fitted jointly with a monotone return map.

    Form: ``I^-beta = (N_c/N)^alpha_N + (E_c/E)^alpha_E`` and ``return = f(I)`` with ``f``
    any non-decreasing function. Loss: sum of squared residuals of the return after an
    isotonic regression of return on ``log g`` (``g = I^-beta``) computed inside the
    objective, so ``f`` is profiled out. The isotonic regression is restricted to
    piecewise-linear functions (:func:`~analysis.curves.monotone_piecewise_linear`, 12
    equally spaced knots): plain PAVA depends only on the order of ``g``, which makes the
    loss piecewise constant in the parameters, and the search then stalls wherever it
    starts (on noiseless data it stopped at alpha_N 0.62 for a true 0.45, and its bootstrap
    intervals covered the truth 1 time in 10). Since ``f`` absorbs any rescaling of
    ``g``, ``E_c`` is fixed at the geometric mean of ``E`` during the search and the scale is
    set afterwards as Hilton et al. do: ``beta = alpha_N alpha_E / (alpha_N + alpha_E)`` and
    ``(N_c, E_c)`` rescaled so that ``I`` equals compute on the efficient frontier, with
    compute ``C = kappa N E`` (``kappa`` = median of ``C / (N E)`` when ``C`` is given, else
    1, i.e. ``I`` in units of parameter-interactions).

    Optimiser and starts: Nelder-Mead over ``(log N_c, alpha_N, alpha_E)`` from a grid
    (alpha_N, alpha_E in {0.25, 0.5, 1}; N_c at the 25/50/75% quantiles of N); the objective
    is scored on the grid and the ``n_starts`` best are refined. Uncertainty: percentile
    bootstrap over ``groups`` (runs or seeds) or points, each refit warm-started
    (``n_boot=0``: NaN intervals). Derived: ``beta`` and ``k = alpha_E / (alpha_N +
    alpha_E)``, the exponent of optimal model size in compute (``N_opt ~ C^k``).
    Needs >= 10 points, >= 2 distinct N and E.
    """
    N = as_array(N, "N", positive=True, min_len=10)
    E = as_array(E, "E", positive=True, min_len=10)
    y = as_array(ret, "return", min_len=10)
    if not (N.size == E.size == y.size):
        raise FitError(f"inputs differ in length: N {N.size}, E {E.size}, return {y.size}")
    if np.unique(N).size < 2:
        raise FitError("N: one model size only; the size exponent is not identifiable")
    if np.unique(E).size < 2:
        raise FitError("E: one value only; the interaction exponent is not identifiable")
    if C is not None:
        Cv = as_array(C, "C", positive=True)
        kappa = float(np.median(Cv / (N * E)))
    else:
        kappa = 1.0
    lN, lE = np.log(N), np.log(E)
    lE0 = float(lE.mean())
    grid = [np.array([q, aN, aE]) for aN in (0.25, 0.5, 1.0) for aE in (0.25, 0.5, 1.0)
            for q in np.quantile(lN, [0.25, 0.5, 0.75])]
    scores = []
    for th in grid:
        g = np.exp(th[1] * (th[0] - lN)) + np.exp(th[2] * (lE0 - lE))
        scores.append(_map_sse(np.log(g), y))
    starts = np.array(grid)[np.argsort(scores)[:n_starts]]
    theta, sse = _intrinsic_core(lN, lE, y, lE0, starts)

    def to_params(th: np.ndarray) -> dict[str, float]:
        lnc, aN, aE = (float(v) for v in th)
        nc, ec = _normalise_intrinsic(math.exp(lnc), math.exp(lE0), aN, aE, kappa)
        return {"N_c": nc, "E_c": ec, "alpha_N": aN, "alpha_E": aE,
                "beta": aN * aE / (aN + aE), "k": aE / (aN + aE)}

    params = to_params(theta)
    ci = _nan_ci(params)
    extra: dict[str, Any] = {
        "level": level,
        "form": "I^-beta = (N_c/N)^alpha_N + (E_c/E)^alpha_E; return = monotone f(I)",
        "method": "SSE after a monotone piecewise-linear map (12 knots), profiled inside "
                  "Nelder-Mead from a grid",
        "kappa": kappa,
        "normalisation": "I equals compute C = kappa N E on the efficient frontier",
    }
    if n_boot > 0:

        def boot_fn(idx: np.ndarray) -> dict[str, float]:
            th, _ = _intrinsic_core(lN[idx], lE[idx], y[idx], lE0, theta[None, :])
            return to_params(th)

        bs = bootstrap(boot_fn, N.size, groups=groups, n_boot=n_boot, level=level, seed=seed)
        ci = {k: bs.ci.get(k, (float("nan"), float("nan"))) for k in params}
        extra["method"] += ", percentile bootstrap over " + bs.unit
        extra["bootstrap"] = bs.summary()
        extra["_draws"] = bs.draws
    g = intrinsic_g(params, N, E)
    extra["_map"] = (g, curves.monotone_piecewise_linear(
        y, np.log(g), n_knots=INTRINSIC_MAP_KNOTS, increasing=False))
    return FitResult(law="intrinsic", params=params, ci=ci, n_points=int(N.size), loss=sse,
                     extra=extra)


def intrinsic_n_opt(params: Mapping[str, float], C: Any, kappa: float) -> np.ndarray:
    """Compute-optimal model size of the intrinsic law at compute ``C = kappa N E``:
    minimising ``I^-beta`` on ``E = C / (kappa N)`` gives
    ``N_opt = [alpha_N N_c^alpha_N / (alpha_E E_c^alpha_E)]^(1/(alpha_N+alpha_E))
    (C / kappa)^k`` with ``k = alpha_E / (alpha_N + alpha_E)``."""
    aN, aE = params["alpha_N"], params["alpha_E"]
    s = aN + aE
    r = (math.log(aN) + aN * math.log(params["N_c"]) - math.log(aE)
         - aE * math.log(params["E_c"])) / s
    return np.exp(r + aE / s * np.log(np.asarray(C, float) / kappa))


def intrinsic_d_opt(params: Mapping[str, float], C: Any, kappa: float) -> np.ndarray:
    """Compute-optimal data (interactions) of the intrinsic law at compute ``C = kappa N E``:
    ``D_opt = C / (kappa N_opt)``, so ``D_opt ~ C^(1 - k)``."""
    C = np.asarray(C, float)
    return C / (kappa * intrinsic_n_opt(params, C, kappa))


def forecast_intrinsic_allocation(fit: FitResult, C: float, *, level: float | None = None
                                  ) -> dict[str, dict[str, Any]]:
    """``N_opt`` and ``D_opt`` at compute ``C`` from a :func:`fit_intrinsic` result
    (:func:`intrinsic_n_opt`, :func:`intrinsic_d_opt`), each ``{"value", "low", "high",
    "method"}``. Intervals: percentiles over the fit's bootstrap draws
    (:func:`~analysis.fitting.bootstrap` over runs), each draw's parameters giving one
    ``N_opt`` and one ``D_opt``; the two intervals thus come from the same draws. Without
    draws (``n_boot=0``) they are NaN."""
    level = fit.extra.get("level", LEVEL) if level is None else level
    kappa = fit.extra["kappa"]
    funcs = {"N_opt": intrinsic_n_opt, "D_opt": intrinsic_d_opt}
    out = {name: {"value": float(fn(fit.params, C, kappa)), "low": math.nan,
                  "high": math.nan, "method": "point estimate only (no bootstrap draws)"}
           for name, fn in funcs.items()}
    draws = fit.extra.get("_draws") or {}
    if not (draws and all(k in draws for k in ("alpha_N", "alpha_E", "N_c", "E_c"))):
        return out
    per_draw = [{k: draws[k][i] for k in draws} for i in range(len(draws["alpha_N"]))]
    q = [50 * (1 - level), 50 * (1 + level)]
    for name, fn in funcs.items():
        with np.errstate(all="ignore"):  # a far-off draw may overflow: dropped below
            v = np.array([float(fn(p, C, kappa)) for p in per_draw])
        v = v[np.isfinite(v) & (v > 0)]
        if v.size >= 2:
            lo, hi = (float(np.exp(x)) for x in np.percentile(np.log(v), q))
            out[name].update(low=lo, high=hi,
                             method=f"percentile bootstrap over runs ({v.size} draws)")
    return out


def forecast_intrinsic(fit: FitResult, C: float, *, level: float | None = None
                       ) -> dict[str, Any]:
    """``N_opt`` at compute ``C`` with its bootstrap interval: the ``N_opt`` entry of
    :func:`forecast_intrinsic_allocation`."""
    return forecast_intrinsic_allocation(fit, C, level=level)["N_opt"]


def intrinsic_performance(params: Mapping[str, float], N: Any, E: Any) -> np.ndarray:
    """``I = g^(-1/beta)`` for a fitted intrinsic law (in the compute units it was fitted in)."""
    return intrinsic_g(params, N, E) ** (-1.0 / params["beta"])


def frontier_size_law(x: Any, sizes: Any, *, level: float = LEVEL) -> FitResult:
    """Optimal model size vs compute from an empirical compute-efficient frontier.

    On a grid of compute ``x`` the frontier says which size is best (``sizes``, e.g. from
    :func:`analysis.curves.efficient_frontier`). Each size that is best somewhere contributes
    one point: the geometric mean of the compute range where it is best. ``N_opt = c C^k`` is
    then fitted by log-log OLS (t-intervals). Needs 3 sizes on the frontier.
    """
    x = as_array(x, "compute", positive=True)
    s = as_array(sizes, "size", positive=True)
    pts_c, pts_n = [], []
    for size in np.unique(s):
        m = s == size
        pts_c.append(math.exp(float(np.log(x[m]).mean())))
        pts_n.append(float(size))
    order = np.argsort(pts_c)
    pc, pn = np.array(pts_c)[order], np.array(pts_n)[order]
    if pc.size < 3:
        raise FitError(f"optimal size vs compute: {pc.size} sizes on the efficient frontier, "
                       "3 needed")
    fit = fit_loglog(pc, pn, level=level, law="frontier_size")
    fit.extra["points"] = {"C": pc, "N": pn}
    fit.extra["form"] = "N_opt = c C^k"
    return fit


# =========================================================================== Rybkin


class _UTDGrid:
    """Rows (runs = seeds) of a (task, sigma, B, eta) grid, indexed for fast argmins.

    ``cell`` numbers the distinct (task, sigma, B, eta) configurations, ``group`` the distinct
    (task, sigma) pairs; ``argmin(D, idx)`` gives, per group, the cell with the least mean
    ``D`` over the rows ``idx`` (repeats allowed: a bootstrap draw). A cell with a seed that
    never reached the threshold (NaN) is not a candidate.
    """

    def __init__(self, sigma: Any, B: Any, lr: Any, task: Any = None) -> None:
        self.sigma = as_array(sigma, "sigma", positive=True)
        self.B = as_array(B, "B", positive=True)
        self.lr = as_array(lr, "lr", positive=True)
        n = self.sigma.size
        self.task = np.asarray(["all"] * n if task is None else task, dtype=object).astype(str)
        if not (self.B.size == self.lr.size == self.task.size == n):
            raise FitError("sigma, B, lr and task must have one entry per run")
        keys = list(zip(self.task.tolist(), self.sigma.tolist(), self.B.tolist(),
                        self.lr.tolist(), strict=True))
        self.cells = sorted(set(keys))
        index = {c: i for i, c in enumerate(self.cells)}
        self.cell = np.array([index[k] for k in keys], dtype=int)
        self.groups = sorted({(c[0], c[1]) for c in self.cells})
        gindex = {g: i for i, g in enumerate(self.groups)}
        self.cell_group = np.array([gindex[(c[0], c[1])] for c in self.cells], dtype=int)

    def argmin(self, D: np.ndarray, idx: np.ndarray) -> dict[int, tuple[int, float]]:
        """``{group: (cell, mean D)}`` for the groups with at least one candidate cell."""
        nc = len(self.cells)
        d = D[idx]
        bad = ~np.isfinite(d)
        cnt = np.bincount(self.cell[idx], minlength=nc)
        nbad = np.bincount(self.cell[idx], weights=bad, minlength=nc)
        tot = np.bincount(self.cell[idx], weights=np.where(bad, 0.0, d), minlength=nc)
        mean = np.full(nc, np.inf)
        ok = (cnt > 0) & (nbad == 0)
        mean[ok] = tot[ok] / cnt[ok]
        out: dict[int, tuple[int, float]] = {}
        for g in range(len(self.groups)):
            cs = np.flatnonzero(self.cell_group == g)
            i = cs[int(np.argmin(mean[cs]))]
            if np.isfinite(mean[i]):
                out[g] = (int(i), float(mean[i]))
        return out


def _shared_slope(task: Sequence[str], x: np.ndarray, y: np.ndarray) -> float:
    """Within-task OLS slope of y on x (the fixed-effects slope); NaN if x never varies."""
    tk = np.asarray(task)
    num = den = 0.0
    for t in np.unique(tk):
        m = tk == t
        dx = x[m] - x[m].mean()
        num += float(dx @ (y[m] - y[m].mean()))
        den += float(dx @ dx)
    return num / den if den > 0 else math.nan


def best_hparams(
    D_J: Any,
    sigma: Any,
    B: Any,
    lr: Any,
    *,
    task: Any = None,
    n_boot: int = 100,
    level: float = LEVEL,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Best batch size and learning rate per (task, sigma): the configuration with the least
    data to threshold ``D_J``, with a bootstrap over seeds.

    Input: one row per run (seed) with its ``D_J`` (NaN where the threshold was never
    reached). Point estimate: argmin of the mean ``D_J`` over seeds (``B_grid``,
    ``lr_grid``). Bootstrap (:func:`~analysis.fitting.bootstrap`): seeds are resampled within
    each (task, sigma, B, eta) cell, the argmin recomputed, and ``B*``, ``eta*`` reported as
    the geometric mean of the drawn optima with percentile intervals (a smoother estimate
    than a single argmin on a coarse grid, as in Rybkin et al.); with ``n_boot=0`` the grid
    argmin. Returns one dict per (task, sigma): ``task, sigma, B, lr, D_J, B_grid, lr_grid,
    B_low, B_high, lr_low, lr_high``.
    """
    grid = _UTDGrid(sigma, B, lr, task)
    D = np.asarray(D_J, float).reshape(-1)
    if D.size != grid.sigma.size:
        raise FitError("D_J must have one entry per run")
    rows = _best_rows(grid, D, n_boot=n_boot, level=level, seed=seed)
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _best_rows(grid: _UTDGrid, D: np.ndarray, *, n_boot: int, level: float,
               seed: int) -> list[dict[str, Any]]:
    point = grid.argmin(D, np.arange(D.size))
    out = []
    for g, (i, mean) in sorted(point.items()):
        t, s, b, lr = grid.cells[i]
        out.append({"task": t, "sigma": float(s), "B": float(b), "lr": float(lr),
                    "D_J": mean, "B_grid": float(b), "lr_grid": float(lr),
                    "B_low": math.nan, "B_high": math.nan, "lr_low": math.nan,
                    "lr_high": math.nan, "_group": g, "_cell": i})
    if n_boot <= 0 or not out:
        return out
    gs = [r["_group"] for r in out]

    def stat(idx: np.ndarray) -> dict[str, float]:
        best = grid.argmin(D, idx)
        res = {}
        for g in gs:
            _, _, b, lr = grid.cells[best[g][0]]
            res[f"logB|{g}"] = math.log(b)
            res[f"loglr|{g}"] = math.log(lr)
        return res

    bs = bootstrap(stat, D.size, strata=grid.cell, n_boot=n_boot, level=level, seed=seed)
    for r in out:
        g = r["_group"]
        if f"logB|{g}" not in bs.draws:
            continue
        for name in ("B", "lr"):
            v = bs.draws[f"log{name}|{g}"]
            lo, hi = bs.ci[f"log{name}|{g}"]
            r.update({name: float(np.exp(v.mean())), f"{name}_low": float(np.exp(lo)),
                      f"{name}_high": float(np.exp(hi))})
    return out


@dataclass
class UTDWorkflow:
    """Rybkin et al.'s workflow on one grid: best (B, eta) per (task, sigma), the
    hyperparameter laws and ``D_J(sigma)`` per threshold and task.

    ``best``: :func:`best_hparams` rows at the main threshold; ``hparam_fits``:
    ``{"B": FitResult, "lr": FitResult}`` (shared slope, per-task intercepts); ``utd_fits``:
    ``{(J, task): FitResult}``; ``points``: ``{(J, task): (sigma, D_J)}`` (the runs of the
    best cell per sigma); ``errors``: ``{name: one-line reason}`` for laws not fitted.
    """

    best: list[dict[str, Any]]
    hparam_fits: dict[str, FitResult] = field(default_factory=dict)
    utd_fits: dict[tuple[float, str], FitResult] = field(default_factory=dict)
    points: dict[tuple[float, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@single_blas_thread
def fit_utd_workflow(
    D_by_J: Mapping[float, Any],
    sigma: Any,
    B: Any,
    lr: Any,
    *,
    task: Any = None,
    main_j: float | None = None,
    n_boot: int = 50,
    level: float = LEVEL,
    seed: int = 0,
) -> UTDWorkflow:
    """The UTD workflow with a bootstrap over seeds for every law.

    ``D_by_J[J]`` holds each run's data to threshold ``J`` (one entry per run, aligned with
    ``sigma``, ``B``, ``lr``, ``task``). Steps:

    1. best (B, eta) per (task, sigma) at ``main_j`` (default: the middle threshold) by
       :func:`best_hparams`;
    2. ``B*(sigma)``, ``eta*(sigma)`` by :func:`fit_hparam_law`: one slope shared by all
       tasks, one intercept per task (fixed effects, t-intervals); the bootstrap interval of
       the shared slope is added as ``extra["ci_bootstrap"]["k"]``;
    3. ``D_J(sigma) = D_min + (beta_J / sigma)^alpha_J`` for every threshold and every task
       separately (:func:`fit_utd`) on the runs of the best cell per sigma.

    Uncertainty (``n_boot > 0``): :func:`~analysis.fitting.bootstrap` resamples seeds within
    each (task, sigma, B, eta) cell; each draw recomputes the best cells and refits (warm
    started). All calls use the same ``seed`` and strata, hence the same resamples. The
    percentile intervals of ``D_min``, ``beta``, ``alpha`` replace the delta-method ones
    (kept as ``extra["ci_delta"]``). With ``n_boot=0`` intervals are the delta-method ones.
    """
    grid = _UTDGrid(sigma, B, lr, task)
    Ds = {float(j): np.asarray(v, float).reshape(-1) for j, v in D_by_J.items()}
    if not Ds:
        raise FitError("no threshold given")
    js = sorted(Ds)
    mj = js[len(js) // 2] if main_j is None else float(main_j)
    if mj not in Ds:
        raise FitError(f"main threshold {mj:.4g} is not among the thresholds")
    D0 = Ds[mj]
    rows = _best_rows(grid, D0, n_boot=n_boot, level=level, seed=seed)
    wf = UTDWorkflow(best=[{k: v for k, v in r.items() if not k.startswith("_")}
                           for r in rows])
    if not rows:
        raise FitError(f"no configuration reached the threshold J={mj:.4g}")
    bt = np.array([r["task"] for r in rows])
    bs_ = np.array([r["sigma"] for r in rows])
    for name in ("B", "lr"):
        vals = np.array([r[name] for r in rows])
        try:
            wf.hparam_fits[name] = fit_hparam_law(bs_, vals, bt, name=name, level=level)
        except FIT_FAILURES as err:
            wf.errors[f"{name}*(sigma)"] = str(err)
    if n_boot > 0 and wf.hparam_fits:
        gs = [r["_group"] for r in rows]
        ls = np.log(bs_)

        def slopes(idx: np.ndarray) -> dict[str, float]:
            best = grid.argmin(D0, idx)
            out = {}
            for name, col in (("B", 2), ("lr", 3)):
                y = np.log([grid.cells[best[g][0]][col] for g in gs])
                out[name] = _shared_slope(bt, ls, y)
            return out

        bs = bootstrap(slopes, D0.size, strata=grid.cell, n_boot=n_boot, level=level,
                       seed=seed)
        for name, fit in wf.hparam_fits.items():
            if name in bs.ci:
                fit.extra["ci_bootstrap"] = {"k": bs.ci[name]}
                fit.extra["bootstrap"] = {"n_boot": n_boot, "n_failed": bs.n_failed,
                                          "unit": "seeds within (task, sigma, B, eta) cells"}
    point = {r["_group"]: r["_cell"] for r in rows}
    for j in js:
        Dj = Ds[j]
        for t in sorted(set(bt.tolist())):
            cells_t = [c for g, c in point.items() if grid.groups[g][0] == t]
            m = np.isin(grid.cell, cells_t) & np.isfinite(Dj)
            key = (j, t)
            wf.points[key] = (grid.sigma[m], Dj[m])
            try:
                fit = fit_utd(grid.sigma[m], Dj[m], level=level)
            except FIT_FAILURES as err:
                wf.errors[f"D_J(sigma) J={j:.4g} [{t}]"] = str(err)
                continue
            fit.extra["task"] = t
            fit.extra["J"] = j
            if n_boot > 0:
                _bootstrap_utd(fit, grid, D0, Dj, t, n_boot=n_boot, level=level, seed=seed)
            wf.utd_fits[key] = fit
    return wf


def _bootstrap_utd(fit: FitResult, grid: _UTDGrid, D0: np.ndarray, Dj: np.ndarray, task: str,
                   *, n_boot: int, level: float, seed: int) -> None:
    """Percentile intervals of D_J(sigma)'s parameters for one task: resample seeds within
    cells, re-pick the best cell per sigma (on ``D0``), refit warm-started (in place)."""
    xs = fit.extra["x_scale"]
    theta = fit.extra["_theta"]
    in_task = np.array([grid.groups[g][0] == task for g in range(len(grid.groups))])

    def stat(idx: np.ndarray) -> dict[str, float]:
        best = grid.argmin(D0, idx)
        cells = [c for g, (c, _) in best.items() if in_task[g]]
        sel = idx[np.isin(grid.cell[idx], cells)]
        sel = sel[np.isfinite(Dj[sel])]
        sig, d = grid.sigma[sel], Dj[sel]
        if sel.size < 4 or np.unique(sig).size < 3:
            raise FitError("too few points in this draw")
        th, _ = _power_offset_core(sig / xs, d, "log", UTD_K_BOUNDS, (0.0, float(d.min())),
                                   theta)
        p = _utd_params(th, xs)  # FitError when beta leaves the float range: a failed draw
        return {"D_min": p["D_min"], "log_beta": math.log(p["beta"]), "alpha": p["alpha"]}

    bs = bootstrap(stat, Dj.size, strata=grid.cell, n_boot=n_boot, level=level, seed=seed)
    fit.extra["ci_delta"] = dict(fit.ci)
    fit.extra["bootstrap"] = {"n_boot": n_boot, "n_failed": bs.n_failed,
                              "unit": "seeds within (task, sigma, B, eta) cells"}
    if len(bs.draws.get("alpha", ())) >= max(2, n_boot // 2):
        fit.extra["_utd_draws"] = {"D_min": np.asarray(bs.draws["D_min"]),
                                   "beta": np.exp(bs.draws["log_beta"]),
                                   "alpha": np.asarray(bs.draws["alpha"])}
        lb = bs.ci["log_beta"]
        fit.ci = {"D_min": bs.ci["D_min"], "beta": (safe_exp(lb[0]), safe_exp(lb[1])),
                  "alpha": bs.ci["alpha"]}
        fit.extra["method"] = (f"{fit.extra['fit_method']}; percentile bootstrap over seeds "
                               "within (task, sigma, B, eta) cells, best cell re-picked per "
                               "draw")


def fit_hparam_law(sigma: Any, value: Any, task: Any = None, *, name: str = "B",
                   level: float = LEVEL) -> FitResult:
    """``value*(sigma) = c_task sigma^k``: shared slope, per-task intercept
    (:func:`~analysis.fitting.fit_fixed_effects`, OLS in log-log, t-intervals). With one
    task this is a plain log-log fit."""
    sig = as_array(sigma, "sigma", positive=True)
    tk = np.asarray(["all"] * sig.size if task is None else task, dtype=object).astype(str)
    fit = fit_fixed_effects(sig, value, tk, level=level, law=f"{name}_star")
    fit.extra["form"] = f"{name}*(sigma) = c[task] sigma^k"
    return fit


UTD_K_BOUNDS = (-5.0, -0.01)


def _utd_log_beta(theta: np.ndarray, xs: float) -> float:
    """``log beta = log c / alpha`` from fit_power_offset's log-space ``theta = [log c_s, k,
    offset]``; kept in logs since beta itself leaves the float range when alpha is small."""
    k = float(theta[1])
    return (float(theta[0]) - k * math.log(xs)) / -k


def _utd_params(theta: np.ndarray, xs: float) -> dict[str, float]:
    """(D_min, beta, alpha) from fit_power_offset's log-space theta = [log c_s, k, offset].

    Raises FitError when beta is out of the float range: with alpha near its bound 0.01,
    beta = c^(1/alpha) is c to the 100th power (D_J does not fall with sigma, e.g. flat or
    rising D), and such a beta would overflow, or underflow to 0, in every later use."""
    alpha = -float(theta[1])
    log_beta = _utd_log_beta(theta, xs)
    if not LOG_FLOAT_MIN < log_beta < LOG_FLOAT_MAX:
        raise FitError(f"utd: beta = 10^{log_beta / math.log(10):.4g} is out of floating-point "
                       f"range (alpha = {alpha:.3g}, lower bound {-UTD_K_BOUNDS[1]:g}): D_J "
                       "does not fall with sigma as D_min + (beta/sigma)^alpha needs")
    return {"D_min": float(theta[2]), "beta": math.exp(log_beta), "alpha": alpha}


@single_blas_thread
def fit_utd(sigma: Any, D: Any, *, level: float = LEVEL, n_boot: int = 0,
            groups: Any = None, seed: int = 0) -> FitResult:
    """Data to threshold vs UTD ratio: ``D_J(sigma) = D_min + (beta / sigma)^alpha``.

    A power law plus constant in ``sigma`` (:func:`~analysis.fitting.fit_power_offset`,
    log-space residuals, bounded multi-start least squares with ``k = -alpha`` in
    [-5, -0.01] and ``0 <= D_min <= min D``), reparameterised to ``beta = c^(1/alpha)``.
    Uncertainty: delta-method t-intervals on ``n - 3`` dof (``log beta`` through the fit's
    covariance), or a percentile bootstrap with ``n_boot > 0``; interval ends beyond the
    float range are 0 or inf. Needs >= 4 points, at least 3 distinct sigma and D not all
    equal. FitError when beta itself is out of the float range (alpha near 0.01: D_J does
    not fall with sigma) rather than an overflow or a ``math domain error``.
    """
    sig = as_array(sigma, "sigma", positive=True, min_len=4)
    Dv = as_array(D, "D", positive=True, min_len=4)
    require_distinct(sig, "sigma", 3, "D_min, beta and alpha are not identifiable")
    if np.unique(Dv).size == 1:  # else alpha sits on its bound and beta leaves the float range
        raise FitError(f"D: all {Dv.size} values equal ({Dv[0]:.4g}); D_J does not vary with "
                       "sigma, there is no law to fit")
    f = fit_power_offset(sig, Dv, space="log", k_bounds=UTD_K_BOUNDS, level=level,
                         n_boot=n_boot, groups=groups, seed=seed, law="utd",
                         names=("sigma", "D"))
    xs = f.extra["x_scale"]
    theta = f.extra["_theta"]
    params = _utd_params(theta, xs)
    if n_boot > 0:
        draws = f.extra["_draws"]
        c, k = np.asarray(draws["c"]), np.asarray(draws["k"])
        ok = (c > 0) & (k < 0)
        q = [50 * (1 - level), 50 * (1 + level)]
        log_beta = np.log(c[ok]) / -k[ok]
        # a draw whose beta leaves the float range cannot be used downstream: drop it
        keep = (log_beta > LOG_FLOAT_MIN) & (log_beta < LOG_FLOAT_MAX)
        f.extra["_utd_draws"] = {"D_min": np.asarray(draws["offset"])[ok][keep],
                                 "beta": np.exp(log_beta[keep]), "alpha": -k[ok][keep]}
        # percentiles in log beta (as _bootstrap_utd), then exp: no overflow on the way
        lb = np.percentile(log_beta, q) if log_beta.size else (math.nan, math.nan)
        ci = {"D_min": f.ci["offset"], "alpha": (-f.ci["k"][1], -f.ci["k"][0]),
              "beta": (safe_exp(float(lb[0])), safe_exp(float(lb[1])))}
    else:
        cov = f.extra["_cov_theta"]
        dof = f.extra["dof"]
        # differentiate log beta itself: exp then log would underflow to log(0)
        dm = delta_method(lambda th: _utd_log_beta(th, xs), theta, cov, level=level,
                          dof=max(dof, 1))
        lb = float(dm["value"])
        t = t_quantile(level, max(dof, 1))
        ci = {"D_min": f.ci["offset"], "alpha": (-f.ci["k"][1], -f.ci["k"][0]),
              "beta": (safe_exp(lb - t * float(dm["se"])), safe_exp(lb + t * float(dm["se"])))}
    extra = dict(f.extra)
    extra["form"] = "D_J(sigma) = D_min + (beta / sigma)^alpha"
    # the power-law fit's loss space and starts, in this law's terms
    extra["fit_method"] = (f"{f.extra['fit_method']} (y = D, x = sigma, k = -alpha in "
                           f"[{UTD_K_BOUNDS[0]:g}, {UTD_K_BOUNDS[1]:g}], 0 <= D_min <= min D)")
    extra["method"] = extra["fit_method"] + (
        f"; percentile bootstrap over {f.extra['bootstrap']['unit']} ({n_boot} draws)"
        if n_boot > 0 else "; delta-method t-intervals on n-3 dof (log beta through the "
        "covariance)")
    extra["_power_fit"] = f
    return FitResult(law="utd", params=params, ci=ci, n_points=f.n_points, loss=f.loss,
                     extra=extra)


def predict_utd(params: Mapping[str, float], sigma: Any) -> np.ndarray:
    """``D_min + (beta / sigma)^alpha``."""
    sigma = np.asarray(sigma, float)
    return params["D_min"] + (params["beta"] / sigma) ** params["alpha"]


def utd_compute(utd: Mapping[str, float], b_law: Mapping[str, float], sigma: Any,
                n_params: float, *, task: str = "all", coef: float = 10.0) -> np.ndarray:
    """``C_J(sigma) = 10 N B*(sigma) sigma D_J(sigma)`` (Rybkin et al.'s SAC convention)."""
    sigma = np.asarray(sigma, float)
    b = b_law[f"c[{task}]"] * sigma ** b_law["k"]
    return coef * n_params * b * sigma * predict_utd(utd, sigma)


def pareto_front(x: Any, y: Any) -> np.ndarray:
    """Indices of the points not dominated in (smaller x, smaller y), sorted by x."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    order = np.lexsort((y, x))
    keep, best = [], np.inf
    for i in order:
        if np.isfinite(x[i]) and np.isfinite(y[i]) and y[i] < best:
            keep.append(i)
            best = y[i]
    return np.asarray(keep, dtype=int)


def optimal_utd(utd: Mapping[str, float], b_law: Mapping[str, float], n_params: float,
                delta: float, *, task: str = "all", sigma_range: tuple[float, float] =
                (1e-2, 1e3)) -> dict[str, float]:
    """``sigma*`` minimising the budget ``F_J(sigma) = C_J(sigma) + delta D_J(sigma)``.

    Searched on a fine log grid of ``sigma`` then refined (bounded scalar minimisation in
    log sigma). Returns ``sigma, F, C, D`` at the optimum and ``B`` (``B*(sigma*)``).
    """
    grid = np.geomspace(*sigma_range, 400)

    def budget(s: Any) -> np.ndarray:
        return utd_compute(utd, b_law, s, n_params, task=task) + delta * predict_utd(utd, s)

    vals = budget(grid)
    i = int(np.nanargmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = optimize.minimize_scalar(lambda ls: float(budget(math.exp(ls))),
                                   bounds=(math.log(lo), math.log(hi)), method="bounded")
    s = math.exp(res.x)
    d = float(predict_utd(utd, s))
    c = float(utd_compute(utd, b_law, s, n_params, task=task))
    return {"sigma": s, "F": c + delta * d, "C": c, "D": d,
            "B": float(b_law[f"c[{task}]"] * s ** b_law["k"]),
            "at_edge": bool(i in (0, grid.size - 1))}


def _t_draws(mean: np.ndarray, cov: np.ndarray, dof: float, n: int,
             rng: np.random.Generator) -> np.ndarray:
    """Multivariate t draws: the sampling distribution of least-squares coefficients when the
    noise variance is estimated on ``dof`` degrees of freedom (a normal would be too narrow
    with the few points a law usually has)."""
    z = rng.multivariate_normal(np.zeros(mean.size), cov, size=n, check_valid="ignore")
    return mean + z / np.sqrt(rng.chisquare(max(dof, 1), size=(n, 1)) / max(dof, 1))


# Fewer bootstrap draws than this give no usable 95% percentiles: use the parametric draws.
MIN_BOOT_DRAWS = 50


def _utd_param_draws(fit: FitResult, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
    """Parameter draws of a :func:`fit_utd` law: its bootstrap draws when it has at least
    :data:`MIN_BOOT_DRAWS`, else ``n`` draws from the multivariate t of the least-squares
    parameters (the covariance and dof its delta-method intervals come from)."""
    d = fit.extra.get("_utd_draws")
    if d is not None and len(d["alpha"]) >= MIN_BOOT_DRAWS:
        return [{k: float(d[k][i]) for k in ("D_min", "beta", "alpha")}
                for i in range(len(d["alpha"]))]
    theta, cov = fit.extra["_theta"], fit.extra["_cov_theta"]
    xs = fit.extra["x_scale"]
    draws = _t_draws(np.asarray(theta, float), cov, fit.extra["dof"], n, rng)
    out = []
    for th in draws:
        th[1] = min(th[1], UTD_K_BOUNDS[1])  # keep alpha > 0, D_min >= 0 as in the fit
        th[2] = max(th[2], 0.0)
        try:
            out.append(_utd_params(th, xs))
        except FIT_FAILURES:  # a far-tail draw (beta out of range): counted as failed below
            out.append({"D_min": math.nan, "beta": math.nan, "alpha": math.nan})
    return out


def _hparam_law_draws(fit: FitResult, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
    """Draws of a :func:`fit_hparam_law` (``log value = log c[task] + k log sigma``) from the
    multivariate t of its OLS coefficients."""
    groups = fit.extra["groups"]
    mean = np.array([math.log(fit.params[f"c[{g}]"]) for g in groups] + [fit.params["k"]])
    draws = _t_draws(mean, fit.extra["cov"], fit.extra["dof"], n, rng)
    return [{"k": float(d[-1]), **{f"c[{g}]": float(np.exp(d[j])) for j, g in enumerate(groups)}}
            for d in draws]


def forecast_utd(utd_fit: FitResult, b_law: FitResult, n_params: float, delta: float, *,
                 task: str = "all", lr_law: FitResult | None = None, n_draws: int = 200,
                 level: float = LEVEL, seed: int = 0) -> dict[str, dict[str, float]]:
    """The compute-optimal UTD setting at one threshold, with intervals.

    Point values: :func:`optimal_utd` on the fitted laws (``sigma*``, the budget ``F`` and its
    parts ``C`` and ``D`` at ``sigma*``), ``B*(sigma*)`` and, with ``lr_law``,
    ``eta*(sigma*)``. Intervals: percentiles of the same quantities recomputed for joint
    draws of the laws' parameters: the ``D_J(sigma)`` law's bootstrap draws when it was
    bootstrapped with >= 50 draws (else ``n_draws`` draws from the multivariate t of its
    least-squares parameters), each paired with a draw of the ``B*`` and ``eta*`` laws from
    the multivariate t of their OLS coefficients. Returns ``{name: {"value", "low", "high",
    "method"}}`` for ``sigma, B, lr, F, C, D``.
    """
    rng = np.random.default_rng(seed)
    point = optimal_utd(utd_fit.params, b_law.params, n_params, delta, task=task)
    if lr_law is not None:
        point["lr"] = float(lr_law.params[f"c[{task}]"] * point["sigma"] ** lr_law.params["k"])
    utd_draws = _utd_param_draws(utd_fit, n_draws, rng)
    boot = len(utd_fit.extra.get("_utd_draws", {}).get("alpha", ())) >= MIN_BOOT_DRAWS
    method = (f"{level:.0%} percentiles over {len(utd_draws)} joint draws: D_J(sigma) "
              + ("bootstrap" if boot else "multivariate t") + ", B*/eta* laws multivariate t")
    b_draws = _hparam_law_draws(b_law, len(utd_draws), rng)
    lr_draws = _hparam_law_draws(lr_law, len(utd_draws), rng) if lr_law is not None else None
    names = ["sigma", "B", "F", "C", "D"] + (["lr"] if lr_law is not None else [])
    samples: dict[str, list[float]] = {k: [] for k in names}
    for i, (u, b) in enumerate(zip(utd_draws, b_draws, strict=True)):
        try:
            with np.errstate(all="ignore"):
                o = optimal_utd(u, b, n_params, delta, task=task)
                if lr_draws is not None:
                    o["lr"] = lr_draws[i][f"c[{task}]"] * o["sigma"] ** lr_draws[i]["k"]
        except FIT_FAILURES:  # a far-tail draw with no finite optimum
            continue
        if all(math.isfinite(o[k]) for k in names):
            for k in names:
                samples[k].append(o[k])
    n_ok = len(samples["sigma"])
    method += f"; {len(utd_draws) - n_ok} of {len(utd_draws)} draws had no finite optimum"
    # failed draws are far-tail ones (e.g. alpha near 0 with few dof): beyond 5% of them
    # the percentiles would mislead, and the law is too uncertain for an interval
    usable = n_ok >= max(10, 0.95 * len(utd_draws))
    if not usable:
        method += " (too many for an interval: more points per law are needed)"
    q = [50 * (1 - level), 50 * (1 + level)]
    out = {}
    for k in names:
        lo, hi = np.percentile(samples[k], q) if usable else (math.nan, math.nan)
        out[k] = {"value": float(point[k]), "low": float(lo), "high": float(hi),
                  "method": method}
    return out


# ================================================================ imitation, generalization


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
            m = max(1, math.floor(percentile / 100 * n + 1e-9))
            out[i] = v[:m].mean()
    return out


def fit_complexity(
    complexity: Any, amount: Any, *, level: float = LEVEL, name: str = "D"
) -> FitResult:
    """Data (or compute) to reach sufficient generalization vs a problem-complexity
    parameter: ``amount = c complexity^k`` by log-log OLS (t-intervals). Needs 3 points."""
    f = fit_loglog(complexity, amount, level=level, law=f"{name}_vs_complexity")
    f.extra["form"] = f"{name}_J = c complexity^k"
    return f
