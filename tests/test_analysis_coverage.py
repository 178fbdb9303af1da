"""Over repeated draws from known parameters, each law's 95% intervals cover the truth at
about their nominal rate.

Data come from each law's own model family with realistic noise, so a miss is the interval
method's fault, not model misspecification. Every draw has its own seeded generator, so
the rates are deterministic. Acceptance bands are about +-2.5 binomial standard errors
around 0.95 at the number of draws used; the bootstrap laws run few draws in the fast set
(wide bands that still catch a broken interval, e.g. the 10% coverage a stalled intrinsic
search once had) and the full check is marked ``slow``. The measured rates are listed in
docs/analysis.md ("Interval coverage").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from analysis import fitting, isoflop, scaling, synthetic, utd

Draw = Callable[[np.random.Generator], dict[str, bool]]


def coverage(draw: Draw, n_draws: int) -> dict[str, float]:
    """Fraction of draws whose interval covered the truth, per parameter."""
    hits: dict[str, int] = {}
    for i in range(n_draws):
        for name, hit in draw(np.random.default_rng(1000 + i)).items():
            hits[name] = hits.get(name, 0) + int(hit)
    return {name: h / n_draws for name, h in hits.items()}


def covers(ci: tuple[float, float], truth: float) -> bool:
    return bool(ci[0] <= truth <= ci[1])


def assert_nominal(rates: dict[str, float], low: float, high: float = 1.0) -> None:
    for name, r in rates.items():
        assert low <= r <= high, f"{name}: coverage {r:.3f} outside [{low}, {high}] ({rates})"


# -- closed-form and delta-method intervals: enough draws in the fast set ------------------


def _fixed_effects(rng: np.random.Generator) -> dict[str, bool]:
    sigma = np.tile([1.0, 2.0, 4.0, 8.0, 16.0], 3)
    task = np.repeat(["a", "b", "c"], 5)
    c = {"a": 100.0, "b": 50.0, "c": 300.0}
    y = np.array([c[t] for t in task]) * sigma**-0.6 * np.exp(0.1 * rng.standard_normal(15))
    f = fitting.fit_fixed_effects(sigma, y, task)
    return {"k": covers(f.ci["k"], -0.6), "c[b]": covers(f.ci["c[b]"], 50.0)}


QUAD_COEF = np.array([1.0, -0.3, -0.2, 0.05, 0.04, 0.02])  # log L, centred log N and log D
QUAD_A = isoflop.quadratic_surface_optimum(QUAD_COEF)[0]


def _quadratic_surface(rng: np.random.Generator) -> dict[str, bool]:
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e5, 1e8, 5), np.geomspace(1e7, 1e10, 5)))
    u, v = np.log(N) - np.log(N).mean(), np.log(D) - np.log(D).mean()
    log_l = isoflop._quad_design(u, v) @ QUAD_COEF + 0.02 * rng.standard_normal(N.size)
    f = isoflop.fit_quadratic_surface(N, D, np.exp(log_l))
    return {"a": covers(f.ci["a"], QUAD_A)}


ISO_A, ISO_L_EXP, ISO_TARGET = 0.45, -0.1, 1e21


def _isoflop_profiles(rng: np.random.Generator) -> dict[str, bool]:
    """Per budget an exact parabola in log N with its minimum at N_opt = 0.1 C^0.45."""
    N, C, L = [], [], []
    for budget in np.geomspace(1e15, 1e19, 6):
        n_opt = 0.1 * budget**ISO_A
        sizes = n_opt * np.geomspace(1 / 30, 30, 9)
        loss = 30 * budget**ISO_L_EXP + 0.05 * np.log(sizes / n_opt) ** 2
        N += list(sizes)
        C += [budget] * sizes.size
        L += list(loss * np.exp(0.01 * rng.standard_normal(sizes.size)))
    f = isoflop.fit_isoflop(N, C, L)
    fc = isoflop.forecast_isoflop(f, ISO_TARGET)["N_opt"]
    return {"a": covers(f.ci["a"], ISO_A), "L_exponent": covers(f.ci["L_exponent"], ISO_L_EXP),
            "N_opt forecast": covers((fc["low"], fc["high"]), 0.1 * ISO_TARGET**ISO_A)}


UTD = synthetic.UTD_TRUTH


def _utd(rng: np.random.Generator, n_boot: int = 0) -> dict[str, bool]:
    sigma = np.repeat([0.5, 1, 2, 4, 8, 16, 32], 3)
    D = synthetic.utd_best_data(sigma, UTD) * np.exp(
        0.05 * rng.standard_normal(sigma.size))
    f = utd.fit_utd(sigma, D, n_boot=n_boot, seed=int(rng.integers(1 << 30)))
    return {"alpha": covers(f.ci["alpha"], UTD["alpha_J"]),
            "beta": covers(f.ci["beta"], UTD["beta_J"]),
            "D_min": covers(f.ci["D_min"], UTD["D_min"])}


UTD_OPT = utd.optimal_utd({"D_min": UTD["D_min"], "beta": UTD["beta_J"],
                            "alpha": UTD["alpha_J"]}, {"c[all]": 256.0, "k": -0.6}, 1.4e5, 1e9)


def _utd_forecast(rng: np.random.Generator) -> dict[str, bool]:
    """sigma*, B*(sigma*) and the budget F at the optimum, from a D_J(sigma) law and a B*(sigma)
    law each fitted on noisy data (5 and 10% noise)."""
    sigma = np.repeat([0.5, 1, 2, 4, 8, 16, 32], 3)
    D = synthetic.utd_best_data(sigma, UTD) * np.exp(
        0.05 * rng.standard_normal(sigma.size))
    grid = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    best_b = 256.0 * grid**-0.6 * np.exp(0.1 * rng.standard_normal(grid.size))
    fc = utd.forecast_utd(utd.fit_utd(sigma, D), utd.fit_hparam_law(grid, best_b), 1.4e5,
                           1e9, seed=int(rng.integers(1 << 30)))
    return {k: covers((fc[k]["low"], fc[k]["high"]), UTD_OPT[k]) for k in ("sigma", "B", "F")}


def _return_vs_loss(rng: np.random.Generator) -> dict[str, bool]:
    loss = np.geomspace(0.6, 3, 12)
    ret = 10.0 - 4.0 * loss**-1.5 + 0.05 * rng.standard_normal(loss.size)
    f = isoflop.fit_return_vs_loss(loss, ret)
    return {"k": covers(f.ci["k"], -1.5), "offset": covers(f.ci["offset"], 10.0)}


@pytest.mark.parametrize(
    ("draw", "n_draws", "low", "high"),
    [
        (_fixed_effects, 400, 0.92, 0.98),
        (_quadratic_surface, 400, 0.92, 0.98),
        (_isoflop_profiles, 400, 0.92, 0.99),
        (_utd, 200, 0.90, 0.99),
        (_return_vs_loss, 200, 0.90, 0.99),
        (_utd_forecast, 150, 0.90, 0.99),
    ],
    ids=["fixed_effects", "quadratic_surface", "isoflop_profiles", "utd_delta",
         "return_vs_loss", "utd_sigma_star_forecast"],
)
def test_asymptotic_intervals_cover_at_nominal_rate(draw: Draw, n_draws: int, low: float,
                                                    high: float):
    assert_nominal(coverage(draw, n_draws), low, high)


# -- bootstrap intervals: a quick check by default, the nominal check when slow -----------

BC = synthetic.BC_TRUTH


def _chinchilla(rng: np.random.Generator, n_boot: int) -> dict[str, bool]:
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e5, 1e9, 6), np.geomspace(1e7, 1e11, 6)))
    L = synthetic.bc_loss(N, D) * np.exp(0.01 * rng.standard_normal(N.size))
    f = isoflop.fit_chinchilla(N, D, L, n_boot=n_boot, n_starts=8,
                               seed=int(rng.integers(1 << 30)))
    return {k: covers(f.ci[k], BC[k]) for k in ("alpha", "beta", "E")}


HILTON = synthetic.HILTON_TRUTH


def _intrinsic(rng: np.random.Generator, n_boot: int) -> dict[str, bool]:
    N = np.repeat(np.geomspace(1e4, 1e7, 6), 12)
    E = np.tile(np.geomspace(1e5, 1e8, 12), 6)
    ret = synthetic.hilton_return(N, E) + 0.1 * rng.standard_normal(N.size)
    f = scaling.fit_intrinsic(N, E, ret, n_boot=n_boot, seed=int(rng.integers(1 << 30)))
    return {k: covers(f.ci[k], HILTON[k]) for k in ("alpha_N", "alpha_E", "k")}


@pytest.mark.parametrize(
    ("draw", "n_draws", "n_boot", "low"),
    [
        (_chinchilla, 30, 30, 0.75),
        (_intrinsic, 30, 20, 0.75),
        (_utd, 20, 40, 0.75),
        pytest.param(_chinchilla, 200, 50, 0.91, marks=pytest.mark.slow),
        pytest.param(_intrinsic, 100, 40, 0.88, marks=pytest.mark.slow),
        pytest.param(_utd, 60, 100, 0.85, marks=pytest.mark.slow),
    ],
    ids=["chinchilla", "intrinsic", "utd", "chinchilla-nominal", "intrinsic-nominal",
         "utd-nominal"],
)
def test_bootstrap_intervals_cover(draw, n_draws: int, n_boot: int, low: float):
    assert_nominal(coverage(lambda rng: draw(rng, n_boot), n_draws), low)
