"""Clean learning curves from the tidy table before any law is fitted.

Every function takes and returns plain arrays or tidy frames (one row per log point), so
a study can chain them: drop the warm-up, smooth, average seeds, make monotone, then read
off the data and compute to reach a threshold or the value at given FLOP budgets.
Nothing here fits a law; fits live in ``analysis.fitting`` and the study modules.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize

try:  # scipy >= 1.12
    from scipy.optimize import isotonic_regression as _scipy_isotonic
except ImportError:  # pragma: no cover - older scipy: the pure-Python loop below
    _scipy_isotonic = None

# Config columns that never define a distinct configuration: seeds (seed averaging groups
# over them), logging and launcher settings, and paths.
IGNORED_CONFIG = re.compile(
    r"(^|\.)(seed|seeds)$|^(logger|hydra|paths|launcher|wandb)\.|(_dir|\.dir|_path|\.path)$"
    r"|(^|\.)(device|num_workers|resume|name_suffix)$"
)
# Dotted columns that are not config keys, never part of a configuration's identity:
# run.json fields (a declared study, per-role network sizes, versions) and the per-role
# FLOP counters of the metrics lines (``flops.<role>``).
META_PREFIXES = ("params.", "flops_per_forward.", "versions.", "study.", "networks.", "flops.")


def config_columns(table: pd.DataFrame) -> list[str]:
    """The flattened config columns of a tidy table (dotted, not ``run.json`` fields)."""
    return [c for c in table.columns
            if "." in c and not c.startswith(META_PREFIXES) and not IGNORED_CONFIG.search(c)]


def varying(table: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns among ``columns`` that take more than one value across runs."""
    if table.empty:
        return []
    per_run = table.drop_duplicates("run_dir") if "run_dir" in table else table
    return [c for c in columns if c in per_run and per_run[c].astype(str).nunique() > 1]


def config_id(table: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.Series:
    """A readable configuration label per row, e.g. ``"model.width=0.5"``.

    Built from ``experiment`` and the config columns that vary in ``table`` (seeds and
    logging settings excluded), so runs that differ only by seed share a label.
    """
    if columns is None:
        columns = varying(table, config_columns(table))
    parts = []
    if "experiment" in table:
        parts.append(table["experiment"].astype(str))
    for c in columns:
        parts.append(c + "=" + table[c].astype(str))
    if not parts:
        return pd.Series(["all"] * len(table), index=table.index)
    label = parts[0]
    for p in parts[1:]:
        label = label + "," + p
    return label


def data_column(table: pd.DataFrame) -> str:
    """The data axis: ``env_steps`` (interactions) for RL, ``samples`` where no env steps
    were taken (behavioural cloning on a fixed dataset)."""
    if "env_steps" in table and (pd.to_numeric(table["env_steps"], errors="coerce") > 0).any():
        return "env_steps"
    return "samples"


def smooth(y: Sequence[float], window: int = 5) -> np.ndarray:
    """Centred moving average over ``window`` log points; the window shrinks at the ends
    and skips NaNs, so the curve keeps its length and is not shifted (an EMA would lag,
    which would bias threshold crossings late)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or y.size == 0:
        return y.copy()
    return (pd.Series(y).rolling(window, center=True, min_periods=1).mean()).to_numpy()


def smooth_runs(df: pd.DataFrame, y: str, window: int = 5, by: str = "run_dir",
                x: str = "env_steps") -> pd.DataFrame:
    """``smooth`` applied to column ``y`` within each run (sorted by ``x``)."""
    df = df.sort_values([by, x]).copy()
    df[y] = df.groupby(by, sort=False)[y].transform(lambda s: smooth(s.to_numpy(), window))
    return df


def drop_warmup(
    df: pd.DataFrame,
    x: str = "env_steps",
    frac: float = 1 / 64,
    total: str | float | None = None,
    by: str = "run_dir",
) -> pd.DataFrame:
    """Drop the log points in the first ``frac`` of training (Hilton et al. drop 1/64).

    ``total`` is the length of training: a number, a column (e.g. ``algo.total_steps``,
    right for runs still going), or ``None`` for each run's largest ``x``.
    """
    if df.empty:
        return df
    if total is None:
        length = df.groupby(by)[x].transform("max")
    elif isinstance(total, str):
        length = pd.to_numeric(df[total], errors="coerce")
        length = length.fillna(df.groupby(by)[x].transform("max"))
    else:
        length = pd.Series(float(total), index=df.index)
    return df[df[x] >= frac * length].copy()


def average_seeds(
    df: pd.DataFrame,
    x: str,
    y: str,
    by: str | Sequence[str] = "config_id",
    run: str = "run_dir",
) -> pd.DataFrame:
    """Average ``y`` over the runs (seeds) of each group on the union of their ``x``.

    Each run is linearly interpolated at the group's log points inside its own range
    (never extrapolated), so a seed that stopped early only contributes where it has data.
    Returns ``by`` columns, ``x``, ``y`` (mean), ``y_sem`` (standard error, NaN for one
    seed) and ``n_seeds`` (how many runs contributed at that point).
    """
    by = [by] if isinstance(by, str) else list(by)
    out = []
    clean = df.dropna(subset=[x, y])
    for key, group in clean.groupby(by, sort=True):
        grid = np.unique(group[x].to_numpy(float))
        vals = []
        for _, r in group.groupby(run, sort=False):
            r = r.sort_values(x)
            rx, ry = r[x].to_numpy(float), r[y].to_numpy(float)
            v = np.interp(grid, rx, ry)
            v[(grid < rx[0]) | (grid > rx[-1])] = np.nan
            vals.append(v)
        vals = np.vstack(vals)
        n = np.sum(~np.isnan(vals), axis=0)
        with warnings.catch_warnings():  # all-NaN columns are expected at the edges
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(vals, axis=0)
            sd = np.nanstd(vals, axis=0, ddof=1)
        sd[n < 2] = np.nan
        frame = pd.DataFrame({x: grid, y: mean, f"{y}_sem": sd / np.sqrt(np.maximum(n, 1)),
                              "n_seeds": n})
        key = key if isinstance(key, tuple) else (key,)
        for col, val in zip(by, key, strict=True):
            frame.insert(0, col, val)
        out.append(frame)
    if not out:
        return pd.DataFrame(columns=[*by, x, y, f"{y}_sem", "n_seeds"])
    return pd.concat(out, ignore_index=True)


def isotonic(
    y: Sequence[float],
    x: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
    increasing: bool = True,
) -> np.ndarray:
    """Least-squares monotone fit (pool adjacent violators), aligned with the input.

    Used as Rybkin et al. do: returns vs data (or compute) are made non-decreasing before
    reading off when a threshold is first crossed, so noise cannot cross it early.
    ``x`` orders the points (default: as given); NaNs are passed through.
    """
    y = np.asarray(y, dtype=float)
    order = np.argsort(np.asarray(x, dtype=float), kind="stable") if x is not None \
        else np.arange(y.size)
    w_all = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    ys, ws = y[order], w_all[order]
    ok = ~np.isnan(ys)
    fitted = np.full_like(ys, np.nan)
    sign = 1.0 if increasing else -1.0
    if _scipy_isotonic is not None:  # same algorithm (PAVA) in compiled code
        fitted[ok] = _scipy_isotonic(ys[ok], weights=ws[ok], increasing=increasing).x
        result = np.empty_like(fitted)
        result[order] = fitted
        return result
    vals: list[float] = []
    wts: list[float] = []
    counts: list[int] = []
    for v, w in zip(sign * ys[ok], ws[ok], strict=True):
        c = 1
        while vals and vals[-1] > v:  # merge blocks while they violate the order
            pv, pw, pc = vals.pop(), wts.pop(), counts.pop()
            v = (pv * pw + v * w) / (pw + w)
            w, c = w + pw, c + pc
        vals.append(v)
        wts.append(w)
        counts.append(c)
    fitted[ok] = sign * np.repeat(vals, counts)
    result = np.empty_like(fitted)
    result[order] = fitted
    return result


def monotone_piecewise_linear(
    y: Sequence[float],
    x: Sequence[float],
    *,
    n_knots: int = 12,
    increasing: bool = True,
) -> np.ndarray:
    """Least-squares monotone fit restricted to piecewise-linear functions of ``x``.

    The isotonic regression of :func:`isotonic` on a knot grid: ``f(x) = c0 + sum_j w_j
    r_j(x)`` with ramps ``r_j`` rising from 0 to 1 between ``n_knots + 1`` equally spaced
    knots over the range of ``x`` and ``w_j >= 0`` (``<= 0`` when decreasing), solved by
    non-negative least squares. Unlike PAVA, whose fitted values depend only on the *order*
    of ``x``, this fit moves continuously with ``x``; so a loss profiled over it is continuous
    in whatever parameters produce ``x`` and an optimiser can follow it. Returns the fitted
    values aligned with the input (all finite inputs required).
    """
    yv = np.asarray(y, dtype=float)
    xv = np.asarray(x, dtype=float)
    lo, hi = float(xv.min()), float(xv.max())
    if not hi > lo:
        return np.full_like(yv, yv.mean())
    width = (hi - lo) / n_knots
    ramps = np.clip((xv[:, None] - (lo + width * np.arange(n_knots))[None, :]) / width, 0, 1)
    centred = ramps - ramps.mean(axis=0)  # c0 is profiled out by centring
    sign = 1.0 if increasing else -1.0
    w, _ = optimize.nnls(sign * centred, yv - yv.mean())
    return yv.mean() + sign * centred @ w


def _crossing(x: np.ndarray, y: np.ndarray, threshold: float, above: bool):
    """Index i and fraction t such that the crossing lies at x[i-1] + t (x[i] - x[i-1])."""
    hit = y >= threshold if above else y <= threshold
    if not hit.any():
        return None
    i = int(np.argmax(hit))
    if i == 0:
        return 0, 1.0
    dy = y[i] - y[i - 1]
    t = 1.0 if dy == 0 else float((threshold - y[i - 1]) / dy)
    return i, min(max(t, 0.0), 1.0)


def first_crossing(
    x: Sequence[float],
    y: Sequence[float],
    threshold: float,
    above: bool = True,
) -> float:
    """First ``x`` at which ``y`` reaches ``threshold`` (``>=``; ``<=`` with
    ``above=False``, e.g. a loss), linearly interpolated between the two log points around
    it. Returns ``x[0]`` if the first point already reaches it and NaN if none does."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    c = _crossing(x, y, threshold, above)
    if c is None:
        return float("nan")
    i, t = c
    return float(x[0]) if i == 0 else float(x[i - 1] + t * (x[i] - x[i - 1]))


def to_threshold(
    curves: pd.DataFrame,
    threshold: float,
    y: str,
    x: str = "env_steps",
    compute: str = "flops",
    by: str | Sequence[str] = "config_id",
    monotone: bool = True,
    above: bool = True,
) -> pd.DataFrame:
    """Data ``D_J`` and compute ``C_J`` at which each group's curve first reaches ``J``.

    With ``monotone`` the curve is first made monotone by isotonic regression on ``x``.
    ``C_J`` is interpolated at the same point between the two log points as ``D_J``.
    Returns ``by`` columns, ``D_J``, ``C_J``, ``reached`` and ``y_max`` (best value seen).
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in curves.dropna(subset=[x, y]).groupby(by, sort=True):
        g = g.sort_values(x)
        xs, ys = g[x].to_numpy(float), g[y].to_numpy(float)
        cs = g[compute].to_numpy(float) if compute in g else np.full_like(xs, np.nan)
        if monotone:
            ys = isotonic(ys, increasing=above)
        c = _crossing(xs, ys, threshold, above)
        d_j = c_j = float("nan")
        if c is not None:
            i, t = c
            j = max(i - 1, 0)
            d_j = float(xs[j] + t * (xs[i] - xs[j]))
            c_j = float(cs[j] + t * (cs[i] - cs[j]))
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "D_J": d_j, "C_J": c_j,
                     "reached": c is not None,
                     "y_max": float(np.nanmax(ys)) if above else float(np.nanmin(ys))})
    return pd.DataFrame(rows, columns=[*by, "D_J", "C_J", "reached", "y_max"])


def at_budgets(
    df: pd.DataFrame,
    budgets: Sequence[float],
    y: str,
    x: str = "flops",
    by: str = "run_dir",
    keep: Sequence[str] = (),
    log_x: bool = True,
) -> pd.DataFrame:
    """Each run's ``y`` interpolated at the given ``x`` budgets (isoFLOP profiles).

    Interpolates in ``log x`` (budgets and BC log points are log spaced) and only inside
    the run's logged range. Returns ``by``, the ``keep`` columns (constant per run, e.g.
    ``params.effective``), ``budget``, ``y`` and ``data`` (the data axis at that budget).
    """
    budgets = np.asarray(sorted(budgets), dtype=float)
    dcol = data_column(df) if not df.empty else "samples"
    rows = []
    for key, g in df.dropna(subset=[x, y]).groupby(by, sort=True):
        g = g[g[x] > 0].sort_values(x) if log_x else g.sort_values(x)
        if len(g) < 2:
            continue
        xs = g[x].to_numpy(float)
        tx = np.log(xs) if log_x else xs
        tb = np.log(budgets) if log_x else budgets
        inside = (budgets >= xs[0]) & (budgets <= xs[-1])
        if not inside.any():
            continue
        yv = np.interp(tb[inside], tx, g[y].to_numpy(float))
        data = pd.to_numeric(g[dcol], errors="coerce").to_numpy(float)
        if log_x and np.all(data > 0):  # data ~ flops / (k N): linear in log-log space
            dv = np.exp(np.interp(tb[inside], tx, np.log(data)))
        else:
            dv = np.interp(tb[inside], tx, data)
        const = {c: g[c].iloc[0] for c in keep if c in g}
        for b, v, d in zip(budgets[inside], yv, dv, strict=True):
            rows.append({by: key, **const, "budget": b, y: v, "data": d})
    return pd.DataFrame(rows, columns=[by, *keep, "budget", y, "data"])


def efficient_frontier(
    curves: pd.DataFrame,
    x: str,
    y: str,
    by: str,
    n_grid: int = 200,
    maximize: bool = True,
    cumulative: bool = False,
) -> pd.DataFrame:
    """Compute-efficient frontier: the best ``y`` over groups (e.g. widths) at each ``x``.

    Curves are interpolated in log ``x`` on a shared log grid, each only inside its range.
    With ``cumulative`` each group's curve is first replaced by its running best and held at
    its final value beyond its last point: the best ``y`` reachable with a budget of at most
    ``x`` (a run can stop early), so the frontier never decreases as the budget grows.
    Returns ``x``, ``y``, ``by`` (which group is best there) and ``n_groups`` (how many
    groups were compared at that ``x``).
    """
    c = curves.dropna(subset=[x, y])
    c = c[c[x] > 0]
    if c.empty:
        return pd.DataFrame(columns=[x, y, by, "n_groups"])
    grid = np.geomspace(c[x].min(), c[x].max(), n_grid)
    labels, table = [], []
    for key, g in c.groupby(by, sort=True):
        g = g.sort_values(x)
        xs = g[x].to_numpy(float)
        ys = g[y].to_numpy(float)
        if cumulative:
            ys = np.maximum.accumulate(ys) if maximize else np.minimum.accumulate(ys)
        v = np.interp(np.log(grid), np.log(xs), ys)
        v[grid < xs[0]] = np.nan
        if not cumulative:
            v[grid > xs[-1]] = np.nan
        labels.append(key)
        table.append(v)
    vals = np.vstack(table)
    filled = np.where(np.isnan(vals), -np.inf if maximize else np.inf, vals)
    best = np.argmax(filled, axis=0) if maximize else np.argmin(filled, axis=0)
    have = ~np.all(np.isnan(vals), axis=0)
    return pd.DataFrame({
        x: grid[have],
        y: vals[best, np.arange(grid.size)][have],
        by: np.asarray(labels, dtype=object)[best][have],
        "n_groups": np.sum(~np.isnan(vals), axis=0)[have],
    })
