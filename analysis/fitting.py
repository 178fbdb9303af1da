"""Fit primitives: one implementation of each statistical building block.

Every study's laws (:mod:`analysis.scaling`, :mod:`analysis.isoflop`, :mod:`analysis.utd`,
:mod:`analysis.generalization`) and the ``fit`` CLI are built from these:

- :func:`fit_loglog` -- ordinary least squares of ``log y`` on ``log x`` (``y = c x^k``) with
  t-based confidence intervals for the parameters and, through :func:`loglog_intervals`,
  confidence and prediction intervals for new ``x``.
- :func:`fit_power_offset` -- power law plus constant ``y = offset + c x^k``: bounded,
  multi-start least squares (log or linear residuals), delta-method (asymptotic) intervals or a
  bootstrap.
- :func:`fit_fixed_effects` -- one shared slope, one intercept per group (``y = c_g x^k`` in
  log-log space), OLS t-intervals.
- :func:`forecast_power` -- a fitted power law's value at new ``x`` with its interval.
- :func:`bootstrap` -- nonparametric bootstrap over points, runs or seeds (cluster resampling,
  optionally stratified).
- :func:`delta_method` -- first-order intervals for any smooth function of fitted parameters.
- :func:`rolling_cv` / :func:`holdout_largest` -- time-series style cross-validation that fits on
  the smaller budgets and scores on the held-out larger ones.
- :func:`fit_saturating` -- saturating law for bounded metrics (returns, success rates): a
  sigmoid in log compute with floor, asymptote, midpoint and slope; bounded multi-start least
  squares in R, delta-method intervals or a bootstrap. :func:`compare_saturating` (built on
  :func:`compare_holdout`) fits it and the power laws (:func:`fit_loglog`,
  :func:`fit_power_with_ceiling`) on all but the largest budgets and says which forecasts
  the held-out ones better.
- :func:`flag_log_zero` -- flags a log-parametrised positive parameter that ran to 0.

All fits return a :class:`FitResult`. Intervals are 95% (``level=0.95``) unless stated.
Errors a user can cause (too few points, non-positive values where logs are taken, NaNs) raise
:class:`FitError` with a one-line message naming the offending input.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from scipy import optimize, special, stats

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
    threadpool_limits = None

__all__ = [
    "FitResult",
    "FitError",
    "BootstrapResult",
    "CVResult",
    "as_array",
    "fit_loglog",
    "loglog_intervals",
    "fit_affine",
    "affine_intervals",
    "predict_power",
    "fit_power_offset",
    "power_offset_intervals",
    "forecast_power",
    "fit_fixed_effects",
    "predict_fixed_effects",
    "bootstrap",
    "delta_method",
    "rolling_cv",
    "holdout_largest",
    "fit_saturating",
    "predict_saturating",
    "saturating_intervals",
    "fit_power_with_ceiling",
    "bounded_metric_laws",
    "compare_holdout",
    "compare_saturating",
    "HoldoutComparison",
    "flag_log_zero",
    "LOG_ZERO",
    "t_quantile",
    "FIT_FAILURES",
    "one_line",
    "safe_exp",
]

LEVEL = 0.95

_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run BLAS single-threaded inside the block.

    The fits here make thousands of tiny BLAS calls (L-BFGS-B, trust-region steps); with a
    multi-threaded OpenBLAS on a busy machine each call waits for its spinning threads,
    which measured 30x slower on the 2-core development box.
    """
    if threadpool_limits is None:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def single_blas_thread(fn: _F) -> _F:
    """Decorator form of :func:`one_blas_thread` for the optimiser-heavy fits."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_blas_thread():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- result type


BOUND_RTOL = 1e-6  # a parameter this close (relative, or absolute near 0) to a bound is "at" it
ZERO_WIDTH_RTOL = 1e-12  # an interval narrower than this (relative) has zero width


@dataclass
class FitResult:
    """Outcome of one fit.

    ``params`` holds point estimates by name; ``ci`` holds ``(low, high)`` at ``extra["level"]``
    (95% unless stated). ``loss`` is the final value of the objective that was minimised (its
    definition is law-specific and stated in each fit's docstring). ``extra`` carries
    law-specific detail (covariances, per-budget parabolas, bootstrap draws...). Keys of
    ``extra`` starting with ``_`` hold large or non-JSON objects (e.g. bootstrap draws) and are
    left out of :meth:`to_json`.

    Saying what was used: ``used`` lists the groups the fit used (budgets, sizes, tasks...;
    labels or numbers) and ``dropped`` each group left out as ``{"what": label, "reason":
    one line}``. ``bounds`` gives the box a parameter was constrained to during the fit
    (``name -> (low, high)``, either side may be infinite). ``flags`` are one-line warnings
    that make an estimate or interval less informative than it looks; on construction a
    parameter within ``BOUND_RTOL`` of a finite bound and an interval of zero width are
    flagged automatically, and a fit may add its own.
    """

    law: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_points: int
    loss: float
    extra: dict[str, Any] = field(default_factory=dict)
    used: list[Any] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._auto_flags: list[str] = []
        self.check()

    def check(self) -> None:
        """(Re)compute the automatic flags: a parameter within ``BOUND_RTOL`` of a finite
        bound, an interval of zero width. Runs on construction; call it again after
        replacing ``params``, ``ci`` or ``bounds`` (e.g. bootstrap intervals replacing
        delta-method ones): the automatic flags of the old values are withdrawn, flags added
        with :meth:`flag` are kept."""
        for message in self._auto_flags:
            if message in self.flags:
                self.flags.remove(message)
        self._auto_flags = []
        for name, (low, high) in self.bounds.items():
            value = self.params.get(name)
            if value is None or not math.isfinite(value):
                continue
            for side, bound in (("lower", low), ("upper", high)):
                if bound is not None and math.isfinite(bound) and math.isclose(
                        value, bound, rel_tol=BOUND_RTOL, abs_tol=BOUND_RTOL):
                    self._auto(f"{name} = {value:.4g} is at its {side} bound: the data do "
                               "not pin it (treat it and its interval as a limit, not an "
                               "estimate)")
        for name, (low, high) in self.ci.items():
            if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
                continue
            if math.isclose(low, high, rel_tol=ZERO_WIDTH_RTOL, abs_tol=0.0):
                self._auto(f"{name}'s interval [{low:.4g}, {high:.4g}] has zero width: every "
                           "resample gave the same value, so it says nothing about "
                           "uncertainty")

    def _auto(self, message: str) -> None:
        if message not in self.flags:
            self.flags.append(message)
            self._auto_flags.append(message)

    def flag(self, message: str) -> None:
        """Add a one-line warning (once)."""
        if message not in self.flags:
            self.flags.append(message)

    def to_json(self) -> dict:
        """JSON-safe dict: ``law, params, ci (name -> [low, high]), n_points, loss, extra,
        used, dropped, bounds, flags`` (an infinite bound is ``None``).

        NaN and infinities become ``None``; numpy scalars/arrays become floats/lists; keys of
        ``extra`` starting with ``_`` are dropped.
        """
        return {
            "law": self.law,
            "params": {k: _json_safe(v) for k, v in self.params.items()},
            "ci": {k: [_json_safe(lo), _json_safe(hi)] for k, (lo, hi) in self.ci.items()},
            "n_points": int(self.n_points),
            "loss": _json_safe(self.loss),
            "extra": {k: _json_safe(v) for k, v in self.extra.items() if not k.startswith("_")},
            "used": _json_safe(self.used),
            "dropped": _json_safe(self.dropped),
            "bounds": {k: [_json_safe(lo), _json_safe(hi)] for k, (lo, hi) in self.bounds.items()},
            "flags": list(self.flags),
        }


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, FitResult):
        return obj.to_json()
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, np.ndarray):
        return [_json_safe(v) for v in obj.tolist()]
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer | int):
        return int(obj)
    if isinstance(obj, np.floating | float):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "to_json"):
        return obj.to_json()
    return str(obj)


class FitError(ValueError):
    """A user-facing problem with the data given to a fit; the message is one line."""


# Exceptions that mean "these data do not support this fit" (FitError is a ValueError;
# ArithmeticError covers OverflowError, ZeroDivisionError and FloatingPointError from
# math.exp/pow on far-off parameters): callers record them as a reason and go on.
FIT_FAILURES: tuple[type[BaseException], ...] = (
    ValueError, ArithmeticError, np.linalg.LinAlgError)


# log of the largest and of the smallest normal positive float: a value kept in logs (e.g. the
# UTD law's beta) is usable only in between
LOG_FLOAT_MAX = math.log(sys.float_info.max)
LOG_FLOAT_MIN = math.log(sys.float_info.min)


def safe_exp(v: float) -> float:
    """``math.exp`` that saturates to inf instead of raising OverflowError: for interval
    ends, where an unbounded end is an answer (JSON ``null``), not a crash."""
    return math.inf if v > LOG_FLOAT_MAX else math.exp(v)


# A positive parameter kept in logs (E = exp(log E)) has no finite lower bound for the
# optimiser, but below e^-30 (1e-13 of its scale) it has run to 0: it is at its bound.
LOG_ZERO = -30.0


def flag_log_zero(fit: FitResult, name: str, log_value: float, *,
                  threshold: float = LOG_ZERO, label: str | None = None,
                  why: str = "") -> bool:
    """Flag a log-parametrised positive parameter that ran to 0.

    ``name = exp(log_value)`` (or a term relative to the data, ``label`` naming what
    ``log_value`` is, default ``log NAME``); when ``log_value < threshold`` (default
    :data:`LOG_ZERO`, -30) or is not finite the parameter is at its lower bound 0, which
    no box constraint reports: the data do not pin it, and a bootstrap whose every draw
    stays there gives it an interval of zero width. Adds one flag to ``fit`` (``why``
    appended) and returns True when flagged.
    """
    if math.isfinite(log_value) and log_value >= threshold:
        return False
    shown = f"{log_value:.4g}" if math.isfinite(log_value) else "-inf"
    fit.flag(f"{name} is at its lower bound 0 ({label or f'log {name}'} = {shown} < "
             f"{threshold:g}): the data do not pin it (treat it and its interval as a limit, "
             "not an estimate)" + (f"; {why}" if why else ""))
    return True


def one_line(err: BaseException, max_len: int | None = 300) -> str:
    """An exception as one line (cut at ``max_len``, None: whole) for a report or the CLI;
    other than FitError it is named by its type (``OverflowError: math range error`` says
    more than the message)."""
    msg = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, FitError):
        msg = f"{type(err).__name__}: {msg}"
    return msg[:max_len]


# --------------------------------------------------------------------------- validation


def as_array(
    values: Any, name: str, *, positive: bool = False, min_len: int | None = None
) -> np.ndarray:
    """Return ``values`` as a 1-D float array, or raise :class:`FitError` naming ``name``.

    Checks: no NaN/inf; strictly positive if ``positive`` (logs are taken); at least
    ``min_len`` entries.
    """
    try:
        arr = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise FitError(f"{name}: values are not numeric ({exc})") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        raise FitError(f"{name}: {int(bad.sum())} NaN or infinite value(s)")
    if positive and (arr <= 0).any():
        raise FitError(
            f"{name}: {int((arr <= 0).sum())} non-positive value(s) where a log is taken "
            f"(min {arr.min():g})"
        )
    if min_len is not None and arr.size < min_len:
        raise FitError(f"too few points for {name}: {arr.size} given, at least {min_len} needed")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise FitError(f"inputs differ in length: {lengths}")


def require_distinct(arr: np.ndarray, name: str, need: int, why: str = "") -> None:
    """Raise FitError ``"NAME: K distinct value(s), at least NEED needed[; why]"`` when
    ``arr`` has fewer than ``need`` distinct values (one wording for every law: with too
    few distinct x an optimiser would return a bound-stuck exponent, not an error)."""
    k = int(np.unique(arr).size)
    if k < need:
        raise FitError(f"{name}: {k} distinct value{'' if k == 1 else 's'}, at least {need} "
                       f"needed" + (f"; {why}" if why else ""))


def t_quantile(level: float, dof: float) -> float:
    """Two-sided Student-t quantile for a ``level`` interval (normal when ``dof`` is inf)."""
    if not math.isfinite(dof):
        return float(stats.norm.ppf(0.5 + level / 2))
    return float(stats.t.ppf(0.5 + level / 2, max(dof, 1)))


# --------------------------------------------------------------------------- log-log OLS


def fit_loglog(x: Any, y: Any, *, level: float = LEVEL, law: str = "loglog") -> FitResult:
    """Power law ``y = c * x^k`` by ordinary least squares of ``log y`` on ``log x``.

    Loss: sum of squared residuals in natural-log space (reported as ``loss``).
    Optimiser: closed form. Uncertainty: classical OLS t-intervals with ``n - 2`` degrees of
    freedom; ``c``'s interval is ``exp`` of the interval for ``log c``. Needs >= 3 points.

    ``extra`` holds what :func:`loglog_intervals` needs: ``log_c``, ``cov`` (2x2 covariance of
    ``[log c, k]``), ``sigma`` (residual sd), ``dof``, ``logx_mean``, ``sxx``, ``r2``.
    """
    x = as_array(x, "x", positive=True, min_len=3)
    y = as_array(y, "y", positive=True, min_len=3)
    _same_length(x=x, y=y)
    lx, ly = np.log(x), np.log(y)
    n = lx.size
    xm = lx.mean()
    require_distinct(x, "x", 2, "the slope is not identifiable")
    sxx = float(((lx - xm) ** 2).sum())
    if sxx <= 1e-300:  # distinct x whose logs agree to rounding
        raise FitError("x: values equal in log space, the slope is not identifiable")
    k = float(((lx - xm) * (ly - ly.mean())).sum() / sxx)
    logc = float(ly.mean() - k * xm)
    resid = ly - (logc + k * lx)
    sse = float((resid**2).sum())
    dof = n - 2
    s2 = sse / dof
    var_k = s2 / sxx
    var_logc = s2 * (1.0 / n + xm**2 / sxx)
    cov_ck = -xm * s2 / sxx
    t = t_quantile(level, dof)
    se_k, se_logc = math.sqrt(var_k), math.sqrt(var_logc)
    sst = float(((ly - ly.mean()) ** 2).sum())
    return FitResult(
        law=law,
        params={"c": math.exp(logc), "k": k},
        ci={
            "c": (math.exp(logc - t * se_logc), math.exp(logc + t * se_logc)),
            "k": (k - t * se_k, k + t * se_k),
        },
        n_points=n,
        loss=sse,
        extra={
            "level": level,
            "form": "y = c x^k",
            "method": "OLS in log-log space, t-intervals",
            "log_c": logc,
            "se": {"log_c": se_logc, "k": se_k},
            "cov": [[var_logc, cov_ck], [cov_ck, var_k]],
            "sigma": math.sqrt(s2),
            "dof": dof,
            "logx_mean": xm,
            "sxx": sxx,
            "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
        },
    )


def fit_affine(x: Any, y: Any, *, level: float = LEVEL, law: str = "affine") -> FitResult:
    """Affine law ``y = a + b x`` by ordinary least squares (linear axes).

    Loss: sum of squared residuals (``loss``). Optimiser: closed form. Uncertainty:
    classical OLS t-intervals with ``n - 2`` degrees of freedom. Needs >= 3 points and >= 2
    distinct ``x``. ``extra`` holds what :func:`affine_intervals` needs (``cov`` of
    ``[a, b]``, ``sigma``, ``dof``, ``x_mean``, ``sxx``) and ``r2``.
    """
    x = as_array(x, "x", min_len=3)
    y = as_array(y, "y", min_len=3)
    _same_length(x=x, y=y)
    require_distinct(x, "x", 2, "the slope is not identifiable")
    n = x.size
    xm = float(x.mean())
    sxx = float(((x - xm) ** 2).sum())
    b = float(((x - xm) * (y - y.mean())).sum() / sxx)
    a = float(y.mean() - b * xm)
    resid = y - (a + b * x)
    sse = float((resid**2).sum())
    dof = n - 2
    s2 = sse / dof if dof > 0 else float("nan")
    var_b, var_a = s2 / sxx, s2 * (1.0 / n + xm**2 / sxx)
    cov_ab = -xm * s2 / sxx
    t = t_quantile(level, dof)
    se_a, se_b = math.sqrt(var_a), math.sqrt(var_b)
    sst = float(((y - y.mean()) ** 2).sum())
    return FitResult(
        law=law, params={"a": a, "b": b},
        ci={"a": (a - t * se_a, a + t * se_a), "b": (b - t * se_b, b + t * se_b)},
        n_points=n, loss=sse,
        extra={"level": level, "form": "y = a + b x", "method": "OLS, t-intervals",
               "se": {"a": se_a, "b": se_b}, "cov": [[var_a, cov_ab], [cov_ab, var_b]],
               "sigma": math.sqrt(s2), "dof": dof, "x_mean": xm, "sxx": sxx,
               "r2": 1.0 - sse / sst if sst > 0 else float("nan")})


def affine_intervals(result: FitResult, x_new: Any, *, level: float | None = None
                     ) -> dict[str, np.ndarray]:
    """The line of a :func:`fit_affine` result at ``x_new`` with its confidence band
    (``conf_low``/``conf_high``: where the line is) and prediction band (``pred_*``)."""
    ex = result.extra
    level = ex["level"] if level is None else level
    x = np.asarray(x_new, dtype=float)
    mu = result.params["a"] + result.params["b"] * x
    lev = 1.0 / result.n_points + (x - ex["x_mean"]) ** 2 / ex["sxx"]
    t = t_quantile(level, ex["dof"])
    se_conf, se_pred = ex["sigma"] * np.sqrt(lev), ex["sigma"] * np.sqrt(1.0 + lev)
    return {"y": mu, "conf_low": mu - t * se_conf, "conf_high": mu + t * se_conf,
            "pred_low": mu - t * se_pred, "pred_high": mu + t * se_pred}


def loglog_intervals(
    result: FitResult, x_new: Any, *, level: float | None = None
) -> dict[str, np.ndarray]:
    """Mean prediction and intervals of a :func:`fit_loglog` result at ``x_new``.

    Returns arrays ``y`` (the fitted line), ``conf_low/conf_high`` (confidence interval of the
    line: where the law is) and ``pred_low/pred_high`` (prediction interval: where a new
    observation falls), all on the original scale.
    """
    ex = result.extra
    level = ex["level"] if level is None else level
    lx = np.log(np.asarray(x_new, dtype=float))
    mu = ex["log_c"] + result.params["k"] * lx
    n = result.n_points
    lev = 1.0 / n + (lx - ex["logx_mean"]) ** 2 / ex["sxx"]
    t = t_quantile(level, ex["dof"])
    se_conf = ex["sigma"] * np.sqrt(lev)
    se_pred = ex["sigma"] * np.sqrt(1.0 + lev)
    return {
        "y": np.exp(mu),
        "conf_low": np.exp(mu - t * se_conf),
        "conf_high": np.exp(mu + t * se_conf),
        "pred_low": np.exp(mu - t * se_pred),
        "pred_high": np.exp(mu + t * se_pred),
    }


def predict_power(params: Mapping[str, float], x: Any) -> np.ndarray:
    """``offset + c * x^k`` (``offset`` defaults to 0): the law of fit_loglog/fit_power_offset."""
    x = np.asarray(x, dtype=float)
    return params.get("offset", 0.0) + params["c"] * x ** params["k"]


# --------------------------------------------------------------------------- power + constant


@single_blas_thread
def fit_power_offset(
    x: Any,
    y: Any,
    *,
    space: str = "log",
    k_bounds: tuple[float, float] = (-5.0, 5.0),
    offset_bounds: tuple[float, float] | None = None,
    level: float = LEVEL,
    n_boot: int = 0,
    groups: Any = None,
    seed: int = 0,
    law: str = "power_offset",
    names: tuple[str, str] = ("x", "y"),
) -> FitResult:
    """Power law plus constant ``y = offset + c * x^k``.

    Loss: sum of squared residuals, either in log space (``space="log"``:
    ``log y - log(offset + c x^k)``, for positive quantities such as losses or data counts;
    requires ``c > 0`` and ``offset >= 0`` unless ``offset_bounds`` says otherwise) or on the
    raw scale (``space="linear"``: any sign of ``c`` and ``offset``, e.g. returns approaching a
    ceiling). ``x`` is internally divided by its geometric mean so ``c`` is well scaled (results
    are reported in the caller's units; exponents do not depend on the units).

    Optimiser: bounded trust-region least squares (``scipy.optimize.least_squares``, TRF,
    ``x_scale="jac"``) from multiple starts. The ``k`` grid is 25 values evenly spaced over
    ``k_bounds`` (``k = 0`` dropped: 24 with the default symmetric bounds). Starts per space:

    - ``"log"``: each ``k`` times 6 offsets evenly spaced from ``max(lower bound, 0)`` to
      0.95 x ``min(upper bound, min y)`` (duplicates merged), ``log c`` given ``(k, offset)``
      in closed form (the mean of ``log(y - offset) - k log x``); a start where
      ``y - offset <= 0`` is dropped. At most 25 x 6 = 150 starts.
    - ``"linear"``: one start per ``k`` (at most 25): ``c`` and ``offset`` by linear least
      squares of ``y`` on ``[x^k, 1]``, the offset clipped into its bounds and ``c`` re-solved
      for the clipped offset. There is no offset grid.

    Every start is scored by its sum of squared residuals; the 6 best are refined and the
    lowest optimum kept (a warm-started bootstrap refit refines its 2 best grid starts and the
    warm start). ``extra["method"]`` states the space, the number of starts and the intervals.

    Uncertainty: delta method / asymptotic least-squares covariance ``s^2 (J^T J)^-1`` with
    t-quantiles on ``n - 3`` dof (``c``'s interval via ``log c`` in log space); if ``n_boot > 0``
    a percentile bootstrap over points (or over ``groups``: runs/seeds) replaces it (a draw with
    fewer than 3 distinct x counts as failed). Intervals of parameters sitting on a bound are
    clipped to the bound; ``bounds`` records ``k_bounds`` and the offset's bounds, so an
    estimate on one is flagged (:class:`FitResult`), and in log space ``c`` running to 0
    (the power term below e^-30 of the largest y on the data) is flagged by
    :func:`flag_log_zero`. Needs >= 4 points and >= 3 distinct x (else FitError ``"x: 2
    distinct values, at least 3 needed"``: the three parameters are not identifiable and the
    optimiser would return ``k`` stuck on a bound). ``names`` are the inputs' names in error
    messages (e.g. ``("loss", "return")``).
    """
    xname, yname = names
    x = as_array(x, xname, positive=True, min_len=4)
    y = as_array(y, yname, positive=(space == "log"), min_len=4)
    _same_length(**{xname: x, yname: y})
    if space not in ("log", "linear"):
        raise ValueError(f"space must be 'log' or 'linear', not {space!r}")
    require_distinct(x, xname, 3, f"{yname} = offset + c {xname}^k is not identifiable")
    xs = math.exp(np.log(x).mean())  # scale x so c is O(y)
    u = x / xs
    if offset_bounds is None:
        offset_bounds = (0.0, float(y.min())) if space == "log" else (-np.inf, np.inf)
    lo_off, hi_off = offset_bounds

    def fit_once(idx: np.ndarray, warm: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        return _power_offset_core(u[idx], y[idx], space, k_bounds, (lo_off, hi_off), warm)

    theta, sol = fit_once(np.arange(x.size))
    n = x.size
    resid = sol.fun
    sse = float((resid**2).sum())
    dof = n - 3
    # theta = [log c (log space) or c (linear), k, offset]; convert scaled c back to caller units
    k = float(theta[1])
    if space == "log":
        c_scaled = math.exp(theta[0])
    else:
        c_scaled = float(theta[0])
    c = c_scaled * xs ** (-k)
    params = {"c": c, "k": k, "offset": float(theta[2])}
    extra: dict[str, Any] = {"level": level, "space": space, "x_scale": xs, "dof": dof,
                             "form": "y = offset + c x^k"}
    # covariance in the optimisation parameterisation (with x scaled); bound-active params get
    # zero-width rows because J has a zero column there after pseudo-inversion.
    J = sol.jac
    s2 = sse / max(dof, 1)
    cov = s2 * np.linalg.pinv(J.T @ J)
    extra["_cov_theta"] = cov
    extra["_theta"] = theta
    t = t_quantile(level, dof)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    # c in caller units: log c = log c_scaled - k log xs (or c = c_scaled xs^-k); delta method
    if space == "log":
        g = np.array([1.0, -math.log(xs), 0.0])
        se_logc = math.sqrt(max(g @ cov @ g, 0.0))
        # from log c itself: c may underflow to 0 (log(0)) and its interval ends overflow
        log_c = float(theta[0]) - k * math.log(xs)
        ci_c = (safe_exp(log_c - t * se_logc), safe_exp(log_c + t * se_logc))
    else:
        g = np.array([xs ** (-k), -c * math.log(xs), 0.0])
        se_c = math.sqrt(max(g @ cov @ g, 0.0))
        ci_c = (c - t * se_c, c + t * se_c)
    ci = {
        "c": ci_c,
        "k": (max(k - t * se[1], k_bounds[0]), min(k + t * se[1], k_bounds[1])),
        "offset": (
            max(params["offset"] - t * se[2], lo_off),
            min(params["offset"] + t * se[2], hi_off),
        ),
    }
    fit_desc = _power_offset_method(space, sol)
    extra["fit_method"] = fit_desc  # loss space and starts; "method" adds the intervals
    extra["method"] = f"{fit_desc}; delta-method (asymptotic covariance) t-intervals, n-3 dof"
    extra["at_bound"] = {
        "k": bool(np.isclose(k, k_bounds).any()),
        "offset": bool(np.isclose(params["offset"], [lo_off, hi_off]).any()),
    }
    if n_boot > 0:

        def boot_fn(idx: np.ndarray) -> dict[str, float]:
            if np.unique(x[idx]).size < 3:  # no identifiable law in this draw: failed draw
                raise FitError(f"{xname}: fewer than 3 distinct values in this draw")
            th, _ = fit_once(idx, warm=theta)
            kk = float(th[1])
            cs = math.exp(th[0]) if space == "log" else float(th[0])
            return {"c": cs * xs ** (-kk), "k": kk, "offset": float(th[2])}

        bs = bootstrap(boot_fn, n, groups=groups, n_boot=n_boot, level=level, seed=seed)
        ci = bs.ci
        extra["method"] = (f"{fit_desc}; percentile bootstrap over {bs.unit} ({n_boot} "
                           "draws, each refit warm-started)")
        extra["bootstrap"] = bs.summary()
        extra["_draws"] = bs.draws
    fit = FitResult(law=law, params=params, ci=ci, n_points=n, loss=sse, extra=extra,
                    bounds={"k": tuple(map(float, k_bounds)),
                            "offset": (float(lo_off), float(hi_off))})
    if space == "log":  # c = exp(log c): its bound 0 is no box constraint, check it here
        flag_log_zero(fit, "c", float(theta[0] + np.max(k * np.log(u)) - np.log(y.max())),
                      label=f"log of c {xname}^k / max {yname} on the data",
                      why="the power term vanishes and k is not identified")
    return fit


def _power_offset_method(space: str, sol: Any) -> str:
    """How a :func:`fit_power_offset` fit was found: loss space and starts (for ``method``)."""
    loss = ("least squares on log y (log-space residuals)" if space == "log"
            else "least squares on y (linear residuals)")
    grid = ("k grid x offset grid, log c in closed form" if space == "log"
            else "one per k, c and offset by linear least squares")
    return (f"{loss}; bounded TRF from {sol['n_starts']} starts ({grid}), best "
            f"{sol['n_refined']} refined")


def _power_offset_core(
    u: np.ndarray,
    y: np.ndarray,
    space: str,
    k_bounds: tuple[float, float],
    off_bounds: tuple[float, float],
    warm: np.ndarray | None,
) -> tuple[np.ndarray, Any]:
    """Multi-start bounded least squares for ``y = offset + c u^k`` (u already scaled)."""
    lo_off, hi_off = off_bounds
    lu = np.log(u)

    if space == "log":
        ly = np.log(y)

        def resid(th: np.ndarray) -> np.ndarray:
            return ly - np.log(th[2] + np.exp(th[0] + th[1] * lu))

        def jac(th: np.ndarray) -> np.ndarray:
            p = np.exp(th[0] + th[1] * lu)
            m = th[2] + p
            return -np.column_stack([p / m, p * lu / m, 1.0 / m])

        hi = min(hi_off, float(y.min()))
        offs = np.unique(
            np.clip(np.linspace(max(lo_off, 0.0), 0.95 * hi, 6), lo_off, max(lo_off, hi))
        )
        bounds = ([-np.inf, k_bounds[0], lo_off], [np.inf, k_bounds[1], hi_off])
    else:

        def resid(th: np.ndarray) -> np.ndarray:
            return y - (th[2] + th[0] * np.exp(th[1] * lu))

        def jac(th: np.ndarray) -> np.ndarray:
            p = np.exp(th[1] * lu)
            return -np.column_stack([p, th[0] * p * lu, np.ones_like(p)])

        offs = None  # linear space: offset and c solved jointly in closed form per k
        bounds = ([-np.inf, k_bounds[0], lo_off], [np.inf, k_bounds[1], hi_off])

    starts = []
    ks = np.linspace(k_bounds[0], k_bounds[1], 25)
    ks = ks[np.abs(ks) > 1e-9]
    for k in ks:
        p = np.exp(k * lu)
        if space == "log":
            for off in offs:
                d = y - off
                if (d <= 0).any():
                    continue
                logc = float(np.mean(np.log(d) - k * lu))
                starts.append(np.array([logc, k, off]))
        else:
            A = np.column_stack([p, np.ones_like(p)])
            (c0, off0), *_ = np.linalg.lstsq(A, y, rcond=None)
            off0 = float(np.clip(off0, lo_off, hi_off))
            c0 = float(np.dot(p, y - off0) / np.dot(p, p))
            starts.append(np.array([c0, k, off0]))
    if warm is not None:
        starts.append(np.asarray(warm, dtype=float))
    starts_arr = np.array(starts)
    # clip into bounds so least_squares accepts them
    starts_arr[:, 1] = np.clip(starts_arr[:, 1], k_bounds[0], k_bounds[1])
    starts_arr[:, 2] = np.clip(starts_arr[:, 2], lo_off, hi_off)
    costs = np.array([np.sum(resid(s) ** 2) if np.all(np.isfinite(resid(s))) else np.inf
                      for s in starts_arr])
    order = np.argsort(costs)
    n_refine = 2 if warm is not None else 6
    chosen = list(order[:n_refine])
    if warm is not None:
        chosen.append(len(starts_arr) - 1)
    best = None
    for i in chosen:
        s = starts_arr[i].copy()
        # least_squares needs strictly feasible starts
        s[2] = np.clip(s[2], lo_off + 1e-12 * (1 + abs(lo_off)) if np.isfinite(lo_off) else s[2],
                       hi_off - 1e-9 * (1 + abs(hi_off)) if np.isfinite(hi_off) else s[2])
        if space == "log" and np.isfinite(hi_off) and s[2] >= y.min():
            s[2] = 0.99 * y.min()
        try:
            sol = optimize.least_squares(
                resid, s, jac=jac, bounds=bounds, method="trf", x_scale="jac", max_nfev=400
            )
        except (ValueError, FloatingPointError):
            continue
        if not np.all(np.isfinite(sol.fun)):
            continue
        if best is None or sol.cost < best.cost:
            best = sol
    if best is None:
        raise FitError("power law with offset: no start converged (check the data)")
    # recorded for extra["method"]: how many starts were scored and refined
    best["n_starts"] = len(starts_arr) - (warm is not None)
    best["n_refined"] = len(chosen)
    return best.x, best


def power_offset_intervals(
    result: FitResult, x_new: Any, *, level: float | None = None
) -> dict[str, np.ndarray]:
    """Mean prediction and delta-method confidence interval of a :func:`fit_power_offset` fit.

    Returns ``y``, ``conf_low``, ``conf_high`` (interval for the curve, not for new points).
    """
    ex = result.extra
    level = ex["level"] if level is None else level
    theta, cov, xs, space = ex["_theta"], ex["_cov_theta"], ex["x_scale"], ex["space"]
    lu = np.log(np.asarray(x_new, dtype=float) / xs)
    t = t_quantile(level, ex["dof"])
    if space == "log":
        p = np.exp(theta[0] + theta[1] * lu)
        m = theta[2] + p
        # interval on log of the curve, then exponentiate (keeps it positive)
        G = np.column_stack([p / m, p * lu / m, 1.0 / m])
        se = np.sqrt(np.einsum("ij,jk,ik->i", G, cov, G))
        return {"y": m, "conf_low": m * np.exp(-t * se), "conf_high": m * np.exp(t * se)}
    p = np.exp(theta[1] * lu)
    m = theta[2] + theta[0] * p
    G = np.column_stack([p, theta[0] * p * lu, np.ones_like(p)])
    se = np.sqrt(np.einsum("ij,jk,ik->i", G, cov, G))
    return {"y": m, "conf_low": m - t * se, "conf_high": m + t * se}


def forecast_power(fit: FitResult, x: float, *, level: float = LEVEL) -> dict[str, float]:
    """Value of a fitted power law (``fit_loglog`` or ``fit_power_offset``) at ``x`` with its
    confidence interval."""
    if "offset" in fit.params and "_cov_theta" in fit.extra:
        iv = power_offset_intervals(fit, [x], level=level)
    else:
        iv = loglog_intervals(fit, [x], level=level)
    return {"value": float(iv["y"][0]), "low": float(iv["conf_low"][0]),
            "high": float(iv["conf_high"][0])}


# --------------------------------------------------------------------------- fixed effects


def fit_fixed_effects(
    x: Any,
    y: Any,
    groups: Any,
    *,
    log_x: bool = True,
    log_y: bool = True,
    level: float = LEVEL,
    law: str = "fixed_effects",
) -> FitResult:
    """Shared slope, one intercept per group: ``f(y) = a_g + k f(x)`` with f = log or identity.

    With the defaults (log-log) this is ``y = c_g * x^k`` (e.g. Rybkin's ``B*(sigma)`` with a
    slope shared across tasks). Parameters: ``k`` and ``c[<group>]`` (``c_g = exp(a_g)`` if
    ``log_y``, else ``a_g``). Loss: OLS sum of squared residuals in the transformed space.
    Optimiser: closed form (least squares on ``[dummies, f(x)]``). Uncertainty: OLS t-intervals
    on ``n - G - 1`` dof. Needs at least ``G + 2`` points and two distinct x within some group.
    """
    x = as_array(x, "x", positive=log_x)
    y = as_array(y, "y", positive=log_y)
    g = np.asarray(groups).reshape(-1)
    _same_length(x=x, y=y, groups=g)
    # a missing label would otherwise become a group named "None" or "nan"
    missing = int(_missing(g).sum())
    if missing:
        raise FitError(f"groups: {missing} missing label(s) (None or NaN)")
    labels, codes = np.unique(g.astype(str), return_inverse=True)
    G = labels.size
    n = x.size
    if n < G + 2:
        raise FitError(f"too few points for x: {n} given, at least {G + 2} needed "
                       f"(one intercept per group, {G} group(s), and the slope)")
    fx = np.log(x) if log_x else x
    fy = np.log(y) if log_y else y
    X = np.zeros((n, G + 1))
    X[np.arange(n), codes] = 1.0
    X[:, G] = fx
    coef, *_ = np.linalg.lstsq(X, fy, rcond=None)
    resid = fy - X @ coef
    sse = float((resid**2).sum())
    dof = n - G - 1
    XtX = X.T @ X
    if np.linalg.matrix_rank(XtX) < G + 1:
        raise FitError("x: no group has two distinct values, the shared slope is not identifiable")
    s2 = sse / dof
    cov = s2 * np.linalg.inv(XtX)
    se = np.sqrt(np.diag(cov))
    t = t_quantile(level, dof)
    k = float(coef[G])
    params: dict[str, float] = {"k": k}
    ci: dict[str, tuple[float, float]] = {"k": (k - t * se[G], k + t * se[G])}
    for j, lab in enumerate(labels):
        a, lo, hi = coef[j], coef[j] - t * se[j], coef[j] + t * se[j]
        if log_y:
            a, lo, hi = math.exp(a), math.exp(lo), math.exp(hi)
        params[f"c[{lab}]"] = float(a)
        ci[f"c[{lab}]"] = (float(lo), float(hi))
    return FitResult(
        law=law,
        params=params,
        ci=ci,
        n_points=n,
        loss=sse,
        extra={
            "level": level,
            "form": ("log " if log_y else "") + "y = a[group] + k " + ("log " if log_x else "")
                    + "x" + (" (y = c[group] x^k)" if log_x and log_y else ""),
            "method": "OLS with per-group intercepts, t-intervals",
            "groups": labels.tolist(),
            "log_x": log_x,
            "log_y": log_y,
            "sigma": math.sqrt(s2),
            "dof": dof,
            "cov": cov,
        },
    )


def _missing(a: np.ndarray) -> np.ndarray:
    """None or NaN entries of a label array (numeric or object)."""
    if a.dtype.kind == "f":
        return np.isnan(a)
    if a.dtype == object:
        return np.array([v is None or (isinstance(v, float) and v != v) for v in a.tolist()],
                        dtype=bool)
    return np.zeros(a.shape, dtype=bool)


def predict_fixed_effects(
    params: Mapping[str, float], x: Any, group: Any, *, log_x: bool = True, log_y: bool = True
) -> np.ndarray:
    """Evaluate a :func:`fit_fixed_effects` law for ``group`` (a label or an array of labels)."""
    x = np.asarray(x, dtype=float)
    grp = np.broadcast_to(np.asarray(group).astype(str), x.shape)
    c = np.array([params[f"c[{gg}]"] for gg in grp.reshape(-1)]).reshape(x.shape)
    if log_y:
        return c * (x ** params["k"] if log_x else np.exp(params["k"] * x))
    return c + params["k"] * (np.log(x) if log_x else x)


# --------------------------------------------------------------------------- bootstrap


@dataclass
class BootstrapResult:
    """Draws of every fitted quantity and their percentile intervals."""

    draws: dict[str, np.ndarray]
    ci: dict[str, tuple[float, float]]
    n_boot: int
    n_failed: int
    level: float
    unit: str

    def summary(self) -> dict[str, Any]:
        """Small JSON-safe summary: counts and the bootstrap standard deviation per quantity."""
        return {
            "n_boot": self.n_boot,
            "n_failed": self.n_failed,
            "level": self.level,
            "unit": self.unit,
            "sd": {k: float(np.nanstd(v)) for k, v in self.draws.items()},
        }


@single_blas_thread
def bootstrap(
    fit_fn: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    *,
    groups: Any = None,
    strata: Any = None,
    n_boot: int = 200,
    level: float = LEVEL,
    seed: int = 0,
) -> BootstrapResult:
    """Nonparametric percentile bootstrap.

    ``fit_fn(idx)`` refits on the points ``idx`` (an index array with repeats) and returns named
    quantities. Resampling unit: points, or whole ``groups`` (run ids, seeds: all points of a
    drawn group enter together, so within-run correlation is respected). With ``strata`` (e.g.
    FLOP budget, task) groups are resampled within each stratum so every stratum keeps its
    size. Failed refits (exceptions, non-finite values) are skipped and counted.
    Interval: the ``(1-level)/2`` and ``(1+level)/2`` percentiles of the draws.
    """
    rng = np.random.default_rng(seed)
    gr = np.arange(n) if groups is None else np.asarray(groups).reshape(-1)
    st = np.zeros(n, dtype=int) if strata is None else np.asarray(strata).reshape(-1)
    if len(gr) != n or len(st) != n:
        raise FitError("bootstrap: groups/strata must have one entry per point")
    # members[stratum] = list of index arrays, one per group in that stratum
    members: list[list[np.ndarray]] = []
    for s in _unique_in_order(st):
        in_s = np.flatnonzero(st == s)
        members.append([in_s[gr[in_s] == gval] for gval in _unique_in_order(gr[in_s])])
    draws: dict[str, list[float]] = {}
    n_failed = 0
    for _ in range(n_boot):
        parts = []
        for grp_list in members:
            pick = rng.integers(0, len(grp_list), size=len(grp_list))
            parts.extend(grp_list[j] for j in pick)
        idx = np.concatenate(parts)
        try:
            out = fit_fn(idx)
        except FIT_FAILURES:
            n_failed += 1
            continue
        vals = {k: float(v) for k, v in out.items()}
        if not all(math.isfinite(v) for v in vals.values()):
            n_failed += 1
            continue
        for k, v in vals.items():
            draws.setdefault(k, []).append(v)
    arrs = {k: np.asarray(v) for k, v in draws.items()}
    q = [50 * (1 - level), 50 * (1 + level)]
    ci = {
        k: (float(np.percentile(v, q[0])), float(np.percentile(v, q[1])))
        for k, v in arrs.items()
        if v.size
    }
    unit = "points" if groups is None else "groups"
    if strata is not None:
        unit += " within strata"
    return BootstrapResult(arrs, ci, n_boot, n_failed, level, unit)


def _unique_in_order(a: np.ndarray) -> list[Any]:
    seen: dict[Any, None] = {}
    for v in a.tolist():
        seen.setdefault(v, None)
    return list(seen)


# --------------------------------------------------------------------------- delta method


def delta_method(
    fun: Callable[[np.ndarray], Any],
    theta: Any,
    cov: Any,
    *,
    level: float = LEVEL,
    dof: float = math.inf,
    eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    """First-order (delta-method) interval for ``g(theta)`` given ``cov(theta)``.

    ``se(g) = sqrt(grad^T cov grad)`` with a central-difference gradient (step ``eps`` relative
    to ``|theta_i|``); interval ``g +- t_{dof} se`` (normal quantile when ``dof`` is inf).
    ``fun`` may return a scalar or an array. Returns ``value, se, low, high``.
    """
    theta = np.asarray(theta, dtype=float)
    cov = np.asarray(cov, dtype=float)
    g0 = np.atleast_1d(np.asarray(fun(theta), dtype=float))
    grads = np.zeros((g0.size, theta.size))
    for i in range(theta.size):
        h = eps * max(1.0, abs(theta[i]))
        tp, tm = theta.copy(), theta.copy()
        tp[i] += h
        tm[i] -= h
        grads[:, i] = (np.atleast_1d(fun(tp)) - np.atleast_1d(fun(tm))) / (2 * h)
    se = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", grads, cov, grads), 0, None))
    t = t_quantile(level, dof)
    shape = np.shape(fun(theta))
    return {
        "value": g0.reshape(shape),
        "se": se.reshape(shape),
        "low": (g0 - t * se).reshape(shape),
        "high": (g0 + t * se).reshape(shape),
    }


# --------------------------------------------------------------------------- rolling CV


@dataclass
class CVResult:
    """Held-out errors of a law scored on larger budgets than it was fitted on."""

    rmse: float
    folds: list[dict[str, Any]]
    log: bool

    def to_json(self) -> dict[str, Any]:
        return _json_safe({"rmse": self.rmse, "log": self.log, "folds": self.folds})


def rolling_cv(
    budgets: Any,
    y: Any,
    fit_predict: Callable[[np.ndarray, np.ndarray], Any],
    *,
    min_train: int = 3,
    horizon: int = 1,
    log: bool = True,
) -> CVResult:
    """Rolling-origin (time-series) cross-validation over budgets.

    Sort the distinct ``budgets``; for each ``i >= min_train`` fit on all points whose budget is
    below the i-th distinct budget and predict the points of the next ``horizon`` budgets
    (``fit_predict(train_idx, test_idx) -> predictions for test_idx``). A law is thus always
    scored on budgets larger than any it saw, like a forecast. Score: RMSE over all held-out
    points of ``log(pred) - log(y)`` (``log=True``) or ``pred - y``. Folds whose fit fails are
    recorded with ``error`` and skipped.
    """
    b = as_array(budgets, "budgets")
    yy = as_array(y, "y", positive=log)
    _same_length(budgets=b, y=yy)
    ub = np.unique(b)
    if ub.size <= min_train:
        raise FitError(
            f"too few budgets for rolling CV: {ub.size} given, at least {min_train + 1} needed"
        )
    folds: list[dict[str, Any]] = []
    errs: list[np.ndarray] = []
    for i in range(min_train, ub.size, horizon):
        train = np.flatnonzero(b < ub[i])
        test = np.flatnonzero(np.isin(b, ub[i : i + horizon]))
        try:
            pred = np.asarray(fit_predict(train, test), dtype=float).reshape(-1)
        except FIT_FAILURES as exc:
            folds.append({"train_max": float(ub[i - 1]), "test": ub[i : i + horizon].tolist(),
                          "error": str(exc)})
            continue
        e = (np.log(pred) - np.log(yy[test])) if log else (pred - yy[test])
        ok = np.isfinite(e)
        errs.append(e[ok])
        folds.append(
            {
                "train_max": float(ub[i - 1]),
                "test": ub[i : i + horizon].tolist(),
                "n_test": int(test.size),
                "rmse": float(np.sqrt(np.mean(e[ok] ** 2))) if ok.any() else float("nan"),
                # what was forecast and what was measured, for extrapolation-check figures
                "budget": b[test].tolist(),
                "pred": pred.tolist(),
                "actual": yy[test].tolist(),
            }
        )
    allerr = np.concatenate(errs) if errs else np.array([])
    rmse = float(np.sqrt(np.mean(allerr**2))) if allerr.size else float("nan")
    return CVResult(rmse=rmse, folds=folds, log=log)


def holdout_largest(
    budgets: Any,
    y: Any,
    fit_predict: Callable[[np.ndarray, np.ndarray], Any],
    *,
    n_holdout: int = 1,
    log: bool = True,
) -> CVResult:
    """Fit on all but the ``n_holdout`` largest distinct budgets, score on those (one fold)."""
    b = as_array(budgets, "budgets")
    ub = np.unique(b)
    if ub.size <= n_holdout + 1:
        raise FitError(f"too few budgets to hold out {n_holdout}: {ub.size} given")
    return rolling_cv(b, y, fit_predict, min_train=ub.size - n_holdout, horizon=n_holdout,
                      log=log)


# --------------------------------------------------------------------------- bounded metrics


# Box of the saturating law's shape in standardised log compute z = (log C - centre) / width
# (the data span z in [-0.5, 0.5]): the midpoint at most 1.5 widths from the centre (one
# width beyond the data), the slope from nearly linear over the data to a step.
SAT_ZMID_BOUND = 1.5
SAT_SLOPE_BOUNDS = (0.1, 200.0)
SAT_FORM = "R = R0 + (R_max - R0) / (1 + exp(-s (log C - log C_mid)))"


def predict_saturating(params: Mapping[str, float], C: Any) -> np.ndarray:
    """``R0 + (R_max - R0) / (1 + exp(-s (log C - log C_mid)))`` (:func:`fit_saturating`)."""
    lc = np.log(np.asarray(C, dtype=float))
    sig = special.expit(params["s"] * (lc - math.log(params["C_mid"])))
    return params["R0"] + (params["R_max"] - params["R0"]) * sig


def _sat_curve(th: np.ndarray, z: np.ndarray, floor: float | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Model and Jacobian (d model / d theta) of the saturating law in standardised units:
    ``theta = [R_max, A, z_mid, s_z]`` (``R0 = R_max - A``) or, with a known floor,
    ``[R_max, z_mid, s_z]`` (``A = R_max - floor``)."""
    if floor is None:
        rmax, a, zm, sz = th
    else:
        rmax, zm, sz = th
        a = rmax - floor
    sig = special.expit(sz * (z - zm))
    ds = sig * (1.0 - sig)
    model = rmax - a * (1.0 - sig)
    if floor is None:
        jac = np.column_stack([np.ones_like(z), -(1.0 - sig), -a * sz * ds, a * (z - zm) * ds])
    else:
        jac = np.column_stack([sig, -a * sz * ds, a * (z - zm) * ds])
    return model, jac


def _sat_core(z: np.ndarray, r: np.ndarray, floor: float | None,
              box: tuple[np.ndarray, np.ndarray], warm: np.ndarray | None
              ) -> tuple[np.ndarray, Any]:
    """Multi-start bounded least squares for the saturating law (standardised units)."""
    lo, hi = box
    span = float(np.ptp(r)) or max(abs(float(r.mean())), 1.0)
    starts = []
    for zm in np.linspace(-1.2, 1.2, 9):
        for sz in np.geomspace(1.0, 64.0, 7):
            sig = special.expit(sz * (z - zm))
            if floor is None:  # R = R0 (1 - sig) + R_max sig: linear in (R0, R_max)
                A = np.column_stack([1.0 - sig, sig])
                (r0, rmax), *_ = np.linalg.lstsq(A, r, rcond=None)
                starts.append([rmax, max(rmax - r0, 1e-3 * span), zm, sz])
            else:
                d = float(sig @ sig)
                rmax = floor + (float(sig @ (r - floor)) / d if d > 0 else span)
                starts.append([rmax, zm, sz])
    if warm is not None:
        starts.append(list(warm))
    st = np.array(starts, dtype=float)
    # strictly inside the box (least_squares needs feasible starts)
    eps = 1e-9 * (1.0 + np.abs(np.where(np.isfinite(lo), lo, 0.0)))
    st = np.clip(st, np.where(np.isfinite(lo), lo + eps, -np.inf),
                 np.where(np.isfinite(hi), hi - eps, np.inf))

    def resid(th: np.ndarray) -> np.ndarray:
        return r - _sat_curve(th, z, floor)[0]

    def jac(th: np.ndarray) -> np.ndarray:
        return -_sat_curve(th, z, floor)[1]

    costs = np.array([float(np.sum(resid(s) ** 2)) for s in st])
    order = np.argsort(costs)
    chosen = list(order[: 2 if warm is not None else 6])
    if warm is not None:
        chosen.append(len(st) - 1)
    best = None
    for i in chosen:
        try:
            sol = optimize.least_squares(resid, st[i], jac=jac, bounds=(lo, hi), method="trf",
                                         x_scale="jac", max_nfev=500)
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(sol.fun)) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None:
        raise FitError("saturating law: no start converged (check the data)")
    best["n_starts"] = len(st) - (warm is not None)
    best["n_refined"] = len(chosen)
    return best.x, best


@single_blas_thread
def fit_saturating(
    C: Any,
    R: Any,
    *,
    floor: float | None = None,
    ceiling: float | None = None,
    level: float = LEVEL,
    n_boot: int = 0,
    groups: Any = None,
    seed: int = 0,
    law: str = "saturating",
    names: tuple[str, str] = ("C", "R"),
) -> FitResult:
    """Saturating law for a bounded metric (returns, success rates) vs compute: a sigmoid in
    log compute, ``R = R0 + (R_max - R0) / (1 + exp(-s (log C - log C_mid)))``.

    Parameters: ``R_max`` the asymptote at large compute (at most ``ceiling`` when the
    metric has one, e.g. 1 for a success rate), ``C_mid`` the compute where ``R`` is half
    way from ``R0`` to ``R_max``, ``s`` the slope per unit of natural log compute (per
    e-fold; ``R_max - R`` falls as ``C^-s`` well past ``C_mid``, the power law with ceiling
    is this law's upper tail), ``R0`` the floor as ``C -> 0``: known (``floor``, e.g. 0 for a
    success rate; fixed, reported without an interval, ``extra["fixed"]``) or fitted.
    ``R_max >= R0`` always (the law is non-decreasing: fitted as ``R_max`` and ``A = R_max -
    R0 >= 0``).

    Loss: sum of squared residuals in ``R`` (linear residuals; the metric's own scale).
    Internally ``z = (log C - centre) / width`` with the data's mid-range and range of
    ``log C``; the box: ``log C_mid`` within 1.5 widths of the centre (one data width
    beyond the smallest and the largest budget), ``s * width`` in [0.1, 200] (from nearly
    linear over the data to a step), ``R_max <= ceiling``, ``R_max >= floor``.
    Optimiser and starts: bounded trust-region least squares (``least_squares``, TRF,
    analytic Jacobian) from 63 starts (``z_mid`` in 9 values over [-1.2, 1.2] x ``s *
    width`` in 7 values over [1, 64], log-spaced; ``R0`` and ``R_max`` given the shape by
    linear least squares), all scored by their SSE, the 6 best refined (a warm-started
    bootstrap refit: the 2 best and the warm start).

    Uncertainty: delta method (asymptotic covariance ``s^2 (J^T J)^-1``, t-quantiles on
    ``n - p`` dof, p = 4, or 3 with a known floor; ``C_mid``'s interval through ``log
    C_mid``), clipped to the box; with ``n_boot > 0`` a percentile bootstrap over points or
    ``groups`` (warm-started refits; a draw with fewer than p distinct C fails) replaces it.
    ``bounds`` records the box, so an estimate on it is flagged; also flagged: ``R_max -
    R0 = 0`` (a flat fit), ``C_mid`` beyond the largest budget (the bend is not in the data:
    ``R_max`` is an extrapolation) or, with a fitted floor, below the smallest (``R0`` is).
    Needs p + 1 points and p distinct C; values above ``ceiling`` or below ``floor`` are a
    FitError (the metric cannot exceed them).
    """
    cname, rname = names
    p = 4 if floor is None else 3
    C = as_array(C, cname, positive=True, min_len=p + 1)
    R = as_array(R, rname, min_len=p + 1)
    _same_length(**{cname: C, rname: R})
    require_distinct(C, cname, p, f"the {p} parameters of the saturating law are not "
                     "identifiable")
    if floor is not None and ceiling is not None and not ceiling > floor:
        raise FitError(f"ceiling {ceiling:g} is not above the floor {floor:g}")
    if ceiling is not None and (R > ceiling).any():
        raise FitError(f"{rname}: {int((R > ceiling).sum())} value(s) above the ceiling "
                       f"{ceiling:g} (max {R.max():g})")
    if floor is not None and (R < floor).any():
        raise FitError(f"{rname}: {int((R < floor).sum())} value(s) below the floor {floor:g} "
                       f"(min {R.min():g})")
    lc = np.log(C)
    centre = float(lc.min() + lc.max()) / 2
    width = float(lc.max() - lc.min())
    z = (lc - centre) / width
    hi_r = math.inf if ceiling is None else float(ceiling)
    lo_r = -math.inf if floor is None else float(floor)
    zb, (slo, shi) = SAT_ZMID_BOUND, SAT_SLOPE_BOUNDS
    if floor is None:
        box = (np.array([lo_r, 0.0, -zb, slo]), np.array([hi_r, np.inf, zb, shi]))
    else:
        box = (np.array([lo_r, -zb, slo]), np.array([hi_r, zb, shi]))

    def fit_once(idx: np.ndarray, warm: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        return _sat_core(z[idx], R[idx], floor, box, warm)

    def to_params(th: np.ndarray) -> dict[str, float]:
        rmax = float(th[0])
        r0 = rmax - float(th[1]) if floor is None else float(floor)
        zm, sz = float(th[-2]), float(th[-1])
        return {"R_max": rmax, "C_mid": math.exp(centre + width * zm), "s": sz / width,
                "R0": r0}

    theta, sol = fit_once(np.arange(C.size))
    n = C.size
    sse = float(sol.fun @ sol.fun)
    dof = n - p
    params = to_params(theta)
    cov = sse / max(dof, 1) * np.linalg.pinv(sol.jac.T @ sol.jac)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    t = t_quantile(level, max(dof, 1))
    cmid_box = (math.exp(centre - zb * width), math.exp(centre + zb * width))
    s_box = (slo / width, shi / width)
    zm, sz = theta[-2], theta[-1]
    ci = {
        "R_max": (max(params["R_max"] - t * se[0], lo_r), min(params["R_max"] + t * se[0], hi_r)),
        "C_mid": (max(safe_exp(centre + width * (zm - t * se[-2])), cmid_box[0]),
                  min(safe_exp(centre + width * (zm + t * se[-2])), cmid_box[1])),
        "s": (max((sz - t * se[-1]) / width, s_box[0]), min((sz + t * se[-1]) / width, s_box[1])),
    }
    if floor is None:  # R0 = R_max - A
        g = np.array([1.0, -1.0, 0.0, 0.0])
        se_r0 = math.sqrt(max(float(g @ cov @ g), 0.0))
        ci["R0"] = (params["R0"] - t * se_r0, params["R0"] + t * se_r0)
    fit_desc = (f"least squares on {rname} (linear residuals); bounded TRF from "
                f"{sol['n_starts']} starts (9 midpoints x 7 slopes, R0 and R_max by linear "
                f"least squares), best {sol['n_refined']} refined")
    extra: dict[str, Any] = {
        "level": level, "form": SAT_FORM, "dof": dof, "space": "linear",
        "fit_method": fit_desc,
        "method": f"{fit_desc}; delta-method (asymptotic covariance) t-intervals, n-{p} dof",
        "floor": floor, "ceiling": ceiling, "log_c_centre": centre, "log_c_width": width,
        "_theta": theta, "_cov_theta": cov,
    }
    if floor is not None:
        extra["fixed"] = {"R0": float(floor)}
    if n_boot > 0:

        def boot_fn(idx: np.ndarray) -> dict[str, float]:
            if np.unique(C[idx]).size < p:
                raise FitError(f"{cname}: fewer than {p} distinct values in this draw")
            q = to_params(fit_once(idx, warm=theta)[0])
            return {"R_max": q["R_max"], "log_C_mid": math.log(q["C_mid"]), "s": q["s"],
                    "R0": q["R0"]}

        bs = bootstrap(boot_fn, n, groups=groups, n_boot=n_boot, level=level, seed=seed)
        if bs.ci:
            lcm = bs.ci["log_C_mid"]
            ci = {"R_max": bs.ci["R_max"], "C_mid": (safe_exp(lcm[0]), safe_exp(lcm[1])),
                  "s": bs.ci["s"]}
            if floor is None:
                ci["R0"] = bs.ci["R0"]
            extra["method"] = (f"{fit_desc}; percentile bootstrap over {bs.unit} ({n_boot} "
                               "draws, each refit warm-started)")
        extra["bootstrap"] = bs.summary()
        extra["_draws"] = bs.draws
    fit = FitResult(law=law, params=params, ci=ci, n_points=n, loss=sse, extra=extra,
                    bounds={"R_max": (lo_r, hi_r), "C_mid": cmid_box, "s": s_box})
    amplitude = params["R_max"] - params["R0"]
    if amplitude <= 1e-9 * max(float(np.ptp(R)), abs(params["R_max"]), 1e-300):
        fit.flag(f"R_max - R0 = {amplitude:.3g}: the fitted curve is flat, so C_mid and s "
                 "are not identified")
    elif params["C_mid"] > C.max():
        fit.flag(f"C_mid = {params['C_mid']:.4g} is beyond the largest {cname} "
                 f"({C.max():.4g}): the bend is not in the data, R_max is an extrapolation")
    elif floor is None and params["C_mid"] < C.min():
        fit.flag(f"C_mid = {params['C_mid']:.4g} is below the smallest {cname} "
                 f"({C.min():.4g}): the rise is not in the data, R0 is an extrapolation")
    return fit


def saturating_intervals(fit: FitResult, C_new: Any, *, level: float | None = None
                         ) -> dict[str, np.ndarray]:
    """Mean curve and delta-method confidence interval of a :func:`fit_saturating` fit at
    ``C_new``: ``y``, ``conf_low``, ``conf_high`` (for the curve, not for new points; from
    the least-squares covariance even when the parameters were bootstrapped)."""
    ex = fit.extra
    level = ex["level"] if level is None else level
    z = (np.log(np.asarray(C_new, dtype=float)) - ex["log_c_centre"]) / ex["log_c_width"]
    model, G = _sat_curve(np.asarray(ex["_theta"], dtype=float), z, ex["floor"])
    se = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", G, ex["_cov_theta"], G), 0.0, None))
    t = t_quantile(level, max(ex["dof"], 1))
    return {"y": model, "conf_low": model - t * se, "conf_high": model + t * se}


# A law for a held-out comparison: fit(x_train, y_train) -> predict(x) -> y.
Fitter = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


@dataclass
class HoldoutComparison:
    """Laws fitted on all but the largest budgets and scored on those.

    ``rmse``: law -> held-out RMSE (NaN where the law could not be fitted, reason in
    ``errors``); ``best``: the law with the least RMSE (None if none was fitted);
    ``train_max``: the largest budget fitted on; ``test``: the held-out budgets;
    ``forecasts``: law -> ``[(budget, predicted, measured), ...]`` on the held-out points;
    ``predictors``: law -> its fit on the smaller budgets as ``predict(C)`` (not in JSON).
    """

    rmse: dict[str, float]
    best: str | None
    n_holdout: int
    log: bool
    train_max: float
    test: list[float]
    errors: dict[str, str] = field(default_factory=dict)
    forecasts: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict,
                                                                      repr=False)

    def line(self) -> str:
        """One line for a report: each law's RMSE, best first, and the winner."""
        order = sorted(self.rmse, key=lambda k: (not math.isfinite(self.rmse[k]),
                                                 self.rmse[k]))
        parts = [f"{k} {self.rmse[k]:.4g}" if math.isfinite(self.rmse[k]) else
                 f"{k} not fitted" for k in order]
        space = "log " if self.log else ""
        return (f"{space}RMSE on the {self.n_holdout} largest budgets (fitted up to "
                f"{self.train_max:.3g}): " + ", ".join(parts)
                + (f"; better: {self.best}" if self.best else ""))

    def rows(self) -> list[dict[str, Any]]:
        """One row per law for a report table."""
        return [{"law": k, "held-out RMSE": v, "better": k == self.best,
                 "fitted up to": self.train_max, "held out": len(self.test),
                 "note": self.errors.get(k, "")} for k, v in self.rmse.items()]

    def to_json(self) -> dict[str, Any]:
        return _json_safe({"rmse": self.rmse, "best": self.best, "n_holdout": self.n_holdout,
                           "log": self.log, "train_max": self.train_max, "test": self.test,
                           "errors": self.errors})


def compare_holdout(budgets: Any, y: Any, laws: Mapping[str, Fitter], *,
                    n_holdout: int = 1, log: bool = False) -> HoldoutComparison:
    """Fit each law on all but the ``n_holdout`` largest distinct budgets and score it on
    those (as :func:`holdout_largest`): RMSE of ``pred - y`` (``log``: of ``log pred -
    log y``) over the held-out points. A law that cannot be fitted on the smaller budgets
    gets NaN and its one-line reason; ``predictors`` keeps each fitted law's predictor
    (for figures)."""
    b = as_array(budgets, "budgets")
    yy = as_array(y, "y", positive=log)
    _same_length(budgets=b, y=yy)
    ub = np.unique(b)
    if ub.size <= n_holdout + 1:
        raise FitError(f"too few budgets to hold out {n_holdout}: {ub.size} given")
    train_max = float(ub[-n_holdout - 1])
    train, test = b <= train_max, b > train_max
    out = HoldoutComparison(rmse={}, best=None, n_holdout=n_holdout, log=log,
                            train_max=train_max, test=ub[-n_holdout:].tolist())
    for name, fitter in laws.items():
        try:
            predict = fitter(b[train], yy[train])
            with np.errstate(all="ignore"):
                pred = np.asarray(predict(b[test]), dtype=float).reshape(-1)
                err = np.log(pred) - np.log(yy[test]) if log else pred - yy[test]
        except FIT_FAILURES as exc:
            out.rmse[name], out.errors[name] = math.nan, one_line(exc)
            continue
        out.rmse[name] = float(np.sqrt(np.mean(err**2))) if np.isfinite(err).all() \
            else math.nan
        if not math.isfinite(out.rmse[name]):
            out.errors[name] = "a held-out prediction is not finite"
        out.predictors[name] = predict
        out.forecasts[name] = list(zip(b[test].tolist(), pred.tolist(), yy[test].tolist(),
                                       strict=True))
    finite = {k: v for k, v in out.rmse.items() if math.isfinite(v)}
    out.best = min(finite, key=finite.__getitem__) if finite else None
    return out


def bounded_metric_laws(*, floor: float | None = None, ceiling: float | None = None
                        ) -> dict[str, Fitter]:
    """The laws compared for a bounded metric vs compute: ``saturating``
    (:func:`fit_saturating` with the metric's ``floor``/``ceiling``), ``power law``
    (``R = c C^k``, :func:`fit_loglog`; positive R only) and ``power law with ceiling``
    (``R = offset + c C^k`` with k in [-5, -0.01], :func:`fit_power_offset` in linear space,
    ``offset <= ceiling``: the law approaches its ceiling ``offset``)."""

    def saturating(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        f = fit_saturating(x, y, floor=floor, ceiling=ceiling)
        return lambda c: predict_saturating(f.params, c)

    def power(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        f = fit_loglog(x, y, law="power")
        return lambda c: predict_power(f.params, c)

    def power_ceiling(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        f = fit_power_with_ceiling(x, y, ceiling=ceiling)
        return lambda c: predict_power(f.params, c)

    return {"saturating": saturating, "power law": power,
            "power law with ceiling": power_ceiling}


def fit_power_with_ceiling(C: Any, R: Any, *, ceiling: float | None = None,
                           level: float = LEVEL, names: tuple[str, str] = ("C", "R")
                           ) -> FitResult:
    """A bounded metric's power law: ``R = offset + c C^k`` with ``k`` in [-5, -0.01] (so
    ``R`` approaches ``offset``, at most ``ceiling``, as C grows) by
    :func:`fit_power_offset` in linear space (linear residuals, 25 starts, delta-method
    intervals)."""
    fit = fit_power_offset(C, R, space="linear", k_bounds=(-5.0, -0.01),
                           offset_bounds=(-np.inf, np.inf if ceiling is None else ceiling),
                           level=level, law="power_ceiling", names=names)
    fit.extra["form"] = "R = offset + c C^k, k < 0 (offset: the ceiling approached)"
    return fit


def compare_saturating(C: Any, R: Any, *, floor: float | None = None,
                       ceiling: float | None = None, n_holdout: int = 1) -> HoldoutComparison:
    """:func:`compare_holdout` of :func:`bounded_metric_laws`: the saturating law against the
    power laws on the ``n_holdout`` largest budgets (RMSE in R, linear)."""
    return compare_holdout(C, R, bounded_metric_laws(floor=floor, ceiling=ceiling),
                           n_holdout=n_holdout, log=False)
