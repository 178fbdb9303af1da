"""UTD-ratio scaling in value-based RL (Rybkin et al. 2025): laws and driver.

The UTD ratio sigma (``study.axes.sigma``), batch size B (``batch_size``) and learning rate
eta (``lr``) vary on a grid, over seeds and tasks (``task``). The workflow: per run the
data to reach each return threshold J; the best (B, eta) per (task, sigma) with a
bootstrap over seeds (:func:`best_hparams`); ``B*(sigma)``, ``eta*(sigma)`` as power laws
with one slope shared by the tasks (:func:`fit_hparam_law`); data to threshold
``D_J(sigma) = D_min + (beta_J/sigma)^alpha_J`` (:func:`fit_utd`; all of it in
:func:`fit_utd_workflow`); compute ``C_J = 10 N B sigma D_J`` (:func:`utd_compute`), the
data-compute Pareto frontier (:func:`pareto_front`) and the best UTD ratio for a budget
``F = C + delta D`` (:func:`optimal_utd`, :func:`forecast_utd`). The driver is
:func:`study_utd` (``run_study``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from analysis import curves, figures
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
    delta_method,
    fit_fixed_effects,
    fit_loglog,
    fit_power_offset,
    flag_log_zero,
    forecast_power,
    holdout_largest,
    require_distinct,
    safe_exp,
    single_blas_thread,
    t_quantile,
)
from analysis.report import StudyResult
from analysis.study import Options, Study, attempt, finite, is_loss_metric, size_columns, slug

__all__ = [
    "best_hparams",
    "fit_hparam_law",
    "fit_utd_workflow",
    "UTDWorkflow",
    "fit_utd",
    "predict_utd",
    "utd_compute",
    "pareto_front",
    "optimal_utd",
    "forecast_utd",
    "study_utd",
    "run_study",
]


# =========================================================================== laws


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
    have = {r["_group"] for r in rows}
    no_cell = [{"what": f"{t} sigma={sg:g}", "reason": "no (B, eta) cell where every seed "
                f"reached the main threshold J={mj:.4g}"}
               for g, (t, sg) in enumerate(grid.groups) if g not in have]
    for name in ("B", "lr"):
        vals = np.array([r[name] for r in rows])
        try:
            wf.hparam_fits[name] = fit_hparam_law(bs_, vals, bt, name=name, level=level)
        except FIT_FAILURES as err:
            wf.errors[f"{name}*(sigma)"] = str(err)
            continue
        wf.hparam_fits[name].used = [f"{r['task']} sigma={r['sigma']:g}" for r in rows]
        wf.hparam_fits[name].dropped = list(no_cell)
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
            fit.used, fit.dropped = _utd_used_dropped(grid, point, Dj, t, j, mj)
            if n_boot > 0:
                _bootstrap_utd(fit, grid, D0, Dj, t, n_boot=n_boot, level=level, seed=seed)
            wf.utd_fits[key] = fit
    return wf


def _utd_used_dropped(grid: _UTDGrid, point: Mapping[int, int], Dj: np.ndarray, task: str,
                      j: float, main_j: float) -> tuple[list[Any], list[dict[str, Any]]]:
    """What one task's D_J(sigma) law used (its sigma values) and dropped: a sigma with no
    best cell at the main threshold, a sigma whose best cell's seeds never reached ``j``,
    and seeds of a used sigma that did not."""
    used: list[Any] = []
    dropped: list[dict[str, Any]] = []
    for g, (t, sg) in enumerate(grid.groups):
        if t != task:
            continue
        if g not in point:
            dropped.append({"what": f"sigma={sg:g}", "reason": "no (B, eta) cell where every "
                            f"seed reached the main threshold J={main_j:.4g}"})
            continue
        seeds = grid.cell == point[g]
        ok = seeds & np.isfinite(Dj)
        if not ok.any():
            dropped.append({"what": f"sigma={sg:g}", "reason": f"the best cell's "
                            f"{int(seeds.sum())} seed(s) never reached J={j:.4g}"})
            continue
        used.append(float(sg))
        missed = int(seeds.sum() - ok.sum())
        if missed:
            dropped.append({"what": f"sigma={sg:g} ({missed} of {int(seeds.sum())} seeds)",
                            "reason": f"never reached J={j:.4g} (the other seeds are used)"})
    return used, dropped


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
        fit.check()  # the flags of the replaced intervals go, the bootstrap ones' come


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
    float range are 0 or inf. ``bounds``: alpha in [0.01, 5], D_min in [0, min D] (an
    estimate on one is flagged); the sigma term running to 0 (below e^-30 of the largest D)
    is flagged as beta at its bound 0. Needs >= 4 points, at least 3 distinct sigma and D
    not all equal. FitError when beta itself is out of the float range (alpha near 0.01: D_J does
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
    fit = FitResult(law="utd", params=params, ci=ci, n_points=f.n_points, loss=f.loss,
                    extra=extra, bounds={"alpha": (-UTD_K_BOUNDS[1], -UTD_K_BOUNDS[0]),
                                         "D_min": (0.0, float(Dv.min()))})
    # beta = c^(1/alpha) is kept in logs: the (beta/sigma)^alpha term running to 0 is its
    # lower bound, which no box reports
    flag_log_zero(fit, "beta", params["alpha"] * (math.log(params["beta"])
                                                  - math.log(float(sig.min())))
                  - math.log(float(Dv.max())),
                  label="log of (beta/sigma)^alpha / max D on the data",
                  why="the sigma term vanishes and alpha is not identified")
    return fit


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


# =========================================================================== driver


def study_utd(st: StudyResult, df: pd.DataFrame, metric: str, out: Path, *,
              axes: Mapping[str, str], n_boot: int = 50,
              thresholds: Sequence[float] | None = None, delta: float | None = None,
              budget: float | None = None) -> None:
    """Rybkin et al.'s UTD workflow on a (sigma, B, eta) grid. ``axes``: the study's roles,
    the table column of ``sigma`` (required), ``batch_size``, ``lr`` and ``task`` (a
    missing one is constant: its law is reported as not fitted, or all runs are one task).
    ``budget``: the F = C + delta D to forecast sigma* at (default 10x the largest F of the
    thresholds' optima)."""
    scol = axes.get("sigma")
    if scol is None:
        raise FitError("no UTD-ratio axis (declare study.axes.sigma: the config key holding "
                       "the UTD ratio)")
    bcol, lcol, tcol = (axes.get(role) for role in ("batch_size", "lr", "task"))
    n_col, _, _ = size_columns(df, axes)
    if is_loss_metric(metric):
        raise FitError(f"the UTD workflow needs a return metric, not {metric}")
    d = finite(df, ["env_steps", metric])
    if thresholds is None:
        ymax = d.groupby("run_dir")[metric].max()
        thresholds = [float(f * ymax.median()) for f in (0.4, 0.5, 0.6, 0.7)]
    thresholds = sorted(thresholds)
    main_j = thresholds[len(thresholds) // 2]
    st.context["thresholds J"] = ", ".join(f"{j:.4g}" for j in thresholds)
    st.context["main threshold J"] = main_j
    per_run = d.groupby("run_dir").first()
    task = per_run[tcol].astype(str) if tcol else pd.Series("all", index=per_run.index)
    wcol = axes.get("width")
    if wcol and wcol in per_run and per_run[wcol].nunique() > 1:
        # Fu et al.'s joint grid: each model width is its own D_J(sigma), N and frontier
        width = per_run[wcol].map(lambda w: f"width={w:g}" if isinstance(w, float | int)
                                  else f"width={w}")
        task = width if not tcol else task + ", " + width
    # Compute in the study's convention where the algorithm logs it (SAC: flops_10nbsd =
    # 10 N B sigma D with N the critic's parameters), so measured C_J and the fitted
    # C_J(sigma) = 10 N B*(sigma) sigma D_J(sigma) use the same N; else the exact FLOPs.
    compute = "flops_10nbsd" if "flops_10nbsd" in d else "flops"
    if compute == "flops_10nbsd":
        st.context["compute C_J"] = "10 N B sigma D (flops_10nbsd; N = critic parameters)"
        last = d.sort_values("env_steps").groupby("run_dir").last()
        denom = 10.0 * last["env_steps"] * pd.to_numeric(per_run[scol], errors="coerce")
        denom = denom * (pd.to_numeric(per_run[bcol], errors="coerce") if bcol else 1.0)
        n_run = pd.to_numeric(last["flops_10nbsd"], errors="coerce") / denom
    else:
        st.context["compute C_J"] = "exact FLOPs (flops)"
        n_run = (pd.to_numeric(per_run[n_col], errors="coerce") if n_col
                 else pd.Series(np.nan, index=per_run.index))
    n_by_task = n_run.groupby(task).median().to_dict()
    n_params = float(n_run.median())
    res: dict[float, pd.DataFrame] = {}
    for j in thresholds:
        tj = curves.to_threshold(d, j, metric, x="env_steps", compute=compute,
                                 by="run_dir").set_index("run_dir")
        tj["sigma"] = pd.to_numeric(per_run[scol], errors="coerce")
        tj["B"] = pd.to_numeric(per_run[bcol], errors="coerce") if bcol else 1.0
        tj["lr"] = pd.to_numeric(per_run[lcol], errors="coerce") if lcol else 1.0
        tj["task"] = task
        res[j] = tj.reset_index()
    base = res[main_j]
    D_by_J = {j: res[j].set_index("run_dir").reindex(base["run_dir"])["D_J"].to_numpy(float)
              for j in thresholds}
    wf = fit_utd_workflow(D_by_J, base["sigma"], base["B"], base["lr"],
                          task=base["task"], main_j=main_j, n_boot=n_boot)
    best_df = pd.DataFrame(wf.best)
    st.tables[f"best hyperparameters per UTD ratio (J={main_j:.4g}, bootstrap over seeds)"] = \
        best_df
    tasks = sorted(best_df["task"].astype(str).unique())
    multi = len(tasks) > 1
    st.context["tasks"] = ", ".join(tasks)

    def tag(t: str) -> str:
        return f" [{t}]" if multi else ""

    b_law = None
    xg = np.geomspace(best_df["sigma"].min() / 1.5, best_df["sigma"].max() * 1.5, 50)
    for name, col, lab in (("B", bcol, "batch size B*"), ("lr", lcol, "learning rate eta*")):
        law_name = f"{name}*(sigma)"
        if col is None:
            st.skipped[law_name] = (f"no {name} column in the config (the study has no "
                                    f"{'batch_size' if name == 'B' else 'lr'} axis)")
            continue
        fit = wf.hparam_fits.get(name)
        if fit is None:
            st.skipped[law_name] = wf.errors.get(law_name, "not fitted")
            continue
        st.fits[law_name] = fit
        if name == "B":
            b_law = fit
        st.figures += figures.plot_per_task(
            best_df, name, {t: fit.params[f"c[{t}]"] * xg ** fit.params["k"] for t in tasks},
            xg, out, f"{slug(st.key)}_{name}_star_vs_utd", ylabel=lab,
            title=f"{st.experiment}: {lab} vs UTD ratio (shared slope "
                  f"{fit.params['k']:.3g})")
    # D_J(sigma) at the best (B, eta) per sigma: one law per threshold and per task
    utd_fits: dict[tuple[float, str], FitResult] = {}
    for (j, t), fit in wf.utd_fits.items():
        st.fits[f"D_J(sigma) J={j:.4g}{tag(t)}"] = fit
        utd_fits[(j, t)] = fit
    for name, why in wf.errors.items():
        if name.startswith("D_J"):
            st.skipped[name if multi else name.rsplit(" [", 1)[0]] = why
    for t in tasks:
        if (main_j, t) not in utd_fits:
            continue

        def hold(t: str = t) -> None:
            sig, dj = wf.points[(main_j, t)]
            cv = holdout_largest(sig, dj, lambda tr, te: predict_utd(
                fit_utd(sig[tr], dj[tr]).params, sig[te]))
            if not math.isfinite(cv.rmse):
                raise FitError(str(cv.folds[0].get("error", "fold failed")))
            st.context[f"D_J hold-out-largest-sigma RMSE (log){tag(t)}"] = cv.rmse
        attempt(st, f"hold-out-the-largest sigma{tag(t)}", hold)
    if utd_fits:
        sig_all = base["sigma"].to_numpy(float)
        xs = np.geomspace(sig_all.min() / 1.5, sig_all.max() * 1.5, 60)
        lines = {key: (xs, predict_utd(fit.params, xs),
                       f"J={key[0]:.4g}{tag(key[1])}: alpha={fit.params['alpha']:.2g}")
                 for key, fit in utd_fits.items()}
        st.figures += figures.plot_data_to_threshold(
            lines, {key: wf.points[key] for key in utd_fits}, thresholds, tasks, out,
            f"{slug(st.key)}_data_to_threshold",
            title=f"{st.experiment}: D_J(sigma) = D_min + (beta/sigma)^alpha")
    # compute to threshold, Pareto frontier, sigma*(F), per task
    if b_law is None or not utd_fits or not math.isfinite(n_params):
        st.skipped["compute to threshold / Pareto / sigma*"] = (
            "needs B*(sigma), D_J(sigma) and a parameter count")
        return
    reached_all = base.dropna(subset=["D_J"])
    if delta is None:
        ok = reached_all[(reached_all["C_J"] > 0) & (reached_all["D_J"] > 0)]
        delta = float(np.median(ok["C_J"] / ok["D_J"])) if len(ok) else 1.0
    st.context["delta (FLOPs per env step in F = C + delta D)"] = delta
    rows = []
    for t in tasks:
        for j in thresholds:  # each threshold has its own data-compute trade-off
            _pareto_figure(st, res[j], utd_fits.get((j, t)), b_law, n_by_task[t], j, t,
                           out, multi=multi)
        for j in thresholds:
            if (j, t) in utd_fits:
                o = optimal_utd(utd_fits[(j, t)].params, b_law.params, n_by_task[t],
                                delta, task=t)
                rows.append({"task": t, "J": j, **o})
                if j == main_j:
                    fc = forecast_utd(utd_fits[(j, t)], b_law, n_by_task[t], delta, task=t,
                                      lr_law=wf.hparam_fits.get("lr"))
                    names = {"sigma": "sigma*", "B": "B*(sigma*)", "lr": "eta*(sigma*)",
                             "D": "D_J(sigma*)", "C": "C_J(sigma*)", "F": "F(sigma*)"}
                    for k, v in fc.items():
                        st.forecasts[f"{names[k]} at main J{tag(t)}"] = {
                            **v, "at": f"J={j:.4g}, delta={delta:.3g}"}
    if not rows:
        return
    opt = pd.DataFrame(rows)
    st.tables["best UTD ratio sigma* for budget F = C + delta D"] = (
        opt if multi else opt.drop(columns="task"))
    for t, o in opt.groupby("task", sort=True):
        o = o.reset_index(drop=True)
        name = f"sigma*(F){tag(t)}"
        if len(o) >= 3 and o["sigma"].nunique() >= 2 and not o["at_edge"].any():
            fit = attempt(st, name, lambda o=o: fit_loglog(o["F"], o["sigma"],
                                                           law="sigma_star_vs_F"))
            if fit is not None:
                fit.extra["form"] = "sigma* = c F^k"
                fit.used = [f"J={j:.4g}" for j in o["J"]]
                fit.dropped = [{"what": f"J={j:.4g}", "reason": wf.errors.get(
                    f"D_J(sigma) J={j:.4g} [{t}]", "no D_J(sigma) law")}
                    for j in thresholds if (j, t) not in utd_fits]
                st.fits[name] = fit
                target = budget or float(o["F"].max() * 10)
                f = forecast_power(fit, target)
                st.forecasts[f"sigma* at F={target:.3g}{tag(t)}"] = {
                    **f, "at": f"F={target:.3g} (sigma*(F) law)"}
                if b_law is not None:  # B*(sigma) is monotone: map the interval's ends
                    bp = b_law.params
                    vals = [bp[f"c[{t}]"] * f[k] ** bp["k"] for k in ("value", "low", "high")]
                    st.forecasts[f"B*(sigma*) at F={target:.3g}{tag(t)}"] = {
                        "value": vals[0], "low": min(vals[1:]), "high": max(vals[1:]),
                        "at": f"F={target:.3g}; interval from sigma*'s only"}
        else:
            st.skipped[name] = "fewer than 3 thresholds with an interior optimum"


def _pareto_figure(st: StudyResult, runs: pd.DataFrame, fit: FitResult | None,
                   b_law: FitResult, n_params: float, j: float, task: str, out: Path, *,
                   multi: bool) -> None:
    """Data vs compute to threshold ``j`` for one task's runs: the runs, their empirical
    Pareto frontier and the one implied by the fitted D_J(sigma) and B*(sigma) laws.
    File ``<study>_pareto_J<j>[_<task>]``."""
    reached = runs[runs["task"].astype(str) == task].dropna(subset=["D_J"])
    if fit is None or reached.empty:
        return
    sg = np.geomspace(reached["sigma"].min() / 2, reached["sigma"].max() * 2, 80)
    cj = utd_compute(fit.params, b_law.params, sg, n_params, task=task)
    dj = predict_utd(fit.params, sg)
    front = reached.iloc[pareto_front(reached["D_J"], reached["C_J"])]
    tag = f" [{task}]" if multi else ""
    name = f"{slug(st.key)}_pareto_J{slug(f'{j:.4g}')}" + (f"_{slug(task)}" if multi else "")
    st.figures += figures.plot_pareto(
        reached, "D_J", "C_J", "sigma", out, name, frontier=front, fit_curve=(dj, cj),
        title=f"{st.experiment}{tag}: data vs compute to J={j:.4g}",
        xlabel="data D_J (env steps)", ylabel="compute C_J (FLOPs)", group_label="sigma")


def run_study(st: StudyResult, df: pd.DataFrame, spec: Study, metric: str, out: Path,
              opts: Options) -> None:
    """The ``utd`` study (:func:`study_utd` on the study's axes)."""
    study_utd(st, df, metric, out, axes=spec.axes, n_boot=opts.n_boot,
              thresholds=opts.thresholds, budget=opts.budget)
