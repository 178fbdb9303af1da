"""``python -m analysis --runs DIR [--runs DIR2] --out DIR``: from run records to a report.

1. Collect every run record under the roots into the tidy table (Parquet cache in the
   output directory, refreshed only where runs changed).
2. Split the table by ``experiment`` and detect which studies each one supports:

   - ``scaling``: model size varies (``model.width``/``model.depth``/parameter count) in an
     RL sweep -> learning curves vs interactions and vs FLOPs per size (seeds averaged, with
     their standard error), the compute-efficient frontier, optimal size vs compute, and
     Hilton et al.'s intrinsic-performance law;
   - ``isoflop``: model size varies on a fixed dataset (behavioural cloning: no env steps,
     a loss metric) -> isoFLOP profiles, envelope, Chinchilla Approach 3, quadratic surface,
     method choice by held-out RMSE, return vs loss, forecasts;
   - ``utd``: the UTD ratio varies (a config key ending in ``utd``) -> Rybkin et al.'s
     workflow: best batch size and learning rate per UTD ratio, their power laws, data and
     compute to threshold, the Pareto frontier and the best UTD ratio for a budget;
   - ``generalization``: a ``complexity`` config key varies -> data and compute to reach a
     sufficient generalization score vs complexity;
   - ``curves`` otherwise: learning curves per configuration.

3. Run them; a law that cannot be fitted gets a one-line reason in the report, never a
   crash. Write figures (PNG + PDF), ``report.md`` and ``laws.json`` (docs/analysis.md).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import collect, curves, figures, laws
from analysis.fitting import (
    FIT_FAILURES,
    FitError,
    FitResult,
    fit_chinchilla,
    holdout_largest,
    loglog_intervals,
    one_blas_thread,
    one_line,
    power_offset_intervals,
)
from analysis.report import StudyResult, write_outputs

log = logging.getLogger(__name__)

RETURN_METRICS = ("return_mean", "eval_return", "success_rate", "eval_success")
LOSS_METRICS = ("val_loss", "loss")
SIZE_COLUMNS = ("params.effective", "params.total")
# Errors that mean "this law cannot be fitted on these data" (reported, not raised):
# the fits' own (FitError, ValueError, ArithmeticError such as an OverflowError in one law,
# LinAlgError) and lookups that find no usable rows.
FIT_ERRORS: tuple[type[BaseException], ...] = FIT_FAILURES + (KeyError, IndexError,
                                                              RuntimeError)


# --------------------------------------------------------------------------- helpers


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


def size_columns(df: pd.DataFrame) -> tuple[str | None, str | None, str]:
    """``(N column, size-label column, label)``: parameters for laws, and the knob that is
    swept for legends (``model.width`` or ``model.depth`` when only one varies)."""
    n_col = next((c for c in SIZE_COLUMNS if c in df
                  and pd.to_numeric(df[c], errors="coerce").notna().all()), None)
    knobs = curves.varying(df, [c for c in ("model.width", "model.depth") if c in df])
    if len(knobs) == 1:
        return n_col, knobs[0], knobs[0].split(".")[-1]
    return n_col, n_col, "params"


def utd_column(df: pd.DataFrame) -> str | None:
    """The config key holding the UTD ratio, if it varies."""
    cands = [c for c in curves.config_columns(df) if re.search(r"(^|\.)(utd|utd_ratio)$", c)]
    v = curves.varying(df, cands)
    return v[0] if v else None


def complexity_column(df: pd.DataFrame) -> str | None:
    """A varying config key naming problem complexity (e.g. ``env.complexity``)."""
    v = curves.varying(df, [c for c in curves.config_columns(df) if "complexity" in c])
    return v[0] if v else None


def detect_studies(df: pd.DataFrame) -> list[str]:
    """Which studies one experiment's rows support (see the module docstring)."""
    studies = []
    bc = curves.data_column(df) == "samples" or (
        "algo.name" in df and df["algo.name"].astype(str).eq("bc").all())
    n_col, size_col, _ = size_columns(df)
    n_sizes = df[n_col].nunique() if n_col else 0
    if utd_column(df):
        studies.append("utd")
    if complexity_column(df):
        studies.append("generalization")
    if bc and n_sizes >= 2 and "flops" in df:
        studies.append("isoflop")
    elif not studies and n_sizes >= 2:
        studies.append("scaling")
    if not studies:
        studies.append("curves")
    return studies


def _sizes(df: pd.DataFrame, size_col: str | None) -> pd.Series:
    if size_col is None:
        return pd.Series(1.0, index=df.index)
    return pd.to_numeric(df[size_col], errors="coerce")


def _finite(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out.replace([np.inf, -np.inf], np.nan).dropna(subset=list(cols))


def _fit_curve(fit: FitResult, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x, fit.params.get("offset", 0.0) + fit.params["c"] * x ** fit.params["k"]


# --------------------------------------------------------------------------- studies


def study_curves(st: StudyResult, df: pd.DataFrame, metric: str, out: Path,
                 *, frontier: bool = False, n_boot: int = 50,
                 budget: float | None = None) -> None:
    """Learning curves per size (or configuration) vs data and FLOPs; with ``frontier`` the
    compute-efficient frontier, optimal size vs compute and the intrinsic-performance law."""
    n_col, size_col, size_label = size_columns(df)
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
             if c not in (size_col, "model.width", "model.depth")]
    if frontier and other:
        st.notes.append(f"other config keys vary too ({', '.join(other)}); curves are averaged "
                        "over them per size")
    ok = _finite(df, [xdata, metric, "size"])
    if ok.empty:
        raise FitError(f"no log point has both {xdata} and {metric}")
    avg_x = curves.average_seeds(ok, xdata, metric, by="size")
    pretty = {"env_steps": "interactions (env steps)", "samples": "samples"}[xdata]
    st.figures += figures.plot_curves(
        avg_x, xdata, metric, "size", out, f"{_slug(st.key)}_{metric}_vs_{xdata}",
        title=f"{st.experiment}: {metric} vs {pretty}", xlabel=pretty, ylabel=metric,
        size_label=size_label)
    have_flops = "flops" in ok and (pd.to_numeric(ok["flops"], errors="coerce") > 0).any()
    front = None
    if have_flops:
        okf = _finite(ok, ["flops"])
        okf = okf[okf["flops"] > 0]
        avg_c = curves.average_seeds(okf, "flops", metric, by="size")
        if frontier:
            front = curves.efficient_frontier(avg_c, "flops", metric, by="size",
                                              maximize=maximize, cumulative=True)
        st.figures += figures.plot_curves(
            avg_c, "flops", metric, "size", out, f"{_slug(st.key)}_{metric}_vs_flops",
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
        fit = laws.frontier_size_law(fr["flops"].to_numpy(float), fr["N"].to_numpy(float))
        st.fits["optimal size vs compute (frontier)"] = fit
        pts = fit.extra["points"]
        xg = np.geomspace(pts["C"].min() / 2, pts["C"].max() * 2, 100)
        iv = loglog_intervals(fit, xg)
        fc = None
        if budget:
            f = laws.forecast_power(fit, budget)
            st.forecasts["N_opt (frontier law)"] = {**f, "at": f"C={budget:.3g}"}
            fc = {"x": budget, "y": f["value"], "low": f["low"], "high": f["high"]}
        st.figures.extend(figures.plot_power_law(
            pts["C"], pts["N"], out, f"{_slug(st.key)}_optimal_size_vs_compute",
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


def _intrinsic(st: StudyResult, df: pd.DataFrame, metric: str, n_col: str, xdata: str,
               out: Path, n_boot: int, budget: float | None) -> None:
    if is_loss_metric(metric):
        raise FitError(f"intrinsic performance needs a return metric, not {metric}")
    total = "algo.total_steps" if "algo.total_steps" in df else None
    d = curves.drop_warmup(df, x=xdata, total=total)  # Hilton et al. drop the first 1/64
    d = _finite(d, [n_col, xdata, metric, "flops"])
    d = d[(d[n_col] > 0) & (d[xdata] > 0) & (d["flops"] > 0)]
    if d[n_col].nunique() < 3:
        raise FitError(f"{d[n_col].nunique()} model sizes, 3 needed")
    fit = laws.fit_intrinsic(d[n_col], d[xdata], d[metric], C=d["flops"],
                             groups=d["run_dir"].to_numpy(), n_boot=n_boot)
    st.fits["intrinsic performance (Hilton et al.)"] = fit
    I = laws.intrinsic_performance(fit.params, d[n_col].to_numpy(float),
                                   d[xdata].to_numpy(float))
    g, fmap = fit.extra["_map"]
    o = np.argsort(g)[::-1]
    st.figures += figures.plot_scatter(
        I, d[metric].to_numpy(float), out, f"{_slug(st.key)}_{metric}_vs_intrinsic",
        color_by=d[n_col].to_numpy(float), color_label="N",
        fit_curve=(g[o] ** (-1 / fit.params["beta"]), fmap[o]), fit_label="monotone map",
        title=f"{st.experiment}: {metric} vs intrinsic performance",
        xlabel="intrinsic performance I (FLOPs on the efficient frontier)", ylabel=metric)
    for nat in ("success_rate", "eval_success"):
        if nat in df and d[nat].notna().sum() >= 3:
            s = pd.to_numeric(d[nat], errors="coerce").to_numpy(float)
            m = np.isfinite(s) & (s > 0) & (s < 1)
            if m.sum() >= 3:
                st.figures += figures.plot_scatter(
                    I[m], (1 - s[m]) / s[m], out, f"{_slug(st.key)}_{nat}_ratio_vs_intrinsic",
                    color_by=d[n_col].to_numpy(float)[m], color_label="N",
                    title=f"{st.experiment}: fail-to-success ratio vs I",
                    xlabel="intrinsic performance I", ylabel=f"(1 - {nat}) / {nat}",
                    logy=True)
                break
    if budget:
        for name, f in laws.forecast_intrinsic_allocation(fit, budget).items():
            st.forecasts[f"{name} (intrinsic law)"] = {**f, "at": f"C={budget:.3g}"}


def study_isoflop(st: StudyResult, df: pd.DataFrame, metric: str, out: Path, *,
                  n_boot: int = 50, budget: float | None = None, n_budgets: int = 8,
                  loss_offset: bool = False) -> None:
    """isoFLOP profiles and the allocation laws on a BC-style size sweep. ``loss_offset``:
    fit ``L_opt = L_inf + L_coef C^L_exponent`` instead of a pure power law."""
    n_col, _, _ = size_columns(df)
    if n_col is None:
        raise FitError("no parameter count (params.effective) in run.json")
    if not is_loss_metric(metric):
        raise FitError(f"isoFLOP profiles need a loss metric, not {metric}")
    dcol = curves.data_column(df)
    d = _finite(df, [n_col, "flops", metric, dcol])
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

    iso = attempt(st, "isoFLOP profiles", lambda: laws.fit_isoflop(N, C, L, D=D,
                                                                   loss_offset=loss_offset))
    par = laws.isoflop_parabolas(N, C, L)
    st.figures += figures.plot_isoflop(
        prof, n_col, metric, out, f"{_slug(st.key)}_isoflop_profiles",
        parabolas={b: p for b, p in par.items() if np.isfinite(p["a"])},
        title=f"{st.experiment}: isoFLOP profiles", ylabel=metric)
    if iso is not None:
        st.fits["isoFLOP profiles"] = iso
        fc = laws.forecast_isoflop(iso, target)
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
                f"{_slug(st.key)}_{name}_vs_compute", fit_x=xg, fit_y=iv["y"],
                band=(iv["conf_low"], iv["conf_high"]),
                forecast={"x": target, "y": fc[name]["value"], "low": fc[name]["low"],
                          "high": fc[name]["high"]},
                title=f"{st.experiment}: {name} vs compute", xlabel="training FLOPs C",
                ylabel=ylab, fit_label=label)
    env = attempt(st, "envelope", lambda: laws.fit_envelope(N, C, L))
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
        for name, r in laws.forecast_chinchilla(ch, target,
                                                flops_per_param_sample=kflops).items():
            st.forecasts[f"{name} (Chinchilla)"] = {**r, "at": f"C={target:.3g}"}
    qs = attempt(st, "quadratic surface", lambda: laws.fit_quadratic_surface(
        Nall, Dall, Lall, flops_per_param_sample=kflops))
    if qs is not None:
        st.fits["quadratic surface"] = qs
    cmp_ = attempt(st, "method choice (held-out RMSE)", lambda: laws.compare_isoflop_methods(
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
            f"{_slug(st.key)}_extrapolation_check",
            title=f"{st.experiment}: L_opt forecast one budget ahead vs measured")
    # return vs loss
    rcol = next((c for c in ("eval_return", "return_mean") if c in d), None)
    if rcol is not None:
        rl = _finite(d, [rcol])

        def rvl() -> None:
            fit = laws.fit_return_vs_loss(rl[metric], rl[rcol])
            st.fits[f"{rcol} vs {metric}"] = fit
            xg = np.geomspace(rl[metric].min(), rl[metric].max(), 100)
            st.figures.extend(figures.plot_scatter(
                rl[metric].to_numpy(float), rl[rcol].to_numpy(float), out,
                f"{_slug(st.key)}_{rcol}_vs_{metric}", color_by=rl[n_col].to_numpy(float),
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
    fc = laws.forecast_isoflop_method(best, fit, target, flops_per_param_sample=kflops)
    why = f"method chosen by held-out RMSE of log L_opt ({cmp_['rmse'][best]:.3g})"
    head = {f"{name} (best method: {best})": {**fc[name], "at": f"C={target:.3g}",
                                              "method": f"{fc[name]['method']}; {why}"}
            for name in ("L_opt", "N_opt") if name in fc}
    st.forecasts = {**head, **st.forecasts}


def study_utd(st: StudyResult, df: pd.DataFrame, metric: str, out: Path, *,
              n_boot: int = 50, thresholds: Sequence[float] | None = None,
              delta: float | None = None, budget: float | None = None) -> None:
    """Rybkin et al.'s UTD workflow on a (sigma, B, eta) grid. ``budget``: the F = C + delta D
    to forecast sigma* at (default 10x the largest F of the thresholds' optima)."""
    scol = utd_column(df)
    bcol = next((c for c in ("algo.batch_size", "algo.batch") if c in df), None)
    lcol = next((c for c in ("algo.lr", "algo.learning_rate") if c in df), None)
    tcol = "env.id" if "env.id" in df else None
    n_col, _, _ = size_columns(df)
    if is_loss_metric(metric):
        raise FitError(f"the UTD workflow needs a return metric, not {metric}")
    d = _finite(df, ["env_steps", metric])
    if thresholds is None:
        ymax = d.groupby("run_dir")[metric].max()
        thresholds = [float(f * ymax.median()) for f in (0.4, 0.5, 0.6, 0.7)]
    thresholds = sorted(thresholds)
    main_j = thresholds[len(thresholds) // 2]
    st.context["thresholds J"] = ", ".join(f"{j:.4g}" for j in thresholds)
    st.context["main threshold J"] = main_j
    per_run = d.groupby("run_dir").first()
    task = per_run[tcol].astype(str) if tcol else pd.Series("all", index=per_run.index)
    n_params = float(per_run[n_col].median()) if n_col else float("nan")
    res: dict[float, pd.DataFrame] = {}
    for j in thresholds:
        tj = curves.to_threshold(d, j, metric, x="env_steps", by="run_dir").set_index("run_dir")
        tj["sigma"] = pd.to_numeric(per_run[scol], errors="coerce")
        tj["B"] = pd.to_numeric(per_run[bcol], errors="coerce") if bcol else 1.0
        tj["lr"] = pd.to_numeric(per_run[lcol], errors="coerce") if lcol else 1.0
        tj["task"] = task
        res[j] = tj.reset_index()
    base = res[main_j]
    D_by_J = {j: res[j].set_index("run_dir").reindex(base["run_dir"])["D_J"].to_numpy(float)
              for j in thresholds}
    wf = laws.fit_utd_workflow(D_by_J, base["sigma"], base["B"], base["lr"],
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
            st.skipped[law_name] = f"no {name} column in the config"
            continue
        fit = wf.hparam_fits.get(name)
        if fit is None:
            st.skipped[law_name] = wf.errors.get(law_name, "not fitted")
            continue
        st.fits[law_name] = fit
        if name == "B":
            b_law = fit
        st.figures += _per_task_plot(
            best_df, name, {t: fit.params[f"c[{t}]"] * xg ** fit.params["k"] for t in tasks},
            xg, out, f"{_slug(st.key)}_{name}_star_vs_utd", ylabel=lab,
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
            cv = holdout_largest(sig, dj, lambda tr, te: laws.predict_utd(
                laws.fit_utd(sig[tr], dj[tr]).params, sig[te]))
            if not math.isfinite(cv.rmse):
                raise FitError(str(cv.folds[0].get("error", "fold failed")))
            st.context[f"D_J hold-out-largest-sigma RMSE (log){tag(t)}"] = cv.rmse
        attempt(st, f"hold-out-the-largest sigma{tag(t)}", hold)
    if utd_fits:
        sig_all = base["sigma"].to_numpy(float)
        xs = np.geomspace(sig_all.min() / 1.5, sig_all.max() * 1.5, 60)
        import matplotlib.pyplot as plt
        with figures.figure_style():
            fig, ax = plt.subplots()
            for i, j in enumerate(thresholds):
                for ti, t in enumerate(tasks):
                    if (j, t) not in utd_fits:
                        continue
                    fit = utd_fits[(j, t)]
                    ax.plot(xs, laws.predict_utd(fit.params, xs), ["-", "--", ":", "-."][ti % 4],
                            color=f"C{i}", label=f"J={j:.4g}{tag(t)}: "
                                                 f"alpha={fit.params['alpha']:.2g}")
                    sig, dj = wf.points[(j, t)]
                    ax.plot(sig, dj, "osd^v"[ti % 5], color=f"C{i}", alpha=0.7)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("UTD ratio sigma")
            ax.set_ylabel("data to threshold D_J (env steps)")
            ax.set_title(f"{st.experiment}: D_J(sigma) = D_min + (beta/sigma)^alpha")
            ax.legend(loc="best", fontsize="small")
            st.figures += figures.save(fig, out, f"{_slug(st.key)}_data_to_threshold")
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
            _pareto_figure(st, res[j], utd_fits.get((j, t)), b_law, n_params, j, t, out,
                           multi=multi)
        for j in thresholds:
            if (j, t) in utd_fits:
                o = laws.optimal_utd(utd_fits[(j, t)].params, b_law.params, n_params, delta,
                                     task=t)
                rows.append({"task": t, "J": j, **o})
                if j == main_j:
                    fc = laws.forecast_utd(utd_fits[(j, t)], b_law, n_params, delta, task=t,
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
            fit = attempt(st, name, lambda o=o: laws.fit_complexity(o["F"], o["sigma"],
                                                                     name="sigma_star"))
            if fit is not None:
                fit.law = "sigma_star_vs_F"
                fit.extra["form"] = "sigma* = c F^k"
                st.fits[name] = fit
                target = budget or float(o["F"].max() * 10)
                f = laws.forecast_power(fit, target)
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
    cj = laws.utd_compute(fit.params, b_law.params, sg, n_params, task=task)
    dj = laws.predict_utd(fit.params, sg)
    front = reached.iloc[laws.pareto_front(reached["D_J"], reached["C_J"])]
    tag = f" [{task}]" if multi else ""
    name = f"{_slug(st.key)}_pareto_J{_slug(f'{j:.4g}')}" + (f"_{_slug(task)}" if multi else "")
    st.figures += figures.plot_pareto(
        reached, "D_J", "C_J", "sigma", out, name, frontier=front, fit_curve=(dj, cj),
        title=f"{st.experiment}{tag}: data vs compute to J={j:.4g}",
        xlabel="data D_J (env steps)", ylabel="compute C_J (FLOPs)", group_label="sigma")


def _per_task_plot(best: pd.DataFrame, col: str, lines: dict[str, np.ndarray], xg: np.ndarray,
                   out: Path, name: str, *, ylabel: str, title: str) -> list[Path]:
    """Best hyperparameter per sigma with bootstrap bars and the fitted law, one colour per
    task."""
    import matplotlib.pyplot as plt
    with figures.figure_style():
        fig, ax = plt.subplots()
        for i, (t, g) in enumerate(best.groupby("task", sort=True)):
            y = g[col].to_numpy(float)
            lo = g.get(f"{col}_low", pd.Series(np.nan, index=g.index)).to_numpy(float)
            hi = g.get(f"{col}_high", pd.Series(np.nan, index=g.index)).to_numpy(float)
            err = np.vstack([np.where(np.isfinite(lo), y - lo, 0),
                             np.where(np.isfinite(hi), hi - y, 0)])
            ax.errorbar(g["sigma"], y, yerr=np.clip(err, 0, None), fmt="o", color=f"C{i}",
                        capsize=2, label=str(t))
            if str(t) in lines:
                ax.plot(xg, lines[str(t)], "-", color=f"C{i}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("UTD ratio sigma")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="best", fontsize="small")
        return figures.save(fig, out, name)


TEST_TASK_PATTERN = r"^(test|heldout|test_task)[/_.:]"


def test_task_columns(df: pd.DataFrame) -> list[str]:
    """Metrics holding one held-out test task's score each (``test/<task>``,
    ``heldout/<task>``, ``test_task_<i>``...), with at least one value."""
    return [c for c in df.columns if re.match(TEST_TASK_PATTERN, str(c))
            and pd.to_numeric(df[c], errors="coerce").notna().any()]


def study_generalization(st: StudyResult, df: pd.DataFrame, metric: str, out: Path, *,
                         level: float = 0.8, criterion: str = "fraction",
                         fraction: float = 0.95, percentile: float = 10.0) -> None:
    """Data and compute to reach "sufficient generalization" vs problem complexity.

    With per-test-task metrics (:func:`test_task_columns`) each task's score is normalised
    by the best value seen for that task, and :func:`~analysis.laws.generalization_score`
    turns them into one score per run and log point (``criterion`` "fraction": the score
    reached on at least ``fraction`` of the test tasks; "lowest": the mean of the lowest
    ``percentile`` %); seeds are then averaged per complexity and the first crossing of
    ``level`` gives D and C. Without them, one test metric (``eval_return``...) normalised
    by the best seen plays that role.
    """
    ccol = complexity_column(df)
    xdata = curves.data_column(df)
    cols = test_task_columns(df)
    if cols:
        d = _finite(df, [ccol, xdata]).copy()
        sc = d[cols].apply(pd.to_numeric, errors="coerce")
        best = sc.max()
        if not (best > 0).all():
            bad = ", ".join(str(c) for c in best.index[~(best > 0)][:3])
            raise FitError(f"test task(s) with no positive score to normalise by: {bad}")
        d["score"] = laws.generalization_score((sc / best).to_numpy(float),
                                               criterion=criterion, fraction=fraction,
                                               percentile=percentile)
        d = d.dropna(subset=["score"])
        what = (f"at least {fraction:.0%} of the {len(cols)} test tasks"
                if criterion == "fraction" else
                f"mean of the lowest {percentile:g}% of the {len(cols)} test tasks")
        st.context["criterion"] = (f"{what} >= {level} (each task's score ÷ its best seen; "
                                   "per run, then averaged over seeds)")
        test = "test-task score"
    else:
        test = next((c for c in ("eval_return", "eval_success") if c in df
                     and df[c].notna().any()), metric)
        d = _finite(df, [ccol, xdata, test])
        score_max = float(d[test].max())
        if not score_max > 0:
            raise FitError(f"{test}: no positive score to normalise by")
        d["score"] = d[test] / score_max
        st.context["criterion"] = (f"normalised {test} (÷ best seen, {score_max:.4g}) >= "
                                   f"{level} (no per-test-task metrics test/<task>)")
    st.context["criterion kind"] = criterion if cols else "single test metric"
    avg = curves.average_seeds(d, xdata, "score", by=ccol)
    if "flops" in d:
        # compute at each data point of the averaged curve (seeds share their counters)
        fl = d.groupby([ccol, xdata])["flops"].mean().reset_index()
        avg = avg.merge(fl, on=[ccol, xdata], how="left")
    thr = curves.to_threshold(avg, level, "score", x=xdata, compute="flops", by=ccol)
    st.tables["data and compute to sufficient generalization"] = thr
    st.figures += figures.plot_curves(
        avg.assign(**{ccol: pd.to_numeric(avg[ccol])}), xdata, "score", ccol, out,
        f"{_slug(st.key)}_generalization_curves", title=f"{st.experiment}: normalised {test}",
        ylabel=f"criterion score ({st.context['criterion kind']})",
        size_label=ccol.split(".")[-1])
    reached = thr[thr["reached"]]
    for col, name in (("D_J", "D"), ("C_J", "C")):
        r = reached.dropna(subset=[col])

        def fitc(r=r, col=col, name=name) -> None:
            fit = laws.fit_complexity(pd.to_numeric(r[ccol]), r[col], name=name)
            fit.extra["criterion"] = st.context["criterion"]
            st.fits[f"{name} to sufficient generalization vs complexity"] = fit
            x = pd.to_numeric(r[ccol]).to_numpy(float)
            xg = np.geomspace(x.min(), x.max(), 50)
            iv = loglog_intervals(fit, xg)
            st.figures.extend(figures.plot_power_law(
                x, r[col].to_numpy(float), out, f"{_slug(st.key)}_{name}_vs_complexity",
                fit_x=xg, fit_y=iv["y"], band=(iv["conf_low"], iv["conf_high"]),
                title=f"{st.experiment}: {name} to reach the criterion",
                xlabel=ccol, ylabel=name, fit_label=f"∝ complexity^{fit.params['k']:.3g}"))
        attempt(st, f"{name} vs complexity", fitc)


# --------------------------------------------------------------------------- driver


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


TITLES = {
    "scaling": "Model-size scaling: learning curves, compute-efficient frontier, intrinsic "
               "performance",
    "isoflop": "isoFLOP profiles and compute-optimal allocation (imitation)",
    "utd": "UTD-ratio scaling (value-based RL)",
    "generalization": "Generalization vs problem complexity",
    "curves": "Learning curves",
}


def run_pipeline(
    table: pd.DataFrame,
    out_dir: str | Path,
    *,
    roots: Sequence[str | Path] = (),
    metric: str | None = None,
    budget: float | None = None,
    n_boot: int = 50,
    thresholds: Sequence[float] | None = None,
    generalization: dict[str, Any] | None = None,
    loss_offset: bool = False,
) -> list[StudyResult]:
    """Run every study the table supports, write figures, ``report.md`` and ``laws.json``.

    ``generalization``: keyword arguments of :func:`study_generalization` (``level``,
    ``criterion``, ``fraction``, ``percentile``). ``loss_offset``: the isoFLOP study fits
    ``L_opt`` as a power law plus constant (:func:`study_isoflop`)."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    summary = collect.run_summary(table)
    run_counts = summary["status"].value_counts().to_dict() if len(summary) else {}
    notes = []
    for status in ("running", "failed", "diverged"):
        names = summary.loc[summary["status"] == status, "run_id"].astype(str).tolist()
        if names:
            notes.append(f"{len(names)} {status} run(s), included as far as they got: "
                         + ", ".join(names[:8]) + (" ..." if len(names) > 8 else ""))
    if "truncated" in summary and summary["truncated"].any():
        notes.append(f"{int(summary['truncated'].sum())} run(s) had a malformed metrics line "
                     "(skipped)")
    rows = table[table["step"] >= 0].copy() if "step" in table else table.copy()
    empty = sorted(set(summary["run_id"]) - set(rows["run_id"])) if len(summary) else []
    if empty:
        notes.append(f"{len(empty)} run(s) have no log point yet: " + ", ".join(empty[:8]))
    if "experiment" not in rows:
        rows["experiment"] = "all"
    rows["experiment"] = rows["experiment"].fillna("").astype(str).replace("", "default")
    studies: list[StudyResult] = []
    used: list[str] = []
    for exp, df in rows.groupby("experiment", sort=True):
        df = df.copy()
        df["config_id"] = curves.config_id(df)
        kinds = detect_studies(df)
        bc = "isoflop" in kinds
        m = choose_metric(df, metric, bc)
        for kind in kinds:
            st = StudyResult(key=f"{exp}/{kind}", study=kind, experiment=str(exp),
                             title=f"{exp}: {TITLES[kind]}")
            st.context["runs"] = int(df["run_dir"].nunique())
            studies.append(st)
            if m is None:
                st.skipped[kind] = (f"no metric {metric!r} in the log points" if metric else
                                    "no return or loss metric in the log points")
                continue
            st.context["metric"] = m
            if m not in used:
                used.append(m)
            try:
                if kind == "scaling":
                    study_curves(st, df, m, fig_dir, frontier=True, n_boot=n_boot,
                                 budget=budget)
                elif kind == "curves":
                    study_curves(st, df, m, fig_dir, frontier=False)
                elif kind == "isoflop":
                    study_isoflop(st, df, m, fig_dir, n_boot=n_boot, budget=budget,
                                  loss_offset=loss_offset)
                elif kind == "utd":
                    study_utd(st, df, m, fig_dir, n_boot=n_boot, thresholds=thresholds,
                              budget=budget)
                elif kind == "generalization":
                    study_generalization(st, df, m, fig_dir, **(generalization or {}))
            except Exception as err:  # noqa: BLE001 - one study failing must not stop the rest
                st.skipped[kind] = one_line(err)
                log.warning("study %s stopped: %s", st.key, st.skipped[kind])
                log.debug("%s", traceback.format_exc())
    used_metric = ", ".join(used) if used else (metric or "none")
    write_outputs(studies, out, roots=roots, metric=used_metric, run_counts=run_counts,
                  notes=notes)
    return studies


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m analysis``."""
    p = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Read run records, fit scaling laws, write figures, report.md and "
                    "laws.json. Subcommands: `fit` (fit a CSV), `synth` (synthetic records).")
    p.add_argument("--runs", action="append", metavar="DIR",
                   help="runs root (repeatable; default: runs); every directory with run.json "
                        "under it")
    p.add_argument("--out", default="reports/latest", metavar="DIR",
                   help="output directory (default: reports/latest, as `make analysis`)")
    p.add_argument("--metric", default=None,
                   help="performance metric (default: return_mean/eval_return for RL, "
                        "val_loss for BC)")
    p.add_argument("--budget", type=float, default=None,
                   help="compute budget (FLOPs) to forecast at (default: 10x the largest)")
    p.add_argument("--threshold", type=float, action="append", default=None,
                   help="return threshold J for the UTD workflow (repeatable)")
    p.add_argument("--n-boot", type=int, default=50, help="bootstrap resamples (50)")
    p.add_argument("--gen-criterion", choices=laws.GENERALIZATION_CRITERIA, default="fraction",
                   help="sufficient generalization: 'fraction' (normalised score >= "
                        "--gen-level on at least --gen-fraction of the test tasks) or "
                        "'lowest' (mean of the lowest --gen-percentile %% >= --gen-level)")
    p.add_argument("--gen-level", type=float, default=0.8,
                   help="normalised test-score threshold (0.8)")
    p.add_argument("--gen-fraction", type=float, default=0.95,
                   help="fraction of test tasks that must reach it (0.95)")
    p.add_argument("--gen-percentile", type=float, default=10.0,
                   help="lowest percentile of test tasks averaged by 'lowest' (10)")
    p.add_argument("--loss-offset", action="store_true",
                   help="isoFLOP study: fit L_opt = L_inf + c C^k (power law plus constant; "
                        "needs 4 budgets) instead of L_opt = c C^k")
    p.add_argument("--formats", default="png,pdf",
                   help="figure file types, comma separated (default png,pdf)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not keep the tidy table as OUT/table.parquet")
    p.add_argument("-v", "--verbose", action="store_true", help="log each skipped fit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m analysis``; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.runs = args.runs or ["runs"]  # append-action defaults would be appended to
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    try:
        table = collect.collect(args.runs, cache=None if args.no_cache else
                                out / "table.parquet")
    except collect.RunsRootError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    saved = figures.FORMATS
    figures.FORMATS = tuple(f.strip().lstrip(".") for f in args.formats.split(",")
                            if f.strip()) or saved
    try:
        with one_blas_thread():  # many tiny fits: BLAS threads only add waiting
            studies = run_pipeline(table, out, roots=args.runs, metric=args.metric,
                                   budget=args.budget, n_boot=args.n_boot,
                                   thresholds=args.threshold,
                                   generalization={"level": args.gen_level,
                                                   "criterion": args.gen_criterion,
                                                   "fraction": args.gen_fraction,
                                                   "percentile": args.gen_percentile},
                                   loss_offset=args.loss_offset)
    finally:
        figures.FORMATS = saved
    n_fits = sum(len(s.fits) for s in studies)
    n_figs = sum(1 for s in studies for f in s.figures if f.suffix == ".png")
    n_skip = sum(len(s.skipped) for s in studies)
    print(f"{len(studies)} studies, {n_fits} fitted laws, {n_figs} figures, {n_skip} not "
          f"fitted -> {out / 'report.md'}, {out / 'laws.json'}")
    return 0
