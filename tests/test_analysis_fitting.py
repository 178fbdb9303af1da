"""Fit primitives recover known parameters, their intervals cover, units do not matter,
and bad input fails with one clear line."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import fitting, isoflop
from analysis.fitting import FitError

PF_DAY = 1e15 * 86400  # FLOPs in one petaFLOP/s-day


def test_loglog_recovers_power_law_and_intervals_contain_truth():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e3, 1e9, 20)
    y = 3.0 * x**-0.3 * np.exp(0.05 * rng.standard_normal(x.size))
    fit = fitting.fit_loglog(x, y)
    assert fit.params["k"] == pytest.approx(-0.3, abs=0.02)
    assert fit.params["c"] == pytest.approx(3.0, rel=0.25)
    lo, hi = fit.ci["k"]
    assert lo < -0.3 < hi
    iv = fitting.loglog_intervals(fit, [1e12])
    assert iv["pred_low"][0] < iv["conf_low"][0] < iv["y"][0] < iv["conf_high"][0]


def test_loglog_interval_coverage_is_nominal():
    """Over 400 draws the 95% interval of the exponent covers the truth 91-99% of the time."""
    rng = np.random.default_rng(1)
    x = np.geomspace(1, 1e4, 8)
    hits = 0
    n = 400
    for _ in range(n):
        y = 2.0 * x**0.5 * np.exp(0.1 * rng.standard_normal(x.size))
        lo, hi = fitting.fit_loglog(x, y).ci["k"]
        hits += lo <= 0.5 <= hi
    assert 0.91 <= hits / n <= 0.99


def test_power_offset_recovers_constant_and_exponent():
    rng = np.random.default_rng(2)
    x = np.geomspace(1e6, 1e10, 24)
    y = (0.5 + 40.0 * x**-0.25) * np.exp(0.01 * rng.standard_normal(x.size))
    fit = fitting.fit_power_offset(x, y)
    assert fit.params["k"] == pytest.approx(-0.25, abs=0.04)
    assert fit.params["offset"] == pytest.approx(0.5, abs=0.08)
    assert fit.ci["k"][0] < -0.25 < fit.ci["k"][1]
    # linear space, a return approaching a ceiling from below
    r = 10.0 - 50.0 * x**-0.15 + 0.05 * rng.standard_normal(x.size)
    lin = fitting.fit_power_offset(x, r, space="linear", offset_bounds=(-np.inf, np.inf))
    assert lin.params["k"] == pytest.approx(-0.15, abs=0.04)
    assert lin.params["offset"] == pytest.approx(10.0, abs=0.6)


def test_power_offset_delta_method_coverage():
    """Asymptotic intervals of the power law plus constant cover at roughly 95% (80 draws)."""
    rng = np.random.default_rng(3)
    x = np.geomspace(1, 1e4, 16)
    hits, n = 0, 80
    for _ in range(n):
        y = (1.0 + 5.0 * x**-0.5) * np.exp(0.02 * rng.standard_normal(x.size))
        lo, hi = fitting.fit_power_offset(x, y).ci["k"]
        hits += lo <= -0.5 <= hi
    assert 0.85 <= hits / n <= 1.0


def test_fixed_effects_shared_slope_per_group_intercept():
    rng = np.random.default_rng(4)
    sigma = np.tile([1.0, 2.0, 4.0, 8.0, 16.0], 2)
    task = np.repeat(["cheetah", "walker"], 5)
    c = np.where(task == "cheetah", 256.0, 512.0)
    B = c * sigma**-0.6 * np.exp(0.05 * rng.standard_normal(sigma.size))
    fit = fitting.fit_fixed_effects(sigma, B, task)
    assert fit.params["k"] == pytest.approx(-0.6, abs=0.08)
    assert fit.params["c[cheetah]"] == pytest.approx(256, rel=0.2)
    assert fit.params["c[walker]"] == pytest.approx(512, rel=0.2)
    pred = fitting.predict_fixed_effects(fit.params, np.array([1.0]), "walker")
    assert pred[0] == pytest.approx(fit.params["c[walker]"])


def _chinchilla_data(rng, noise=0.01):
    N = np.repeat(np.geomspace(1e5, 1e8, 6), 8)
    D = np.tile(np.geomspace(1e6, 1e10, 8), 6)
    L = (0.5 + 40.0 / N**0.34 + 60.0 / D**0.28) * np.exp(noise * rng.standard_normal(N.size))
    return N, D, L


def test_chinchilla_approach3_recovers_surface():
    N, D, L = _chinchilla_data(np.random.default_rng(5))
    fit = isoflop.fit_chinchilla(N, D, L, n_boot=6, n_starts=8)
    p = fit.params
    assert p["alpha"] == pytest.approx(0.34, abs=0.06)
    assert p["beta"] == pytest.approx(0.28, abs=0.05)
    assert p["E"] == pytest.approx(0.5, abs=0.1)
    assert p["a"] == pytest.approx(0.28 / 0.62, abs=0.06)
    assert fit.ci["alpha"][0] <= p["alpha"] <= fit.ci["alpha"][1]
    # allocation obeys C = 6 N D
    n_opt, d_opt, _ = isoflop.chinchilla_allocation(p, [1e20])
    assert 6 * n_opt[0] * d_opt[0] == pytest.approx(1e20, rel=1e-9)


@pytest.mark.parametrize("n_full", [24, pytest.param(None, marks=pytest.mark.slow)])
def test_chinchilla_pruned_starts_match_full_grid(n_full):
    """Refining only the best-scored starts finds the optimum of many (None: all 4500)."""
    N, D, L = _chinchilla_data(np.random.default_rng(6))
    pruned = isoflop.fit_chinchilla(N, D, L, n_boot=0, n_starts=4, method="grid")
    full = isoflop.fit_chinchilla(N, D, L, n_boot=0, n_starts=n_full, method="grid")
    assert pruned.loss == pytest.approx(full.loss, rel=1e-3, abs=1e-9)
    assert pruned.params["alpha"] == pytest.approx(full.params["alpha"], abs=1e-3)


def test_unit_rescaling_leaves_exponents_unchanged():
    rng = np.random.default_rng(7)
    C = np.geomspace(1e15, 1e21, 12)
    N = 0.1 * C**0.5 * np.exp(0.05 * rng.standard_normal(C.size))
    a = fitting.fit_loglog(C, N)
    b = fitting.fit_loglog(C / PF_DAY, N)
    assert a.params["k"] == pytest.approx(b.params["k"], abs=1e-10)
    assert a.ci["k"] == pytest.approx(b.ci["k"], abs=1e-10)
    y = 2.0 + 1e3 * C**-0.2
    p1 = fitting.fit_power_offset(C, y)
    p2 = fitting.fit_power_offset(C / PF_DAY, y)
    assert p1.params["k"] == pytest.approx(p2.params["k"], abs=1e-5)
    assert p1.params["offset"] == pytest.approx(p2.params["offset"], rel=1e-4)
    N2, D2, L2 = _chinchilla_data(np.random.default_rng(8))
    c1 = isoflop.fit_chinchilla(N2, D2, L2, n_boot=0, n_starts=4)
    c2 = isoflop.fit_chinchilla(N2 / 1e6, D2 / 1e9, L2, n_boot=0, n_starts=4)
    assert c1.params["a"] == pytest.approx(c2.params["a"], abs=0.01)


def test_bootstrap_over_groups_and_delta_method():
    rng = np.random.default_rng(9)
    x = np.repeat(np.arange(1.0, 6.0), 4)
    groups = np.repeat(np.arange(5), 4)
    y = 2 * x + rng.standard_normal(x.size)

    def slope(idx):
        return {"k": np.polyfit(x[idx], y[idx], 1)[0]}

    bs = fitting.bootstrap(slope, x.size, groups=groups, n_boot=100, seed=0)
    assert bs.unit == "groups" and bs.ci["k"][0] < 2 < bs.ci["k"][1]
    dm = fitting.delta_method(lambda th: th[0] * th[1], [2.0, 3.0], np.diag([0.01, 0.04]))
    # var = 3^2 0.01 + 2^2 0.04 = 0.25
    assert float(dm["se"]) == pytest.approx(0.5, rel=1e-4)


def test_rolling_cv_scores_true_law_better_than_wrong_one():
    rng = np.random.default_rng(10)
    b = np.repeat(np.geomspace(1e15, 1e20, 6), 3)
    y = 5 * b**-0.1 * np.exp(0.02 * rng.standard_normal(b.size))

    def power(tr, te):
        f = fitting.fit_loglog(b[tr], y[tr])
        return fitting.predict_power(f.params, b[te])

    def constant(tr, te):
        return np.full(te.size, y[tr].mean())

    good = fitting.rolling_cv(b, y, power)
    bad = fitting.rolling_cv(b, y, constant)
    assert good.rmse < bad.rmse / 3
    assert len(good.folds) == 3
    ho = fitting.holdout_largest(b, y, power)
    assert len(ho.folds) == 1 and ho.folds[0]["test"] == [b.max()]


def test_errors_are_one_line_and_name_the_input():
    with pytest.raises(FitError, match=r"too few points for x: 2 given, at least 3"):
        fitting.fit_loglog([1, 2], [1, 2])
    with pytest.raises(FitError, match=r"^y: 1 non-positive value"):
        fitting.fit_loglog([1, 2, 3], [1, -2, 3])
    with pytest.raises(FitError, match=r"N: 1 NaN"):
        isoflop.fit_chinchilla([1, 2, np.nan, 4, 5, 6], [1] * 6, [1] * 6)
    with pytest.raises(FitError, match="differ in length"):
        fitting.fit_loglog([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(FitError, match=r"^x: 1 distinct value, at least 2 needed; the slope"):
        fitting.fit_loglog([2, 2, 2], [1, 2, 3])
    try:
        fitting.fit_power_offset([1, 2, 3], [1, 2, 3])
    except FitError as err:
        assert "\n" not in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected FitError")


def test_rolling_cv_folds_keep_forecasts_for_extrapolation_figures():
    from analysis.fitting import fit_loglog, predict_power, rolling_cv

    budgets = np.logspace(10, 15, 6)
    y = 3.0 * budgets**-0.1

    def fit_predict(train, test):
        return predict_power(fit_loglog(budgets[train], y[train]).params, budgets[test])

    cv = rolling_cv(budgets, y, fit_predict, min_train=3)
    assert [f["budget"] for f in cv.folds] == [[budgets[3]], [budgets[4]], [budgets[5]]]
    for fold in cv.folds:  # an exact power law is forecast exactly
        assert fold["pred"] == pytest.approx(fold["actual"], rel=1e-9)


@pytest.mark.parametrize("x", [[3.0] * 6, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]],
                         ids=["constant", "two-values"])
@pytest.mark.parametrize("space", ["log", "linear"])
def test_power_offset_needs_three_distinct_x(x, space):
    """With < 3 distinct x, offset, c and k are not identifiable: one line instead of a k
    stuck on its bound (it returned k = -5 or 5 with a finite interval)."""
    y = np.arange(1.0, 7.0)
    k = len(set(x))
    with pytest.raises(FitError, match=rf"^x: {k} distinct values?, at least 3 needed") as e:
        fitting.fit_power_offset(x, y, space=space)
    assert "\n" not in str(e.value)
    with pytest.raises(FitError, match=rf"^sigma: {k} distinct value"):  # named as asked
        fitting.fit_power_offset(x, y, space=space, names=("sigma", "D"))


def test_fits_state_form_loss_space_starts_and_intervals():
    """``extra`` says what was fitted and how: the report and laws.json print it."""
    rng = np.random.default_rng(11)
    x = np.geomspace(1, 1e4, 12)
    y = (1.0 + 5.0 * x**-0.5) * np.exp(0.02 * rng.standard_normal(x.size))
    log_fit = fitting.fit_power_offset(x, y)
    assert log_fit.extra["form"] == "y = offset + c x^k"
    m = log_fit.extra["method"]
    # 24 k values (0 dropped) x 6 offsets, all feasible here; 6 refined
    assert m.startswith("least squares on log y (log-space residuals)")
    assert "144 starts" in m and "best 6 refined" in m and "delta-method" in m
    lin = fitting.fit_power_offset(x, y, space="linear", n_boot=5)
    m = lin.extra["method"]
    assert m.startswith("least squares on y (linear residuals)")
    assert "24 starts (one per k" in m and "percentile bootstrap over points (5" in m
    N, D, L = _chinchilla_data(np.random.default_rng(12))
    ch = isoflop.fit_chinchilla(N, D, L, n_boot=0, n_starts=3, method="grid")
    assert ch.extra["form"] == "L = E + A/N^alpha + B/D^beta"
    m = ch.extra["method"]
    for part in ("Huber loss (delta 0.001) on log L", "log-sum-exp", "4500-start grid",
                 "best 3 refined", "no intervals"):
        assert part in m, (part, m)
    # log-parameters are named apart from the allocation exponents a, b
    assert set(ch.extra["theta"]) == {"log_A", "log_B", "log_E"}
    assert ch.extra["theta"]["log_E"] == pytest.approx(np.log(ch.params["E"]))
    assert "form" in ch.to_json()["extra"]
    from analysis import utd

    law = utd.fit_utd(np.repeat([0.5, 1, 2, 4, 8], 2), 1e5 + (3e6 / np.repeat(
        [0.5, 1, 2, 4, 8], 2)) ** 0.8)
    assert law.extra["method"].startswith("least squares on log y (log-space residuals)")
    assert "25 starts" not in law.extra["method"] and "k = -alpha" in law.extra["method"]
