"""Model-size scaling in RL (Hilton, Tang, Schulman 2023): laws and driver.

Model size varies (``study.axes.width``/``depth``; N is ``params.effective`` from
``run.json``). The driver draws learning curves vs interactions and vs FLOPs per size
(seeds averaged, band = s.e.m.), the compute-efficient frontier and which size is best
where, fits optimal size vs compute on the frontier (:func:`frontier_size_law`) and
Hilton et al.'s intrinsic performance law (:func:`fit_intrinsic`), and forecasts N_opt and
D_opt. For a return or success metric the best value vs compute on the frontier is fitted
by the saturating law and the power laws, which are compared on the held-out largest
budgets (:func:`best_vs_compute`); a loss metric gets no saturating law. The ``curves``
study (learning curves per configuration, no law) is the same driver without the frontier
(:func:`run_curves`).

Laws: :func:`fit_intrinsic`, :func:`intrinsic_g`, :func:`intrinsic_performance`,
:func:`intrinsic_n_opt`, :func:`intrinsic_d_opt`, :func:`forecast_intrinsic_allocation`,
:func:`forecast_intrinsic`, :func:`frontier_size_law`, :func:`metric_range`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from analysis import curves, figures
from analysis.fitting import (
    LEVEL,
    FitError,
    FitResult,
    as_array,
    bootstrap,
    compare_saturating,
    fit_loglog,
    fit_power_with_ceiling,
    fit_saturating,
    forecast_power,
    loglog_intervals,
    single_blas_thread,
)
from analysis.report import StudyResult
from analysis.study import (
    SIZE_KNOBS,
    Options,
    Study,
    attempt,
    finite,
    is_loss_metric,
    size_columns,
    slug,
)

__all__ = [
    "intrinsic_g",
    "fit_intrinsic",
    "intrinsic_performance",
    "intrinsic_n_opt",
    "forecast_intrinsic",
    "intrinsic_d_opt",
    "forecast_intrinsic_allocation",
    "frontier_size_law",
    "metric_range",
    "best_vs_compute",
    "planned_length",
    "study_curves",
    "run_scaling",
    "run_curves",
]


# =========================================================================== laws


def _nan_ci(names: Sequence[str]) -> dict[str, tuple[float, float]]:
    return {n: (float("nan"), float("nan")) for n in names}


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
# The search keeps both exponents strictly inside these walls.
INTRINSIC_WALLS = (0.02, 5.0)


def _map_sse(z: np.ndarray, y: np.ndarray) -> float:
    """SSE of the best non-increasing piecewise-linear map from ``z = log g`` to return."""
    r = y - curves.monotone_piecewise_linear(y, z, n_knots=INTRINSIC_MAP_KNOTS,
                                             increasing=False)
    return float(r @ r)


def _intrinsic_core(lN: np.ndarray, lE: np.ndarray, y: np.ndarray, lE0: float,
                    starts: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimise the profiled map SSE over ``theta = (log N_c, alpha_N, alpha_E)`` (E_c fixed)."""

    lo, hi = INTRINSIC_WALLS

    def obj(th: np.ndarray) -> float:
        lnc, aN, aE = th
        if not (lo < aN < hi and lo < aE < hi):
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
    (``n_boot=0``: NaN intervals). The search keeps ``alpha_N`` and ``alpha_E`` inside
    (0.02, 5) (``bounds``); an exponent within 1e-3 of a wall is flagged. Derived:
    ``beta`` and ``k = alpha_E / (alpha_N + alpha_E)``, the exponent of optimal model size
    in compute (``N_opt ~ C^k``). Needs >= 10 points, >= 2 distinct N and E.
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
    fit = FitResult(law="intrinsic", params=params, ci=ci, n_points=int(N.size), loss=sse,
                    extra=extra, bounds=dict.fromkeys(("alpha_N", "alpha_E"), INTRINSIC_WALLS))
    for name in ("alpha_N", "alpha_E"):
        # Nelder-Mead stops within its tolerance of a wall, not on it
        v = params[name]
        wall = min(INTRINSIC_WALLS, key=lambda w: abs(v - w))
        if abs(v - wall) < 1e-3 and not any(f.startswith(f"{name} = ") for f in fit.flags):
            fit.flag(f"{name} = {v:.4g} is at the search's wall {wall:g}: the data do not pin "
                     "it (treat it and its interval as a limit, not an estimate)")
    return fit


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


def frontier_size_law(x: Any, sizes: Any, *, candidates: Any = None,
                      level: float = LEVEL) -> FitResult:
    """Optimal model size vs compute from an empirical compute-efficient frontier.

    On a grid of compute ``x`` the frontier says which size is best (``sizes``, e.g. from
    :func:`analysis.curves.efficient_frontier`). Each size that is best somewhere contributes
    one point: the geometric mean of the compute range where it is best. ``N_opt = c C^k`` is
    then fitted by log-log OLS (t-intervals). Needs 3 sizes on the frontier. ``used``: the
    sizes on the frontier; ``dropped``: the ``candidates`` (every size compared) that are
    never best.
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
    fit.used = sorted(pn.tolist())
    if candidates is not None:
        fit.dropped = [{"what": float(c), "reason": "never the best size where sizes compete"}
                       for c in sorted(set(np.asarray(candidates, float).tolist())
                                       - set(fit.used))]
    return fit


# =========================================================================== driver


def planned_length(df: pd.DataFrame, xdata: str) -> str | None:
    """The column holding each run's planned length in ``xdata`` units, for dropping the
    warm-up of runs still going: the record's budget (``budget.value`` where every
    ``budget.counter`` is ``xdata``), else ``algo.total_steps``; None: each run's largest
    ``xdata``."""
    if "budget.value" in df and "budget.counter" in df and \
            df["budget.counter"].astype(str).eq(xdata).all():
        return "budget.value"
    return "algo.total_steps" if "algo.total_steps" in df else None


def _sizes(df: pd.DataFrame, size_col: str | None) -> pd.Series:
    if size_col is None:
        return pd.Series(1.0, index=df.index)
    return pd.to_numeric(df[size_col], errors="coerce")


def study_curves(st: StudyResult, df: pd.DataFrame, metric: str, out: Path,
                 *, frontier: bool = False, n_boot: int = 50,
                 budget: float | None = None, axes: Mapping[str, str] | None = None) -> None:
    """Learning curves per size (or configuration) vs data and FLOPs; with ``frontier`` the
    compute-efficient frontier, optimal size vs compute and the intrinsic-performance law.
    ``axes``: the study's roles (``width``/``depth``: the size knob for legends; default the
    guessed ``model.width``/``model.depth``)."""
    axes = dict(SIZE_KNOBS) if axes is None else axes
    n_col, size_col, size_label = size_columns(df, axes)
    xdata = curves.data_column(df)
    df = df.copy()
    df["size"] = _sizes(df, size_col if frontier else None)
    maximize = not is_loss_metric(metric)
    if not frontier:
        # one curve per configuration: label configurations 1..k in the legend
        ids = df["config_id"].astype("category")
        df["size"] = ids.cat.codes.astype(float) + 1
        size_label = "config"
        st.tables["configurations"] = pd.DataFrame(
            {"config": range(1, len(ids.cat.categories) + 1), "label": ids.cat.categories})
    other = [c for c in curves.varying(df, curves.config_columns(df))
             if c not in (size_col, *(axes.get(r) for r in ("width", "depth")))]
    if frontier and other:
        st.notes.append(f"other config keys vary too ({', '.join(other)}); curves are averaged "
                        "over them per size")
    ok = finite(df, [xdata, metric, "size"])
    if ok.empty:
        raise FitError(f"no log point has both {xdata} and {metric}")
    avg_x = curves.average_seeds(ok, xdata, metric, by="size")
    pretty = {"env_steps": "interactions (env steps)", "samples": "samples"}[xdata]
    st.figures += figures.plot_curves(
        avg_x, xdata, metric, "size", out, f"{slug(st.key)}_{metric}_vs_{xdata}",
        title=f"{st.experiment}: {metric} vs {pretty}", xlabel=pretty, ylabel=metric,
        size_label=size_label)
    have_flops = "flops" in ok and (pd.to_numeric(ok["flops"], errors="coerce") > 0).any()
    front = None
    if have_flops:
        okf = finite(ok, ["flops"])
        okf = okf[okf["flops"] > 0]
        avg_c = curves.average_seeds(okf, "flops", metric, by="size")
        if frontier:
            front = curves.efficient_frontier(avg_c, "flops", metric, by="size",
                                              maximize=maximize, cumulative=True)
        st.figures += figures.plot_curves(
            avg_c, "flops", metric, "size", out, f"{slug(st.key)}_{metric}_vs_flops",
            title=f"{st.experiment}: {metric} vs training FLOPs", xlabel="training FLOPs",
            ylabel=metric, size_label=size_label, frontier=front)
    else:
        st.skipped["curves vs FLOPs"] = "no positive `flops` counter in the log points"
    # final value per size: last log point of each run, then mean and s.e. over seeds
    last = ok.sort_values(xdata).groupby("run_dir").tail(1)
    agg = last.groupby("size").agg(**{
        "runs": (metric, "size"), f"final {metric}": (metric, "mean"),
        "sd": (metric, "std"), xdata: (xdata, "max")})
    if n_col:
        agg.insert(0, "N", last.groupby("size")[n_col].first())
    if have_flops:
        agg["flops"] = last.groupby("size")["flops"].max()
    st.tables[f"final {metric} per {size_label}"] = agg.reset_index().rename(
        columns={"size": size_label})
    if not frontier:
        return
    st.context["sizes"] = int(df["size"].nunique())
    if have_flops and not budget:
        # as in study_isoflop: forecast one decade beyond the largest budget measured
        budget = 10 * float(okf["flops"].max())
        st.context["forecast budget C"] = f"{budget:.3g} (10x the largest FLOPs)"
    elif budget:
        st.context["forecast budget C"] = f"{budget:.3g}"
    if front is None or front.empty:
        st.skipped["compute-efficient frontier"] = "no FLOPs counter"
        return
    if maximize:
        attempt(st, f"best {metric} vs compute",
                lambda: best_vs_compute(st, front, "flops", metric, out))
    else:
        st.skipped[f"saturating law (best {metric} vs compute)"] = (
            f"{metric} is a loss (lower is better, unbounded): power laws only")
    # which size is best where, and the optimal size vs compute law
    sizes_n = ok.groupby("size")[n_col].first() if n_col else None
    # only where sizes actually compete: below the second size's first log point the
    # smallest one is "best" by default
    fr = front[front["n_groups"] >= 2].copy()
    if fr.empty:
        st.skipped["compute-efficient frontier"] = "the sizes' compute ranges do not overlap"
        return
    fr["N"] = fr["size"].map(sizes_n) if sizes_n is not None else fr["size"]
    switch = fr.groupby("size").agg(first_best_at=("flops", "min"),
                                    last_best_at=("flops", "max"),
                                    N=("N", "first")).sort_values("first_best_at")
    st.tables["compute-efficient frontier (best size per compute range)"] = \
        switch.reset_index().rename(columns={"size": size_label})

    def size_law() -> None:
        fit = frontier_size_law(fr["flops"].to_numpy(float), fr["N"].to_numpy(float),
                                candidates=None if sizes_n is None else sizes_n.to_numpy(float))
        st.fits["optimal size vs compute (frontier)"] = fit
        pts = fit.extra["points"]
        xg = np.geomspace(pts["C"].min() / 2, pts["C"].max() * 2, 100)
        iv = loglog_intervals(fit, xg)
        fc = None
        if budget:
            f = forecast_power(fit, budget)
            st.forecasts["N_opt (frontier law)"] = {**f, "at": f"C={budget:.3g}"}
            fc = {"x": budget, "y": f["value"], "low": f["low"], "high": f["high"]}
        st.figures.extend(figures.plot_power_law(
            pts["C"], pts["N"], out, f"{slug(st.key)}_optimal_size_vs_compute",
            fit_x=xg, fit_y=iv["y"], band=(iv["conf_low"], iv["conf_high"]), forecast=fc,
            title=f"{st.experiment}: optimal model size vs compute",
            xlabel="training FLOPs (geometric centre of the range where a size is best)",
            ylabel="parameters N", fit_label=f"N_opt ∝ C^{fit.params['k']:.3g}"))

    if n_col is None:
        st.skipped["optimal size vs compute"] = "no parameter count (params.effective)"
    else:
        attempt(st, "optimal size vs compute (frontier)", size_law)
        attempt(st, "intrinsic performance (Hilton et al.)",
                lambda: _intrinsic(st, ok, metric, n_col, xdata, out, n_boot, budget))


# The frontier is thinned to this many log-spaced budgets for the laws of the best metric
# vs compute; the largest quarter of them are held out to compare the laws.
FRONTIER_POINTS = 16


def metric_range(metric: str, values: Any) -> tuple[float | None, float | None]:
    """Known floor and ceiling of a metric: a success rate (name containing ``success``)
    whose values all lie in [0, 1] is bounded by 0 and 1; a return has neither (None)."""
    v = np.asarray(values, float)
    if "success" in metric and v.size and v.min() >= 0 and v.max() <= 1:
        return 0.0, 1.0
    return None, None


def best_vs_compute(st: StudyResult, front: pd.DataFrame, x: str, metric: str,
                    out: Path) -> dict[str, FitResult]:
    """Best ``metric`` vs compute on the compute-efficient frontier (a return or success
    rate: bounded, higher is better): the saturating law beside the power laws.

    Points: the frontier (``front``, columns ``x`` and ``metric``) at
    :data:`FRONTIER_POINTS` log-spaced budgets. Fits on all of them:
    :func:`~analysis.fitting.fit_saturating` (floor and ceiling from :func:`metric_range`),
    :func:`~analysis.fitting.fit_power_with_ceiling` and, where the metric is positive, the
    plain power law ``R = c C^k`` (:func:`~analysis.fitting.fit_loglog`); each is flagged
    as fitted to running bests of the same runs (not independent points: intervals are
    optimistic). Then :func:`~analysis.fitting.compare_saturating`: each law fitted on all
    but the largest quarter of the budgets and scored on those (RMSE in the metric); the
    study's context names the better law, a table lists every law's RMSE and a figure
    overlays the laws fitted on the smaller budgets. Returns the fits by law.
    """
    fr = front.sort_values(x)
    idx = np.unique(np.linspace(0, len(fr) - 1, min(FRONTIER_POINTS, len(fr))).round()
                    .astype(int))
    C = fr[x].to_numpy(float)[idx]
    R = fr[metric].to_numpy(float)[idx]
    floor, ceiling = metric_range(metric, R)
    names = ("compute", metric)
    if floor is not None:
        st.context[f"best {metric} vs compute, known range"] = (
            f"floor {floor:g}, ceiling {ceiling:g} (a success rate)")
    laws = {
        "saturating": lambda: fit_saturating(C, R, floor=floor, ceiling=ceiling,
                                             names=names),
        "power law with ceiling": lambda: fit_power_with_ceiling(C, R, ceiling=ceiling,
                                                                 names=names),
        "power law": lambda: _positive_power(C, R, metric),
    }
    fits: dict[str, FitResult] = {}
    for law, fn in laws.items():
        name = f"best {metric} vs compute ({law})"
        fit = attempt(st, name, fn)
        if fit is None:
            continue
        fit.used = C.tolist()
        fit.flag(f"points: the running-best frontier at {C.size} log-spaced budgets of the "
                 "same runs, not independent draws: the intervals are optimistic")
        st.fits[name] = fits[law] = fit
    cmp = compare_saturating(C, R, floor=floor, ceiling=ceiling,
                             n_holdout=max(2, C.size // 4))
    st.context[f"best {metric} vs compute, held-out check"] = cmp.line()
    st.context[f"best {metric} vs compute, better on held-out budgets"] = cmp.best or "none"
    st.tables[f"best {metric} vs compute: laws on held-out budgets"] = pd.DataFrame(cmp.rows())
    if "saturating" in fits:
        fits["saturating"].extra["heldout"] = cmp.to_json()
    train = C <= cmp.train_max
    grid = np.geomspace(C.min(), C.max(), 100)
    with np.errstate(all="ignore"):
        curves_ = {law: (grid, np.asarray(p(grid), float)) for law, p in cmp.predictors.items()}
    st.figures += figures.plot_law_comparison(
        C[train], R[train], curves_, out, f"{slug(st.key)}_{metric}_vs_compute_laws",
        heldout=(C[~train], R[~train]), split=cmp.train_max, ceiling=ceiling, best=cmp.best,
        title=f"{st.experiment}: best {metric} vs compute (laws fitted up to "
              f"{cmp.train_max:.3g})",
        ylabel=f"best {metric} (efficient frontier)")
    return fits


def _positive_power(C: np.ndarray, R: np.ndarray, metric: str) -> FitResult:
    """``R = c C^k`` by log-log OLS, or FitError naming the metric's non-positive values."""
    bad = int((R <= 0).sum())
    if bad:
        raise FitError(f"{metric}: {bad} non-positive value(s) (min {R.min():.4g}), no "
                       "log-log power law")
    fit = fit_loglog(C, R, law="power")
    fit.extra["form"] = "R = c C^k"
    return fit


def _intrinsic(st: StudyResult, df: pd.DataFrame, metric: str, n_col: str, xdata: str,
               out: Path, n_boot: int, budget: float | None) -> None:
    if is_loss_metric(metric):
        raise FitError(f"intrinsic performance needs a return metric, not {metric}")
    # Hilton et al. drop the first 1/64 of training
    d = curves.drop_warmup(df, x=xdata, total=planned_length(df, xdata))
    d = finite(d, [n_col, xdata, metric, "flops"])
    d = d[(d[n_col] > 0) & (d[xdata] > 0) & (d["flops"] > 0)]
    if d[n_col].nunique() < 3:
        raise FitError(f"{d[n_col].nunique()} model sizes, 3 needed")
    fit = fit_intrinsic(d[n_col], d[xdata], d[metric], C=d["flops"],
                        groups=d["run_dir"].to_numpy(), n_boot=n_boot)
    st.fits["intrinsic performance (Hilton et al.)"] = fit
    I = intrinsic_performance(fit.params, d[n_col].to_numpy(float),
                              d[xdata].to_numpy(float))
    g, fmap = fit.extra["_map"]
    o = np.argsort(g)[::-1]
    st.figures += figures.plot_scatter(
        I, d[metric].to_numpy(float), out, f"{slug(st.key)}_{metric}_vs_intrinsic",
        color_by=d[n_col].to_numpy(float), color_label="N",
        fit_curve=(g[o] ** (-1 / fit.params["beta"]), fmap[o]), fit_label="monotone map",
        title=f"{st.experiment}: {metric} vs intrinsic performance",
        xlabel="intrinsic performance I (FLOPs on the efficient frontier)", ylabel=metric)
    if any(c in d for c in ("fail_to_success", "success_rate", "eval_success")):
        attempt(st, "fail-to-success ratio vs intrinsic performance",
                lambda: _fail_to_success(st, d, I, n_col, out))
    if budget:
        for name, f in forecast_intrinsic_allocation(fit, budget).items():
            st.forecasts[f"{name} (intrinsic law)"] = {**f, "at": f"C={budget:.3g}"}


def _fail_to_success(st: StudyResult, d: pd.DataFrame, I: np.ndarray, n_col: str,
                     out: Path) -> None:
    """Hilton et al.'s "natural" metric beside intrinsic performance: failures per success,
    ``(1 - s) / s`` (logged as ``fail_to_success``, or derived from ``success_rate``), drawn
    against ``I`` and fitted as a power law ``ratio = c I^k`` (log-log OLS)."""
    for logged, rate in (("fail_to_success", "success_rate"),
                         ("eval_fail_to_success", "eval_success")):
        if logged in d and pd.to_numeric(d[logged], errors="coerce").notna().sum() >= 3:
            r = pd.to_numeric(d[logged], errors="coerce").to_numpy(float)
        elif rate in d and pd.to_numeric(d[rate], errors="coerce").notna().sum() >= 3:
            s = pd.to_numeric(d[rate], errors="coerce").to_numpy(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = (1 - s) / s
        else:
            continue
        m = np.isfinite(r) & (r > 0) & np.isfinite(I)
        if m.sum() < 3:
            continue
        fit = fit_loglog(I[m], r[m], law="power")
        fit.extra["form"] = f"{logged} = c I^k"
        zero = int((np.isfinite(I) & (r == 0)).sum())
        missing = int((np.isfinite(I) & ~np.isfinite(r)).sum())
        if zero:
            fit.dropped.append({"what": f"{zero} point(s) with no failure",
                                "reason": "a ratio of 0 has no logarithm"})
        if missing:
            fit.dropped.append({"what": f"{missing} point(s) with no success",
                                "reason": "the ratio is not finite (not measured)"})
        st.fits[f"{logged} vs intrinsic performance"] = fit
        grid = np.geomspace(I[m].min(), I[m].max(), 40)
        st.figures += figures.plot_scatter(
            I[m], r[m], out, f"{slug(st.key)}_{logged}_vs_intrinsic",
            color_by=d[n_col].to_numpy(float)[m], color_label="N",
            fit_curve=(grid, fit.params["c"] * grid ** fit.params["k"]),
            fit_label=f"{logged} = c I^{fit.params['k']:.3g}",
            title=f"{st.experiment}: fail-to-success ratio vs I",
            xlabel="intrinsic performance I", ylabel=f"{logged} = (1 - s) / s", logy=True)
        return
    raise FitError("no success rate in the log points (the env reports none)")


def task_labels(df: pd.DataFrame, task_col: str | None) -> pd.Series | None:
    """One label per row naming its task: the ``task`` axis (e.g. ``env.id``), with the
    Procgen distribution mode appended where it varies too (``coinrun/hard``); None when
    one task only."""
    if not task_col or task_col not in df:
        return None
    label = df[task_col].astype(str)
    mode = "env.distribution_mode"
    if mode in df and df[mode].nunique(dropna=True) > 1:
        label = label + "/" + df[mode].astype(str)
    return label if label.nunique() > 1 else None


def run_scaling(st: StudyResult, df: pd.DataFrame, spec: Study, metric: str, out: Path,
                opts: Options) -> None:
    """The ``scaling`` study: :func:`study_curves` with the frontier and both laws; once per
    task when the study's ``task`` axis holds several (each game its own laws, as in Hilton
    et al.; their fits and figures are prefixed by the task)."""
    tasks = task_labels(df, spec.axes.get("task"))
    if tasks is None:
        study_curves(st, df, metric, out, frontier=True, n_boot=opts.n_boot,
                     budget=opts.budget, axes=spec.axes)
        return
    st.context["tasks"] = ", ".join(sorted(tasks.unique()))
    for task, d in df.groupby(tasks, sort=True):
        sub = StudyResult(key=f"{st.key}/{task}", study="scaling",
                          experiment=f"{st.experiment} ({task})", title="")
        attempt(st, f"{task}: model-size study", lambda s=sub, d=d: study_curves(
            s, d, metric, out, frontier=True, n_boot=opts.n_boot, budget=opts.budget,
            axes=spec.axes))
        st.figures += sub.figures
        st.notes += [f"{task}: {n}" for n in sub.notes]
        for kind in ("fits", "forecasts", "skipped", "tables"):
            for name, v in getattr(sub, kind).items():
                getattr(st, kind)[f"{task}: {name}"] = v


def run_curves(st: StudyResult, df: pd.DataFrame, spec: Study, metric: str, out: Path,
               opts: Options) -> None:
    """The ``curves`` study: learning curves per configuration, no law."""
    study_curves(st, df, metric, out, frontier=False, axes=spec.axes)
