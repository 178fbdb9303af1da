"""Figures in one style: every plot goes through ``figure_style`` and ``save``.

The functions take prepared arrays and frames (the pipeline computes curves and fits) and
write ``NAME.png`` and ``NAME.pdf``. Conventions: log axes wherever a law is a power law,
one viridis colour per model size ordered by log size, legends that name the sizes,
fitted laws as lines with their confidence band, held-out points as open markers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FORMATS = ("png", "pdf")
STYLE: dict[str, Any] = {
    "figure.figsize": (6.4, 4.4),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "image.cmap": "viridis",
}
FIT_COLOR = "black"
BAND_ALPHA = 0.18


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """The one figure style (rcParams) for every analysis figure."""
    with plt.rc_context(STYLE):
        yield


def size_colors(sizes: Sequence[float], cmap: str = "viridis") -> dict[float, Any]:
    """One colour per model size, spaced by log size so 1/64x..8x read as a gradient."""
    uniq = sorted({float(s) for s in sizes if s is not None and np.isfinite(s)})
    if not uniq:
        return {}
    cm = plt.get_cmap(cmap)
    logs = np.log(np.maximum(uniq, 1e-300))
    span = logs.max() - logs.min()
    pos = (logs - logs.min()) / span if span > 0 else np.full(len(uniq), 0.5)
    # stop short of viridis' pale yellow end, which vanishes on white
    return {s: cm(0.05 + 0.85 * p) for s, p in zip(uniq, pos, strict=True)}


def fmt_num(v: float) -> str:
    """Short human label: 0.25, 4, 1.2e+06."""
    if v is None or not np.isfinite(v):
        return "nan"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-2):
        return f"{v:.2g}"
    return f"{v:g}"


def save(fig: plt.Figure, out_dir: str | Path, name: str,
         formats: Sequence[str] | None = None) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.{png,pdf}`` (``formats``, default the module's
    ``FORMATS``), close it, and return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats or FORMATS:
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path)
        paths.append(path)
    plt.close(fig)
    return paths


def finish(fig: plt.Figure, ax, out_dir: str | Path, name: str, *, xlabel: str, ylabel: str,
           title: str, logx: bool = True, logy: bool = False, legend: dict | None = None
           ) -> list[Path]:
    """The one way every figure ends: scales, labels, title, legend (None: none), save."""
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend is not None:
        ax.legend(loc="best", **legend)
    return save(fig, out_dir, name)


def plot_extrapolation(
    budgets: np.ndarray,
    targets: np.ndarray,
    forecasts: Mapping[str, Sequence[tuple[float, float]]],
    out_dir: str | Path,
    name: str,
    *,
    title: str,
    xlabel: str = "compute C (FLOPs)",
    ylabel: str = "best loss at C",
) -> list[Path]:
    """Extrapolation check: the measured value per budget, and each method's forecast of the
    budgets it was not fitted on (``forecasts[method] = [(budget, predicted), ...]``)."""
    with figure_style():
        fig, ax = plt.subplots()
        ax.plot(budgets, targets, "o", color=FIT_COLOR, label="measured", zorder=3)
        markers = "sD^vP"
        for i, (method, pts) in enumerate(forecasts.items()):
            if len(pts):
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, markers[i % len(markers)], mfc="none", ms=8, color=f"C{i}",
                        label=f"{method} (forecast)")
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logy=True, legend={"fontsize": "small"})


def _band(ax, x, low, high, color=FIT_COLOR) -> None:
    if low is not None and high is not None:
        ax.fill_between(x, low, high, color=color, alpha=BAND_ALPHA, linewidth=0)


def plot_curves(
    curves: pd.DataFrame,
    x: str,
    y: str,
    size: str,
    out_dir: str | Path,
    name: str,
    *,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    size_label: str = "width",
    frontier: pd.DataFrame | None = None,
    logx: bool = True,
) -> list[Path]:
    """Seed-averaged learning curves, one colour per model size, with the s.e.m. band and
    (optionally) the compute-efficient frontier as a dashed black line."""
    with figure_style():
        fig, ax = plt.subplots()
        colors = size_colors(curves[size].astype(float))
        for s, g in curves.groupby(size, sort=True):
            g = g.sort_values(x)
            c = colors.get(float(s))
            n = int(g["n_seeds"].max()) if "n_seeds" in g else 1
            ax.plot(g[x], g[y], color=c, label=f"{size_label} {fmt_num(float(s))} (n={n})")
            sem = f"{y}_sem"
            if sem in g and g[sem].notna().any():
                ax.fill_between(g[x], g[y] - g[sem], g[y] + g[sem], color=c, alpha=BAND_ALPHA,
                                linewidth=0)
        if frontier is not None and not frontier.empty:
            ax.plot(frontier[x], frontier[y], "--", color=FIT_COLOR, lw=1.2,
                    label="efficient frontier")
        return finish(fig, ax, out_dir, name, xlabel=xlabel or x, ylabel=ylabel or y,
                      title=title, logx=logx, legend={})


def plot_power_law(
    x: np.ndarray,
    y: np.ndarray,
    out_dir: str | Path,
    name: str,
    *,
    fit_x: np.ndarray | None = None,
    fit_y: np.ndarray | None = None,
    band: tuple[np.ndarray, np.ndarray] | None = None,
    heldout: tuple[np.ndarray, np.ndarray] | None = None,
    forecast: Mapping[str, float] | None = None,
    point_labels: Sequence[str] | None = None,
    colors: Sequence[Any] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    fit_label: str = "fit",
    logy: bool = True,
) -> list[Path]:
    """Points, a fitted law with its band, held-out points (open markers: the
    extrapolation check) and a forecast with its interval, on log-log axes."""
    with figure_style():
        fig, ax = plt.subplots()
        if fit_x is not None and fit_y is not None:
            if band is not None:
                _band(ax, fit_x, band[0], band[1])
            ax.plot(fit_x, fit_y, "-", color=FIT_COLOR, lw=1.2, label=fit_label)
        ax.scatter(x, y, c=colors if colors is not None else "C0", s=28, zorder=3,
                   label="fitted points")
        if point_labels is not None:
            for xi, yi, lab in zip(x, y, point_labels, strict=True):
                ax.annotate(lab, (xi, yi), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
        if heldout is not None and len(heldout[0]):
            ax.scatter(heldout[0], heldout[1], facecolors="none", edgecolors="C3", s=40,
                       zorder=3, label="held out (not fitted)")
        if forecast is not None:
            fx, fy = forecast["x"], forecast["y"]
            lo, hi = forecast.get("low", fy), forecast.get("high", fy)
            ax.errorbar([fx], [fy], yerr=[[max(fy - lo, 0)], [max(hi - fy, 0)]], fmt="D",
                        color="C1", capsize=3, zorder=4, label=forecast.get("label", "forecast"))
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logy=logy, legend={})


def plot_isoflop(
    profiles: pd.DataFrame,
    size: str,
    y: str,
    out_dir: str | Path,
    name: str,
    *,
    parabolas: Mapping[float, Mapping[str, float]] | None = None,
    title: str = "",
    xlabel: str = "parameters N",
    ylabel: str | None = None,
) -> list[Path]:
    """isoFLOP profiles: ``y`` vs model size at each budget (one colour per budget), each
    with its parabola in ``u = log N`` and its optimum marked.

    ``parabolas[budget] = {"a", "b", "c"}`` with optional ``"space"`` (``"linear"``:
    ``y = a u^2 + b u + c``; ``"log"``: ``log y = a u^2 + b u + c``, drawn as ``exp`` of it on
    a log y axis) and ``"N_lo"``, ``"N_hi"`` (the window of sizes the parabola was fitted
    on; it is drawn only there, default all sizes of the budget)."""
    with figure_style():
        fig, ax = plt.subplots()
        budgets = sorted(profiles["budget"].unique())
        colors = size_colors(budgets, cmap="plasma")
        any_log = False
        for b in budgets:
            g = profiles[profiles["budget"] == b].sort_values(size)
            c = colors[float(b)]
            ax.plot(g[size], g[y], "o", color=c, label=f"C = {fmt_num(float(b))}")
            p = (parabolas or {}).get(float(b))
            if not p:
                continue
            log_space = p.get("space") == "log"
            any_log |= log_space
            lo = p.get("N_lo") if np.isfinite(p.get("N_lo", np.nan)) else g[size].min()
            hi = p.get("N_hi") if np.isfinite(p.get("N_hi", np.nan)) else g[size].max()
            lx = np.linspace(np.log(lo), np.log(hi), 100)

            def curve(u, p=p, log_space=log_space):
                q = p["a"] * u**2 + p["b"] * u + p["c"]
                return np.exp(q) if log_space else q

            ax.plot(np.exp(lx), curve(lx), "-", color=c, lw=1.0)
            if p["a"] != 0:
                lopt = -p["b"] / (2 * p["a"])
                ax.plot([np.exp(lopt)], [curve(lopt)], "*", color=c, ms=10, mec="black",
                        mew=0.5)
        if any_log:
            ax.set_yscale("log")
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel or y, title=title,
                      legend={"ncol": 2})


def plot_pareto(
    points: pd.DataFrame,
    x: str,
    y: str,
    group: str,
    out_dir: str | Path,
    name: str,
    *,
    frontier: pd.DataFrame | None = None,
    fit_curve: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    group_label: str = "",
) -> list[Path]:
    """Data-compute trade-off: one point per configuration coloured by ``group`` (e.g.
    the UTD ratio), the empirical Pareto frontier and the fitted frontier if given."""
    with figure_style():
        fig, ax = plt.subplots()
        colors = size_colors(points[group].astype(float))
        for gval, g in points.groupby(group, sort=True):
            ax.scatter(g[x], g[y], color=colors.get(float(gval)), s=24,
                       label=f"{group_label} {fmt_num(float(gval))}")
        if frontier is not None and not frontier.empty:
            f = frontier.sort_values(x)
            ax.step(f[x], f[y], where="post", color="0.4", lw=1.0, label="Pareto frontier")
        if fit_curve is not None:
            ax.plot(fit_curve[0], fit_curve[1], "-", color=FIT_COLOR, lw=1.2,
                    label="fitted frontier")
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logy=True, legend={})


def plot_scatter(
    x: np.ndarray,
    y: np.ndarray,
    out_dir: str | Path,
    name: str,
    *,
    color_by: np.ndarray | None = None,
    color_label: str = "",
    fit_curve: tuple[np.ndarray, np.ndarray] | None = None,
    fit_label: str = "fit",
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = True,
    logy: bool = False,
) -> list[Path]:
    """Scatter of one quantity against another (e.g. return vs intrinsic performance, or
    return vs loss), coloured by model size on a log colour scale, with a fitted curve."""
    with figure_style():
        fig, ax = plt.subplots()
        if color_by is not None:
            cb = np.asarray(color_by, dtype=float)
            sc = ax.scatter(x, y, c=np.log10(cb), s=14, cmap="viridis")
            cbar = fig.colorbar(sc, ax=ax)
            cbar.set_label(f"log10 {color_label}".strip())
        else:
            ax.scatter(x, y, s=14)
        if fit_curve is not None:
            ax.plot(fit_curve[0], fit_curve[1], "-", color=FIT_COLOR, lw=1.2, label=fit_label)
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logx=logx, logy=logy, legend={} if fit_curve is not None else None)


def plot_per_task(
    best: pd.DataFrame,
    col: str,
    lines: Mapping[str, np.ndarray],
    xg: np.ndarray,
    out_dir: str | Path,
    name: str,
    *,
    ylabel: str,
    title: str,
    xlabel: str = "UTD ratio sigma",
) -> list[Path]:
    """Best hyperparameter per sigma (``best``: columns ``task``, ``sigma``, ``col`` and
    optionally ``col_low``/``col_high``) with bootstrap bars and the fitted law
    (``lines[task]`` on the grid ``xg``), one colour per task, log-log."""
    with figure_style():
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
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logy=True, legend={"fontsize": "small"})


def plot_data_to_threshold(
    lines: Mapping[tuple[float, str], tuple[np.ndarray, np.ndarray, str]],
    points: Mapping[tuple[float, str], tuple[np.ndarray, np.ndarray]],
    thresholds: Sequence[float],
    tasks: Sequence[str],
    out_dir: str | Path,
    name: str,
    *,
    title: str,
    xlabel: str = "UTD ratio sigma",
    ylabel: str = "data to threshold D_J (env steps)",
) -> list[Path]:
    """Data to threshold vs UTD ratio: per (threshold J, task) the fitted law
    (``lines[(J, task)] = (x, y, label)``) and its points (``points[(J, task)] = (x, y)``);
    one colour per threshold, one line style and marker per task, log-log."""
    with figure_style():
        fig, ax = plt.subplots()
        for i, j in enumerate(thresholds):
            for ti, t in enumerate(tasks):
                if (j, t) not in lines:
                    continue
                x, y, label = lines[(j, t)]
                ax.plot(x, y, ["-", "--", ":", "-."][ti % 4], color=f"C{i}", label=label)
                if (j, t) in points:
                    px, py = points[(j, t)]
                    ax.plot(px, py, "osd^v"[ti % 5], color=f"C{i}", alpha=0.7)
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logy=True, legend={"fontsize": "small"})


def plot_law_comparison(
    x: np.ndarray,
    y: np.ndarray,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_dir: str | Path,
    name: str,
    *,
    heldout: tuple[np.ndarray, np.ndarray] | None = None,
    split: float | None = None,
    band: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ceiling: float | None = None,
    best: str | None = None,
    title: str = "",
    xlabel: str = "training FLOPs",
    ylabel: str = "",
) -> list[Path]:
    """Several laws on the same points (e.g. the saturating law and power laws on the
    best return vs compute): fitted points filled, held-out points open, one colour per law
    (``curves[law] = (x, y)``; solid up to ``split``, the largest budget fitted on, dashed
    beyond it), optional confidence bands per law, the metric's ``ceiling`` as a dotted line
    and the law that forecast the held-out points best marked in the legend; log x."""
    with figure_style():
        fig, ax = plt.subplots()
        for i, (law, (cx, cy)) in enumerate(curves.items()):
            cx, cy = np.asarray(cx, float), np.asarray(cy, float)
            color = f"C{i}"
            label = law + (" (best on held-out)" if law == best else "")
            if band is not None and law in band:
                _band(ax, cx, band[law][0], band[law][1], color=color)
            if split is None:
                ax.plot(cx, cy, "-", color=color, label=label)
                continue
            inside = cx <= split
            ax.plot(cx[inside], cy[inside], "-", color=color, label=label)
            ax.plot(cx[~inside], cy[~inside], "--", color=color)
        ax.scatter(x, y, color=FIT_COLOR, s=22, zorder=3, label="fitted points")
        if heldout is not None and len(heldout[0]):
            ax.scatter(heldout[0], heldout[1], facecolors="none", edgecolors=FIT_COLOR, s=40,
                       zorder=3, label="held out (not fitted)")
        if split is not None:
            ax.axvline(split, color="0.6", lw=0.8, ls=":")
        if ceiling is not None:
            ax.axhline(ceiling, color="0.4", lw=0.8, ls=":", label=f"ceiling {fmt_num(ceiling)}")
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      legend={"fontsize": "small"})


def plot_affine(
    points: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_dir: str | Path,
    name: str,
    *,
    fit_x: np.ndarray | None = None,
    fit_y: np.ndarray | None = None,
    band: tuple[np.ndarray, np.ndarray] | None = None,
    fit_label: str = "fit",
    highlight: str | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> list[Path]:
    """Points per series (``points[label] = (x, y)``; ``highlight`` drawn solid, the rest
    faint) and an affine law with its band, on linear axes (an affine law is a line there)."""
    with figure_style():
        fig, ax = plt.subplots()
        if fit_x is not None and fit_y is not None:
            if band is not None:
                _band(ax, fit_x, band[0], band[1])
            ax.plot(fit_x, fit_y, "-", color=FIT_COLOR, lw=1.2, label=fit_label)
        for i, (label, (x, y)) in enumerate(points.items()):
            strong = highlight is None or label == highlight
            ax.plot(x, y, "os^dv"[i % 5], color=f"C{i}", alpha=1.0 if strong else 0.35,
                    ms=6 if strong else 4, ls="none", label=label, zorder=3)
        ax.set_ylim(bottom=0)
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logx=False, legend={"fontsize": "small"})


def plot_estimates(
    x: np.ndarray,
    series: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    out_dir: str | Path,
    name: str,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = True,
) -> list[Path]:
    """Estimates with intervals against one variable (``series[label] = (value, low,
    high)``), e.g. a law's exponents per horizon; a missing interval draws no bar."""
    with figure_style():
        fig, ax = plt.subplots()
        x = np.asarray(x, dtype=float)
        for i, (label, (v, lo, hi)) in enumerate(series.items()):
            v, lo, hi = (np.asarray(a, dtype=float) for a in (v, lo, hi))
            err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
            err = np.where(np.isfinite(err), err, 0.0)
            shift = x * (1 + 0.03 * (i - (len(series) - 1) / 2)) if logx else x
            ax.errorbar(shift, v, yerr=err, fmt="os^d"[i % 4] + "-", color=f"C{i}",
                        capsize=3, label=label)
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logx=logx, legend={})


def plot_lines(
    lines: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_dir: str | Path,
    name: str,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> list[Path]:
    """Several curves on log-log axes, one colour each (e.g. optimal size vs compute per
    horizon)."""
    with figure_style():
        fig, ax = plt.subplots()
        for i, (label, (x, y)) in enumerate(lines.items()):
            ax.plot(x, y, color=plt.get_cmap("viridis")(0.05 + 0.85 * i / max(1, len(lines) - 1)),
                    label=label)
        return finish(fig, ax, out_dir, name, xlabel=xlabel, ylabel=ylabel, title=title,
                      logy=True, legend={"fontsize": "small"})
