"""The horizon study (Hilton, Tang, Schulman 2023, the MNIST experiment): how the length of
the task's horizon moves the scaling law.

The ``horizon`` axis holds ``h``, or a discount: an axis whose values all lie in [0, 1)
is read as ``gamma`` and converted to ``h = 1 / (1 - gamma)`` (on the MNIST bandit every
step is an independent problem and GAE lambda is 1, so the discount alone sets the
horizon the learner sees). The driver

1. runs the model-size study (:func:`analysis.scaling.study_curves`: curves, the
   compute-efficient frontier, optimal size vs compute, the intrinsic-performance law
   with bootstrap intervals over runs) for each horizon on its own;
2. tabulates and draws the exponents per horizon with their intervals: ``k`` in
   ``N_opt ~ C^k`` from the frontier law (sizes that are best somewhere on the measured
   compute-efficient frontier) and from the intrinsic law, with its ``alpha_N`` and
   ``alpha_E``; and ``N_opt(C)`` of the frontier law per horizon on one figure, over the
   measured compute range: the paper finds that the horizon mostly moves the coefficient,
   not the exponent;
3. measures the interactions needed to reach a return threshold ``J``: per run, the first
   interaction count at which its (isotonic) training curve reaches ``J``; per seed and
   horizon, the fewest over model sizes (the best size for that target); fits
   ``E_J(h) = a + b h`` by OLS over the (seed, horizon) points with t-intervals and draws
   it: the paper finds the interactions needed affine in the horizon. Thresholds:
   ``--threshold`` values, else 50% and 80% of the way from the first log point's mean
   return to the best mean return that every horizon reaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import curves, figures, scaling
from analysis.fitting import FitError, affine_intervals, fit_affine
from analysis.report import StudyResult
from analysis.study import Options, Study, attempt, finite, size_columns, slug

__all__ = ["horizon_values", "interactions_to_threshold", "default_thresholds", "run_study"]

INTRINSIC = "intrinsic performance (Hilton et al.)"
FRONTIER = "optimal size vs compute (frontier)"


def horizon_values(values: pd.Series) -> tuple[pd.Series, bool]:
    """``(h, from_discount)``: the axis as horizons; discounts in [0, 1) become 1/(1-gamma)."""
    v = pd.to_numeric(values, errors="coerce")
    if v.isna().any():
        raise FitError(f"horizon axis {values.name}: {int(v.isna().sum())} value(s) are not "
                       "numbers")
    if ((v >= 0) & (v < 1)).all():
        return 1.0 / (1.0 - v), True
    if (v < 1).any():
        raise FitError(f"horizon axis {values.name}: values below 1 that are not all "
                       "discounts in [0, 1)")
    return v.astype(float), False


def interactions_to_threshold(df: pd.DataFrame, metric: str, threshold: float, *,
                              size_col: str, seed_col: str, xdata: str = "env_steps"
                              ) -> pd.DataFrame:
    """Per run: the first ``xdata`` at which the monotone (isotonic) curve of ``metric``
    reaches ``threshold``; then per (horizon, seed) the fewest over sizes. Returns the
    per-run table (``horizon``, ``seed``, ``size``, ``E_J``) with the per-(horizon, seed)
    minimum in ``best`` (True on the row that is it)."""
    runs = curves.to_threshold(df, threshold, metric, x=xdata, by=["run_dir"], monotone=True)
    keys = df.groupby("run_dir").first()[["horizon", size_col, seed_col]]
    runs = runs.join(keys, on="run_dir").rename(columns={size_col: "size", seed_col: "seed",
                                                         "D_J": "E_J"})
    runs["best"] = False
    reached = runs[runs["reached"]]
    if not reached.empty:
        idx = reached.groupby(["horizon", "seed"])["E_J"].idxmin()
        runs.loc[idx, "best"] = True
    return runs[["run_dir", "horizon", "seed", "size", "E_J", "reached", "best"]]


def default_thresholds(df: pd.DataFrame, metric: str, xdata: str,
                       fractions: Sequence[float] = (0.5, 0.8)) -> list[float]:
    """Return levels every horizon reaches: ``fractions`` of the way from the mean return at
    the first log point to the lowest, over horizons, of the best seed-mean return."""
    avg = curves.average_seeds(df, xdata, metric, by=["horizon", "size"])
    start = float(avg.sort_values(xdata).groupby(["horizon", "size"])[metric].first().mean())
    top = float(avg.groupby("horizon")[metric].max().min())
    if not top > start:
        raise FitError(f"no horizon's {metric} rises above its start ({start:.3g})")
    return [round(start + f * (top - start), 3) for f in fractions]


def run_study(st: StudyResult, df: pd.DataFrame, spec: Study, metric: str, out: Path,
              opts: Options) -> None:
    """The ``horizon`` study (module docstring)."""
    h_key = spec.axes.get("horizon")
    if not h_key or h_key not in df:
        raise FitError("the study declares no `horizon` axis found in the records")
    df = df.copy()
    df["horizon"], from_gamma = horizon_values(df[h_key])
    if from_gamma:
        st.notes.append(f"horizon axis `{h_key}` holds discounts: h = 1 / (1 - gamma)")
    hs = sorted(df["horizon"].unique())
    st.context["horizons"] = ", ".join(figures.fmt_num(h) for h in hs)
    if len(hs) < 2:
        raise FitError(f"one horizon only ({hs[0]:g}); the study needs several")
    axes = {r: c for r, c in spec.axes.items() if r != "horizon"}
    n_col, size_col, _ = size_columns(df, axes)
    xdata = curves.data_column(df)
    seed_col = axes.get("seed", "seed")
    if seed_col not in df:
        df["seed"], seed_col = df["run_dir"], "seed"

    # 1. the model-size study at each horizon
    fits: dict[float, object] = {}
    frontier: dict[float, object] = {}
    for h in hs:
        sub = StudyResult(key=f"{st.key}/h={figures.fmt_num(h)}", study="scaling",
                          experiment=f"{st.experiment} (h = {figures.fmt_num(h)})", title="")
        d = df[df["horizon"] == h]
        attempt(st, f"h={figures.fmt_num(h)}: model-size study", lambda s=sub, d=d:
                scaling.study_curves(s, d, metric, out, frontier=True, n_boot=opts.n_boot,
                                     axes=axes))
        st.figures += sub.figures
        for kind in ("fits", "skipped", "tables"):
            for name, v in getattr(sub, kind).items():
                getattr(st, kind)[f"h={figures.fmt_num(h)}: {name}"] = v
        if INTRINSIC in sub.fits:
            fits[h] = sub.fits[INTRINSIC]
        if FRONTIER in sub.fits:
            frontier[h] = sub.fits[FRONTIER]

    # 2. exponents and N_opt(C) across horizons
    if fits or frontier:
        rows = []
        for h in hs:
            row: dict[str, object] = {"horizon h": h}
            for label, fit, params in (("frontier", frontier.get(h), ("k",)),
                                       ("intrinsic", fits.get(h), ("k", "alpha_N", "alpha_E"))):
                for p in params:
                    lo, hi = fit.ci.get(p, (np.nan, np.nan)) if fit else (np.nan, np.nan)
                    row[f"{p} ({label})"] = fit.params[p] if fit else np.nan
                    row[f"{p} ({label}) interval"] = f"[{lo:.3g}, {hi:.3g}]"
            rows.append(row)
        st.tables["exponents per horizon"] = pd.DataFrame(rows)

        def series(source: dict, p: str) -> tuple[np.ndarray, ...]:
            return tuple(np.array([source[h].params[p] if i == 0 else source[h].ci[p][i - 1]
                                   if h in source else np.nan for h in hs]) for i in range(3))

        shown = {}
        if frontier:
            shown["k, frontier law (N_opt ~ C^k)"] = series(frontier, "k")
        if fits:
            shown["k, intrinsic law"] = series(fits, "k")
            shown["alpha_E, intrinsic law"] = series(fits, "alpha_E")
            shown["alpha_N, intrinsic law"] = series(fits, "alpha_N")
        st.figures += figures.plot_estimates(
            np.array(hs, dtype=float), shown, out, f"{slug(st.key)}_exponents_vs_horizon",
            title=f"{st.experiment}: exponents vs horizon",
            xlabel="horizon h", ylabel="exponent (95% interval)")
    if frontier:
        flops = pd.to_numeric(df["flops"], errors="coerce")
        C = np.logspace(np.log10(flops[flops > 0].min()), np.log10(flops.max()), 40)
        st.figures += figures.plot_lines(
            {f"h = {figures.fmt_num(h)}": (C, f.params["c"] * C ** f.params["k"])
             for h, f in frontier.items()}, out, f"{slug(st.key)}_n_opt_vs_compute",
            title=f"{st.experiment}: optimal model size vs compute per horizon (frontier)",
            xlabel="training FLOPs C", ylabel="N_opt (parameters)")

    # 3. interactions to threshold, affine in the horizon
    d = finite(df, [xdata, metric])
    d["size"] = pd.to_numeric(d[size_col] if size_col else d[n_col], errors="coerce")
    thresholds = list(opts.thresholds) if opts.thresholds else attempt(
        st, "thresholds", lambda: default_thresholds(d, metric, xdata))
    for J in thresholds or []:
        attempt(st, f"interactions to {metric} >= {J:g} vs horizon",
                lambda J=J: _affine_threshold(st, d, metric, J, seed_col, xdata, out))


def _affine_threshold(st: StudyResult, d: pd.DataFrame, metric: str, J: float, seed_col: str,
                      xdata: str, out: Path) -> None:
    per_run = interactions_to_threshold(d, metric, J, size_col="size", seed_col=seed_col,
                                        xdata=xdata)
    best = per_run[per_run["best"]]
    missing = sorted(set(per_run["horizon"]) - set(best["horizon"]))
    if missing:
        raise FitError(f"no run reaches {J:g} at horizon(s) "
                       + ", ".join(figures.fmt_num(h) for h in missing))
    fit = fit_affine(best["horizon"], best["E_J"], law="affine")
    fit.extra["form"] = f"E_J = a + b h (interactions to {metric} >= {J:g}, best size)"
    fit.used = [float(h) for h in sorted(best["horizon"].unique())]
    st.fits[f"interactions to {metric} >= {J:g} (affine in h)"] = fit
    table = per_run.pivot_table(index="horizon", columns="size", values="E_J", aggfunc="mean")
    table.columns = [f"size {figures.fmt_num(c)}" for c in table.columns]
    table.insert(0, "best (mean over seeds)", best.groupby("horizon")["E_J"].mean())
    st.tables[f"interactions to {metric} >= {J:g} (mean over seeds)"] = table.reset_index()
    hx = np.linspace(0, float(best["horizon"].max()) * 1.05, 50)
    band = affine_intervals(fit, hx)
    points = {"best size": (best["horizon"].to_numpy(float), best["E_J"].to_numpy(float))}
    for s, g in per_run[per_run["reached"]].groupby("size"):
        points[f"size {figures.fmt_num(s)}"] = (g["horizon"].to_numpy(float),
                                                g["E_J"].to_numpy(float))
    a, b = fit.params["a"], fit.params["b"]
    st.figures += figures.plot_affine(
        points, out, f"{slug(st.key)}_interactions_to_{slug(f'{J:g}')}_vs_horizon",
        fit_x=hx, fit_y=band["y"], band=(band["conf_low"], band["conf_high"]),
        fit_label=f"E = {a:.3g} + {b:.3g} h", highlight="best size",
        title=f"{st.experiment}: interactions to {metric} >= {J:g}",
        xlabel="horizon h = 1/(1 - gamma)", ylabel="interactions (env steps)")
