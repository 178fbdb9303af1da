"""Each study law recovers the parameters it was generated from (with realistic noise),
does not depend on the units of compute, and rejects bad input with one clear line.

Tolerances (absolute unless stated) are written next to each assertion; they are a few
standard errors of the estimator at the stated noise, checked against the fitted CIs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import fitting, generalization, isoflop, scaling, synthetic, utd
from analysis.fitting import FitError

PF_DAY = 1e15 * 86400
BC = synthetic.BC_TRUTH
A_TRUE = BC["beta"] / (BC["alpha"] + BC["beta"])  # N_opt ~ C^a


def _isoflop_data(rng, noise=0.005, n_sizes=9, n_budgets=6):
    """Loss at (N, C) on a grid of budgets, D = C / (6 N), from the Chinchilla surface."""
    sizes = np.geomspace(3e4, 3e8, n_sizes)
    budgets = np.geomspace(1e14, 1e18, n_budgets)
    N, C = (a.ravel() for a in np.meshgrid(sizes, budgets))
    D = C / (6 * N)
    L = synthetic.bc_loss(N, D) * np.exp(noise * rng.standard_normal(N.size))
    return N, C, D, L


def test_isoflop_profiles_recover_allocation_exponent():
    N, C, D, L = _isoflop_data(np.random.default_rng(0))
    fit = isoflop.fit_isoflop(N, C, L, D=D)
    assert fit.params["a"] == pytest.approx(A_TRUE, abs=0.05)
    assert fit.params["b"] == pytest.approx(1 - A_TRUE, abs=0.05)
    assert fit.params["a"] + fit.params["b"] == pytest.approx(1.0, abs=1e-6)
    assert fit.ci["a"][0] < fit.params["a"] < fit.ci["a"][1]
    assert fit.params["L_exponent"] < 0
    fc = isoflop.forecast_isoflop(fit, 1e19)
    assert fc["N_opt"]["low"] < fc["N_opt"]["value"] < fc["N_opt"]["high"]
    n_true = synthetic.bc_loss  # the true optimum at 1e19, by brute force over N
    grid = np.geomspace(1e5, 1e10, 4000)
    n_star = grid[np.argmin(n_true(grid, 1e19 / (6 * grid)))]
    assert fc["N_opt"]["value"] == pytest.approx(n_star, rel=0.5)


def test_isoflop_surfaces_and_envelope_agree_with_truth():
    N, C, D, L = _isoflop_data(np.random.default_rng(1))
    quad = isoflop.fit_quadratic_surface(N, D, L)
    assert quad.params["a"] == pytest.approx(A_TRUE, abs=0.07)
    assert quad.ci["a"][0] < quad.params["a"] < quad.ci["a"][1]
    env = isoflop.fit_envelope(N, C, L)
    assert env.params["a"] == pytest.approx(A_TRUE, abs=0.15)  # coarse: sizes 3.2x apart
    cmp_ = isoflop.compare_isoflop_methods(N, C, L, D, n_starts=4)
    assert set(cmp_["rmse"]) == {"isoflop_profiles", "envelope", "chinchilla",
                                 "quadratic_surface"}
    assert cmp_["best"] in cmp_["rmse"]
    # the true model family forecasts the held-out budgets to within 5% in loss
    assert cmp_["rmse"]["chinchilla"] < 0.05


def test_isoflop_unit_rescaling_and_errors():
    N, C, D, L = _isoflop_data(np.random.default_rng(2))
    a = isoflop.fit_isoflop(N, C, L, D=D)
    b = isoflop.fit_isoflop(N, C / PF_DAY, L, D=D)
    assert a.params["a"] == pytest.approx(b.params["a"], abs=1e-9)
    assert a.params["L_exponent"] == pytest.approx(b.params["L_exponent"], abs=1e-9)
    with pytest.raises(FitError, match="budgets with an interior minimum"):
        isoflop.fit_isoflop(N[C < 2e15], C[C < 2e15], L[C < 2e15])
    with pytest.raises(FitError, match="C: 1 non-positive"):
        isoflop.fit_isoflop(N, np.where(np.arange(N.size) == 0, -1.0, C), L)


def _hilton_data(rng, noise=0.1, seeds=2):
    """Returns from Hilton's law over a grid of sizes and interactions (as in synthetic)."""
    t = synthetic.HILTON_TRUTH
    sizes = synthetic.IMPALA_PARAMS * np.array([0.25, 0.5, 1, 2, 4, 8]) ** 2
    E = np.geomspace(2e5, 5e7, 30)
    N, EE = (a.ravel() for a in np.meshgrid(sizes, E))
    N, EE = np.tile(N, seeds), np.tile(EE, seeds)
    ret = synthetic.hilton_return(N, EE) + noise * rng.standard_normal(N.size)
    kappa = 10 * synthetic.IMPALA_FLOPS / synthetic.IMPALA_PARAMS
    return N, EE, ret, kappa * N * EE, t


def test_intrinsic_performance_joint_fit_recovers_exponents():
    N, E, ret, C, t = _hilton_data(np.random.default_rng(3))
    fit = scaling.fit_intrinsic(N, E, ret, C=C)
    p = fit.params
    assert p["alpha_N"] == pytest.approx(t["alpha_N"], abs=0.04)
    assert p["alpha_E"] == pytest.approx(t["alpha_E"], abs=0.04)
    assert p["k"] == pytest.approx(t["k"], abs=0.02)
    # the scale: I equals compute on the frontier, so N_c/E_c match the truth normalised so
    nc, ec = scaling._normalise_intrinsic(t["N_c"], t["E_c"], t["alpha_N"], t["alpha_E"],
                                       fit.extra["kappa"])
    assert math.log(p["N_c"] / nc) == pytest.approx(0, abs=0.5)
    assert math.log(p["E_c"] / ec) == pytest.approx(0, abs=0.5)
    # on the frontier I = C: the best N at a budget has I close to that budget
    budget = 1e16
    n = np.geomspace(1e4, 1e9, 3000)
    i_best = scaling.intrinsic_performance(p, n, budget / (fit.extra["kappa"] * n)).max()
    assert i_best == pytest.approx(budget, rel=1e-3)
    # N_opt forecast: the closed form is the argmax of I along the budget line, and it is
    # close to the truth's (which depends only on the exponents and N_c^aN / E_c^aE)
    kappa = fit.extra["kappa"]
    n_best = n[np.argmax(scaling.intrinsic_performance(p, n, budget / (kappa * n)))]
    f = scaling.forecast_intrinsic(fit, budget)
    assert f["value"] == pytest.approx(n_best, rel=0.01)
    assert math.isnan(f["low"])  # no bootstrap draws: no interval
    n_true = float(scaling.intrinsic_n_opt(t, budget, kappa))
    assert math.log(f["value"] / n_true) == pytest.approx(0, abs=0.7)


def test_intrinsic_search_reaches_the_truth_on_noiseless_returns():
    """Without noise the only error left is the 12-knot map's: the exponents come out within
    0.01 (a search on PAVA's piecewise-constant loss stopped at alpha_N 0.62 here)."""
    N, E, ret, C, t = _hilton_data(np.random.default_rng(0), noise=0.0, seeds=1)
    p = scaling.fit_intrinsic(N, E, ret, C=C).params
    for k in ("alpha_N", "alpha_E", "k"):
        assert p[k] == pytest.approx(t[k], abs=0.01), k


def test_intrinsic_units_do_not_change_exponents_and_bootstrap_intervals():
    N, E, ret, C, _ = _hilton_data(np.random.default_rng(4), seeds=1)
    a = scaling.fit_intrinsic(N, E, ret, C=C)
    b = scaling.fit_intrinsic(N, E, ret, C=C / PF_DAY)
    assert a.params["alpha_N"] == pytest.approx(b.params["alpha_N"], abs=1e-9)
    assert a.params["beta"] == pytest.approx(b.params["beta"], abs=1e-9)
    assert b.extra["kappa"] == pytest.approx(a.extra["kappa"] / PF_DAY)
    groups = np.repeat(np.arange(30), 6)  # one "run" per interaction row of the grid
    bs = scaling.fit_intrinsic(N, E, ret, C=C, groups=groups, n_boot=8)
    lo, hi = bs.ci["alpha_N"]
    assert lo <= hi and math.isfinite(lo)
    f = scaling.forecast_intrinsic(bs, 1e16)  # interval from the same bootstrap draws
    assert f["low"] < f["high"] and "bootstrap" in f["method"]
    d = bs.extra["_draws"]
    per_draw = [float(scaling.intrinsic_n_opt({k: d[k][i] for k in d}, 1e16, bs.extra["kappa"]))
                for i in range(len(d["k"]))]
    assert min(per_draw) <= f["low"] < f["high"] <= max(per_draw)
    with pytest.raises(FitError, match="one model size"):
        scaling.fit_intrinsic(np.full(20, 1e6), np.geomspace(1, 1e3, 20), np.arange(20.0))


def test_intrinsic_forecasts_n_opt_and_d_opt_from_the_same_draws():
    """D_opt = C / (kappa N_opt) at the budget, with a percentile interval over the same
    bootstrap draws as N_opt's (so its ends are the images of N_opt's: D falls as N rises)."""
    N, E, ret, C, _ = _hilton_data(np.random.default_rng(4), seeds=1)
    fit = scaling.fit_intrinsic(N, E, ret, C=C, groups=np.repeat(np.arange(30), 6), n_boot=6)
    budget, kappa = 1e16, fit.extra["kappa"]
    fc = scaling.forecast_intrinsic_allocation(fit, budget)
    n, d = fc["N_opt"], fc["D_opt"]
    assert n == scaling.forecast_intrinsic(fit, budget)
    assert d["value"] == pytest.approx(budget / (kappa * n["value"]), rel=1e-12)
    assert d["value"] == pytest.approx(float(scaling.intrinsic_d_opt(fit.params, budget, kappa)))
    assert d["low"] < d["value"] < d["high"] and d["method"] == n["method"]
    assert d["low"] == pytest.approx(budget / (kappa * n["high"]), rel=1e-9)
    assert d["high"] == pytest.approx(budget / (kappa * n["low"]), rel=1e-9)
    fit.extra.pop("_draws")  # no bootstrap: point values, NaN intervals
    fc = scaling.forecast_intrinsic_allocation(fit, budget)
    assert math.isnan(fc["D_opt"]["low"]) and fc["D_opt"]["value"] == d["value"]


def test_utd_data_to_threshold_law():
    rng = np.random.default_rng(5)
    t = synthetic.UTD_TRUTH
    sigma = np.repeat([0.5, 1, 2, 4, 8, 16, 32], 3)
    D = synthetic.utd_best_data(sigma, t) * np.exp(
        0.03 * rng.standard_normal(sigma.size))
    fit = utd.fit_utd(sigma, D)
    p = fit.params
    assert p["alpha"] == pytest.approx(t["alpha_J"], abs=0.1)
    assert math.log(p["beta"] / t["beta_J"]) == pytest.approx(0, abs=0.5)
    assert p["D_min"] == pytest.approx(t["D_min"], rel=0.5)
    for k, truth in (("alpha", t["alpha_J"]), ("beta", t["beta_J"])):
        assert fit.ci[k][0] < truth < fit.ci[k][1], k
    with pytest.raises(FitError, match="sigma: 2 distinct values"):
        utd.fit_utd([1, 1, 2, 2], [5, 6, 3, 4])


def test_utd_law_on_flat_or_rising_data_fails_with_one_clear_line():
    """Flat or rising D_J(sigma) puts alpha on its bound 0.01, where beta = c^(1/alpha) leaves
    the float range: a FitError saying so (it was an OverflowError or a 'math domain
    error' that stopped the whole UTD study), or interval ends of 0 / inf, never a crash."""
    sigma = np.repeat([0.5, 1, 2, 4, 8], 2)
    with pytest.raises(FitError, match="all 10 values equal"):
        utd.fit_utd(sigma, np.full(sigma.size, 1e5))
    rising = 1e5 * sigma**0.3  # beta would overflow
    tiny_flat = 1e-3 * np.exp(1e-3 * np.random.default_rng(0).standard_normal(sigma.size))
    for D in (rising, tiny_flat):  # tiny_flat: beta would underflow to 0, then log(0)
        for n_boot in (0, 5):
            with pytest.raises(FitError, match="beta = 10\\^.* out of floating-point range"):
                utd.fit_utd(sigma, D, n_boot=n_boot)
    # barely falling, 0.1% noise: beta is fine, but its interval's ends overflowed exp()
    D = (1e5 + 50 / sigma) * np.exp(1e-3 * np.random.default_rng(3).standard_normal(sigma.size))
    fit = utd.fit_utd(sigma, D)
    assert math.isfinite(fit.params["beta"]) and fit.params["beta"] > 0
    assert fit.ci["beta"][0] == 0.0 and fit.ci["beta"][1] == math.inf


def test_best_hparams_and_their_power_laws():
    rng = np.random.default_rng(6)
    t = synthetic.UTD_TRUTH
    sig, bs, lrs = np.meshgrid([1, 2, 4, 8, 16], 2.0 ** np.arange(4, 11),
                               1e-3 * 2.0 ** np.arange(-4, 3, 0.5))
    sig, bs, lrs = (np.repeat(a.ravel(), 2) for a in (sig, bs, lrs))
    D = synthetic.utd_data_to_threshold(sig, bs, lrs) * np.exp(
        0.02 * rng.standard_normal(sig.size))
    best = utd.best_hparams(D, sig, bs, lrs, n_boot=20)
    assert [b["sigma"] for b in best] == [1, 2, 4, 8, 16]
    s = np.array([b["sigma"] for b in best])
    fb = utd.fit_hparam_law(s, [b["B"] for b in best], name="B")
    fl = utd.fit_hparam_law(s, [b["lr"] for b in best], name="lr")
    assert fb.params["k"] == pytest.approx(t["B_exp"], abs=0.15)  # grid of B is 2x apart
    assert fl.params["k"] == pytest.approx(t["lr_exp"], abs=0.1)
    # sigma*(F): the minimiser of C + delta D agrees with a brute-force search
    law = {"D_min": t["D_min"], "beta": t["beta_J"], "alpha": t["alpha_J"]}
    opt = utd.optimal_utd(law, fb.params, 1.4e5, delta=1e9)
    grid = np.geomspace(1e-2, 1e3, 200_000)
    F = utd.utd_compute(law, fb.params, grid, 1.4e5) + 1e9 * utd.predict_utd(law, grid)
    assert opt["sigma"] == pytest.approx(grid[np.argmin(F)], rel=1e-3)
    assert opt["F"] == pytest.approx(F.min(), rel=1e-6)


def test_utd_forecast_point_is_the_optimum_and_draws_follow_the_fit():
    rng = np.random.default_rng(8)
    t = synthetic.UTD_TRUTH
    sigma = np.repeat([0.5, 1, 2, 4, 8, 16, 32], 3)
    D = synthetic.utd_best_data(sigma, t) * np.exp(
        0.05 * rng.standard_normal(sigma.size))
    grid = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    fb = utd.fit_hparam_law(grid, 256 * grid**-0.6 * np.exp(0.1 * rng.standard_normal(5)))
    fl = utd.fit_hparam_law(grid, 1e-3 * grid**-0.5 * np.exp(0.1 * rng.standard_normal(5)),
                             name="lr")
    for n_boot, source in ((0, "multivariate t"), (60, "bootstrap")):
        fit = utd.fit_utd(sigma, D, n_boot=n_boot)
        fc = utd.forecast_utd(fit, fb, 1.4e5, 1e9, lr_law=fl)
        opt = utd.optimal_utd(fit.params, fb.params, 1.4e5, 1e9)
        for k in ("sigma", "B", "F", "C", "D"):
            assert fc[k]["value"] == pytest.approx(opt[k]), k
            assert fc[k]["low"] < fc[k]["value"] < fc[k]["high"], (k, fc[k])
        assert fc["lr"]["value"] == pytest.approx(fl.params["c[all]"] * opt["sigma"] ** -0.5,
                                                  rel=0.1)
        assert f"D_J(sigma) {source}" in fc["sigma"]["method"]
    # more noise in the B* law: a wider interval on B*(sigma*)
    fb_noisy = utd.fit_hparam_law(grid, fb.params["c[all]"] * grid ** fb.params["k"]
                                   * np.exp(0.4 * rng.standard_normal(5)))
    wide = utd.forecast_utd(fit, fb_noisy, 1.4e5, 1e9)["B"]
    assert np.log(wide["high"] / wide["low"]) > np.log(fc["B"]["high"] / fc["B"]["low"])


def test_utd_workflow_several_tasks_shared_slope_and_bootstrap():
    """Two tasks with different intercepts: the shared slopes, each task's intercepts and
    each task's D_J(sigma) law are recovered; bootstrap intervals over seeds contain the
    truth."""
    rng = np.random.default_rng(11)
    t = synthetic.UTD_TRUTH
    grid = np.meshgrid([1, 2, 4, 8, 16], 2.0 ** np.arange(3, 11),
                       1e-3 * 2.0 ** np.arange(-4, 3, 0.5))
    sig, bs, lrs = (np.repeat(a.ravel(), 2) for a in grid)  # 2 seeds per cell
    cols: dict[str, list] = {"sigma": [], "B": [], "lr": [], "task": [], "D": []}
    for task in synthetic.UTD_TASKS:
        tt = synthetic.utd_task_truth(task)
        D = synthetic.utd_data_to_threshold(sig, bs, lrs, tt) * np.exp(
            0.02 * rng.standard_normal(sig.size))
        for k, v in (("sigma", sig), ("B", bs), ("lr", lrs), ("D", D)):
            cols[k].extend(v)
        cols["task"].extend([task] * sig.size)
    wf = utd.fit_utd_workflow({t["J"]: cols["D"]}, cols["sigma"], cols["B"], cols["lr"],
                               task=cols["task"], n_boot=20)
    fb, fl = wf.hparam_fits["B"], wf.hparam_fits["lr"]
    assert fb.params["k"] == pytest.approx(t["B_exp"], abs=0.15)  # B grid is 2x apart
    assert fl.params["k"] == pytest.approx(t["lr_exp"], abs=0.1)
    for fit, k_true in ((fb, t["B_exp"]), (fl, t["lr_exp"])):
        lo, hi = fit.extra["ci_bootstrap"]["k"]  # over seeds; the grid adds +-0.1 of bias
        assert lo <= hi and lo - 0.1 < k_true < hi + 0.1
    h, w = synthetic.UTD_TASKS
    truth = {task: synthetic.utd_task_truth(task) for task in (h, w)}
    for task in (h, w):
        assert fb.params[f"c[{task}]"] == pytest.approx(truth[task]["B0"], rel=0.3)
        assert fl.params[f"c[{task}]"] == pytest.approx(truth[task]["lr0"], rel=0.3)
        fit = wf.utd_fits[(t["J"], task)]
        p = fit.params
        assert p["alpha"] == pytest.approx(t["alpha_J"], abs=0.1), task
        assert math.log(p["beta"] / truth[task]["beta_J"]) == pytest.approx(0, abs=0.5), task
        assert "bootstrap" in fit.extra["method"]
        assert fit.extra["bootstrap"]["n_failed"] <= 2
        for k in ("alpha", "beta"):
            lo, hi = fit.ci[k]
            assert lo < truth[task][f"{k}_J"] < hi, (task, k, fit.ci[k])
    # the intercept ratio between tasks (the per-task effect) is recovered
    ratio = fb.params[f"c[{w}]"] / fb.params[f"c[{h}]"]
    assert ratio == pytest.approx(synthetic.UTD_TASKS[w]["B_scale"], rel=0.25)
    ratio = fl.params[f"c[{w}]"] / fl.params[f"c[{h}]"]
    assert ratio == pytest.approx(synthetic.UTD_TASKS[w]["lr_scale"], rel=0.25)
    for r in wf.best:
        for k in ("B", "lr"):
            assert r[f"{k}_low"] * (1 - 1e-9) <= r[k] <= r[f"{k}_high"] * (1 + 1e-9)
    # with n_boot=0 the intervals are the delta-method ones and the point fits are identical
    wf0 = utd.fit_utd_workflow({t["J"]: cols["D"]}, cols["sigma"], cols["B"], cols["lr"],
                                task=cols["task"], n_boot=0)
    assert wf0.utd_fits[(t["J"], h)].params == pytest.approx(wf.utd_fits[(t["J"], h)].params)
    assert "delta" in wf0.utd_fits[(t["J"], h)].extra["method"]


def test_pareto_front_keeps_only_non_dominated_points():
    x = np.array([1.0, 2.0, 3.0, 1.5, 4.0])
    y = np.array([5.0, 3.0, 4.0, 6.0, 1.0])
    assert list(utd.pareto_front(x, y)) == [0, 1, 4]


def test_return_vs_loss_inverse_power_law():
    rng = np.random.default_rng(7)
    L = np.geomspace(0.6, 2.0, 30)
    R = 100 + BC["R0"] * L ** -BC["kappa"] * np.exp(0.02 * rng.standard_normal(L.size))
    fit = isoflop.fit_return_vs_loss(L, R)
    assert fit.params["k"] == pytest.approx(-BC["kappa"], abs=0.3)
    assert fit.params["c"] == pytest.approx(BC["R0"], rel=0.25)


def test_complexity_law_and_frontier_size_law():
    k = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    D = 1e5 * k**1.5 * np.exp(0.05 * np.random.default_rng(8).standard_normal(k.size))
    fit = generalization.fit_complexity(k, D)
    assert fit.params["k"] == pytest.approx(1.5, abs=0.15)
    # frontier: size s is best on a compute range centred at 1e10 s^2 -> N_opt ~ C^0.5
    sizes = np.repeat([1e5, 4e5, 1.6e6, 6.4e6], 10)
    C = np.concatenate([np.geomspace(0.5, 2, 10) * 1e10 * (s / 1e5) ** 2
                        for s in (1e5, 4e5, 1.6e6, 6.4e6)])
    fr = scaling.frontier_size_law(C, sizes, candidates=[2.5e4, 1e5, 4e5, 1.6e6, 6.4e6])
    assert fr.params["k"] == pytest.approx(0.5, abs=1e-6)
    assert fr.used == [1e5, 4e5, 1.6e6, 6.4e6]  # the sizes on the frontier, and the others
    assert fr.dropped == [{"what": 2.5e4, "reason": "never the best size where sizes compete"}]
    with pytest.raises(FitError, match="2 sizes on the efficient frontier"):
        scaling.frontier_size_law(C[:20], sizes[:20])


def test_generalization_score_criteria():
    s = np.arange(1, 21) / 20.0  # 20 test tasks scoring 0.05 ... 1.0
    rows = np.vstack([s, s[::-1]])
    # >= J on 95% of 20 tasks = 19 tasks: the 19th largest score (the 2nd smallest)
    assert generalization.generalization_score(rows, fraction=0.95) == pytest.approx([0.1, 0.1])
    assert generalization.generalization_score(rows, fraction=0.9) == pytest.approx([0.15, 0.15])
    assert generalization.generalization_score(rows, fraction=1.0) == pytest.approx([0.05, 0.05])
    # mean of the lowest 10% (2 tasks)
    lo = generalization.generalization_score(rows, criterion="lowest", percentile=10)
    assert lo == pytest.approx([0.075, 0.075])
    # NaN tasks (not evaluated at that point) are ignored
    r = s.copy()
    r[0] = np.nan
    assert generalization.generalization_score(r[None], fraction=1.0) == pytest.approx([0.1])
    with pytest.raises(FitError, match="criterion must be"):
        generalization.generalization_score(rows, criterion="median")
    with pytest.raises(FitError, match="fraction"):
        generalization.generalization_score(rows, fraction=1.5)


# ------------------------------------------------------------------ units and bad input

MILLION = 1e6


def _rescale_case(name: str):
    """``(fit, data, rescaled data, expected params of the rescaled fit from the first)``
    for one law: the rescaled data are the same measurements in other units."""
    rng = np.random.default_rng(21)
    if name == "fit_utd":  # D in millions of env steps, sigma per 2 updates
        t = synthetic.UTD_TRUTH
        sig = np.repeat([0.5, 1, 2, 4, 8, 16, 32], 3)
        D = synthetic.utd_best_data(sig, t) * np.exp(
            0.03 * rng.standard_normal(sig.size))
        s, d = 0.5, 1 / MILLION
        return (utd.fit_utd, (sig, D), (s * sig, d * D),
                lambda p: {"alpha": p["alpha"], "D_min": d * p["D_min"],
                           "beta": s * d ** (1 / p["alpha"]) * p["beta"]})
    if name == "fit_hparam_law":  # batch size in thousands, sigma doubled
        sig = np.tile([1.0, 2.0, 4.0, 8.0, 16.0], 2)
        task = np.repeat(["a", "b"], 5)
        B = np.where(task == "a", 256.0, 512.0) * sig**-0.6 * np.exp(
            0.05 * rng.standard_normal(sig.size))
        s, v = 2.0, 1e-3
        return (lambda x, y: utd.fit_hparam_law(x, y, task), (sig, B), (s * sig, v * B),
                lambda p: {"k": p["k"], **{f"c[{g}]": v * s ** -p["k"] * p[f"c[{g}]"]
                                           for g in ("a", "b")}})
    N, C, D, L = _isoflop_data(rng)
    if name == "fit_quadratic_surface":  # parameters in millions, samples in billions
        return (isoflop.fit_quadratic_surface, (N, D, L), (N / MILLION, D / 1e9, 3 * L),
                lambda p: {"a": p["a"], "b": p["b"]})
    if name == "fit_envelope":  # FLOPs -> PF-days
        return (isoflop.fit_envelope, (N, C, L), (N / MILLION, C / PF_DAY, 3 * L),
                lambda p: {"a": p["a"], "L_exponent": p["L_exponent"],
                           "N_coef": p["N_coef"] / MILLION * PF_DAY ** p["a"]})
    if name == "fit_return_vs_loss":  # loss in millinats
        loss = np.geomspace(0.6, 2.0, 20)
        ret = 100 + BC["R0"] * loss ** -BC["kappa"] * np.exp(
            0.02 * rng.standard_normal(loss.size))
        return (isoflop.fit_return_vs_loss, (loss, ret), (1e3 * loss, ret),
                lambda p: {"k": p["k"], "offset": p["offset"],
                           "c": p["c"] * 1e3 ** -p["k"]})
    if name == "frontier_size_law":  # FLOPs -> PF-days, parameters in millions
        sizes = np.repeat([1e5, 4e5, 1.6e6, 6.4e6], 10)
        comp = np.concatenate([np.geomspace(0.5, 2, 10) * 1e10 * (q / 1e5) ** 2.2
                               for q in (1e5, 4e5, 1.6e6, 6.4e6)])
        return (scaling.frontier_size_law, (comp, sizes), (comp / PF_DAY, sizes / MILLION),
                lambda p: {"k": p["k"]})
    raise KeyError(name)


@pytest.mark.parametrize("name", ["fit_utd", "fit_hparam_law", "fit_quadratic_surface",
                                  "fit_envelope", "fit_return_vs_loss", "frontier_size_law"])
def test_exponents_do_not_depend_on_units(name: str):
    """The same data in other units (FLOPs -> PF-days, parameters -> millions, ...): every
    exponent is unchanged and each scale parameter moves exactly as the units say (beta of
    D_J(sigma) by the sigma factor times the D factor^(1/alpha), D_min by the D factor)."""
    fit, data, scaled, expected = _rescale_case(name)
    a, b = fit(*data), fit(*scaled)
    for key, want in expected(a.params).items():
        # closed-form fits agree to rounding; the least-squares ones (utd, return vs loss)
        # to the optimiser's tolerance
        assert b.params[key] == pytest.approx(want, rel=1e-5, abs=1e-9), (key, a.params)


def _bad_input_case(law: str, kind: str):
    """``(call, message regex)``: ``kind`` is too few points, a non-positive value where a
    log is taken, or a NaN; the regex names the input."""
    rng = np.random.default_rng(22)
    N, C, D, L = _isoflop_data(rng, n_budgets=3)
    loss = np.geomspace(0.6, 2.0, 10)
    ret = 100 + 50 * loss**-2.0
    sig = np.repeat([1.0, 2.0, 4.0, 8.0], 2)
    task = np.tile(["a", "b"], 4)  # 3 points are 2 groups, which need 4
    Bs = 256 * sig**-0.6

    def spoil(a: np.ndarray, value: float) -> np.ndarray:
        a = np.array(a, float)
        a[1] = value
        return a

    # per law: the call, its inputs, (index of the input spoiled, its name) per kind
    calls = {
        "fit_chinchilla": (lambda n, d, y: isoflop.fit_chinchilla(n, d, y, n_boot=0, n_starts=2),
                           [N, D, L], {"few": (0, "N", 6), "nonpositive": (1, "D"),
                                       "nan": (2, "loss")}),
        "fit_quadratic_surface": (isoflop.fit_quadratic_surface, [N, D, L],
                                  {"few": (0, "N", 8), "nonpositive": (2, "loss"),
                                   "nan": (0, "N")}),
        "fit_envelope": (isoflop.fit_envelope, [N, C, L],
                         {"few": (0, "N", 3), "nonpositive": (1, "C"), "nan": (2, "loss")}),
        "fit_return_vs_loss": (isoflop.fit_return_vs_loss, [loss, ret],
                               {"few": (0, "loss", 4), "nonpositive": (0, "loss"),
                                "nan": (1, "return")}),
        "fit_fixed_effects": (lambda x, y: fitting.fit_fixed_effects(x, y, task[:len(x)]),
                              [sig, Bs], {"few": (0, "x", 4), "nonpositive": (1, "y"),
                                          "nan": (0, "x")}),
    }
    fn, args, kinds = calls[law]
    spec = kinds[kind]
    i, name = spec[0], spec[1]
    if kind == "few":
        need = spec[2]
        n = need - 1 if law != "fit_fixed_effects" else 3  # 3 points, 2 groups: 4 needed
        args = [a[:n] for a in args]
        return (lambda: fn(*args)), rf"^too few points for {name}: {n} given, at least {need}"
    if kind == "nonpositive":
        args = [spoil(a, -1.0) if j == i else a for j, a in enumerate(args)]
        return ((lambda: fn(*args)),
                rf"^{name}: 1 non-positive value\(s\) where a log is taken \(min -1\)$")
    args = [spoil(a, np.nan) if j == i else a for j, a in enumerate(args)]
    return (lambda: fn(*args)), rf"^{name}: 1 NaN or infinite value\(s\)$"


@pytest.mark.parametrize("kind", ["few", "nonpositive", "nan"])
@pytest.mark.parametrize("law", ["fit_chinchilla", "fit_quadratic_surface", "fit_envelope",
                                 "fit_return_vs_loss", "fit_fixed_effects"])
def test_bad_input_is_one_line_fit_error_naming_it(law: str, kind: str):
    call, pattern = _bad_input_case(law, kind)
    with pytest.raises(FitError, match=pattern) as err:
        call()
    assert "\n" not in str(err.value)


def test_more_bad_input_lines():
    """A missing group label is not a group named "None"; a constant loss has no law; the
    UTD law's distinct-values wording is the power law's."""
    x = np.tile([1.0, 2.0, 4.0], 2)
    with pytest.raises(FitError, match=r"^groups: 1 missing label\(s\)"):
        fitting.fit_fixed_effects(x, x, np.array(["a", None, "a", "b", "b", "b"], dtype=object))
    with pytest.raises(FitError, match=r"^loss: 1 distinct value, at least 3 needed"):
        isoflop.fit_return_vs_loss(np.full(6, 1.5), np.arange(6.0))
    with pytest.raises(FitError, match=r"^sigma: 2 distinct values, at least 3 needed"):
        utd.fit_utd([1, 1, 2, 2], [5, 6, 3, 4])


# ------------------------------------------------------------------ forecasts at a budget


def test_chinchilla_forecast_interval_uses_the_fits_level():
    """The interval is the percentile range of the per-draw forecasts at the fit's level
    (the pipeline had 2.5/97.5 written in)."""
    rng = np.random.default_rng(23)
    N = np.repeat(np.geomspace(1e5, 1e8, 6), 6)
    D = np.tile(np.geomspace(1e6, 1e10, 6), 6)
    L = synthetic.bc_loss(N, D) * np.exp(0.01 * rng.standard_normal(N.size))
    fit = isoflop.fit_chinchilla(N, D, L, n_boot=12, n_starts=4, level=0.5)
    fc = isoflop.forecast_chinchilla(fit, 1e20, flops_per_param_sample=6.0)
    d = fit.extra["_draws"]
    per = np.array([isoflop.chinchilla_allocation({k: d[k][i] for k in ("E", "A", "B", "alpha",
                                                                     "beta")}, [1e20])
                    for i in range(len(d["alpha"]))])[:, :, 0]
    for j, name in enumerate(("N_opt", "D_opt", "L_opt")):
        assert fc[name]["value"] == pytest.approx(
            float(isoflop.chinchilla_allocation(fit.params, [1e20])[j][0]))
        assert (fc[name]["low"], fc[name]["high"]) == pytest.approx(
            tuple(np.percentile(per[:, j], [25, 75])), rel=1e-12), name
        assert "50% percentiles" in fc[name]["method"]
    wide = isoflop.forecast_chinchilla(fit, 1e20, level=0.95)["N_opt"]
    assert wide["low"] <= fc["N_opt"]["low"] <= fc["N_opt"]["high"] <= wide["high"]
    fit.extra.pop("_draws")
    assert math.isnan(isoflop.forecast_chinchilla(fit, 1e20)["L_opt"]["low"])


def test_forecast_by_isoflop_method_matches_each_methods_own_law():
    N, C, D, L = _isoflop_data(np.random.default_rng(24))
    target = 1e19
    quad = isoflop.fit_quadratic_surface(N, D, L)
    fq = isoflop.forecast_isoflop_method("quadratic_surface", quad, target)
    n_opt, l_opt = isoflop._quad_predict_opt(quad, np.array([target]))
    assert fq["N_opt"]["value"] == pytest.approx(n_opt[0], rel=1e-9)
    assert fq["L_opt"]["value"] == pytest.approx(l_opt[0], rel=1e-9)
    for name in ("N_opt", "L_opt"):
        assert fq[name]["low"] < fq[name]["value"] < fq[name]["high"], name
    dq = isoflop.forecast_quadratic_surface(quad, target)["D_opt"]
    assert dq["value"] == pytest.approx(target / (6 * fq["N_opt"]["value"]))
    assert dq["low"] == pytest.approx(target / (6 * fq["N_opt"]["high"]))
    iso = isoflop.fit_isoflop(N, C, L, D=D)
    fi = isoflop.forecast_isoflop_method("isoflop_profiles", iso, target)
    assert fi["L_opt"]["value"] == isoflop.forecast_isoflop(iso, target)["L_opt"]["value"]
    env = isoflop.fit_envelope(N, C, L)
    fe = isoflop.forecast_isoflop_method("envelope", env, target)
    assert fe["N_opt"]["value"] == pytest.approx(
        env.params["N_coef"] * target ** env.params["a"], rel=1e-9)
    with pytest.raises(FitError, match="unknown isoFLOP method"):
        isoflop.forecast_isoflop_method("nope", env, target)
