"""Curve cleaning: seed averaging, isotonic regression, threshold crossing, warm-up drop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import curves


def _runs(n_seeds: int = 3, n: int = 10) -> pd.DataFrame:
    rows = []
    for s in range(n_seeds):
        for i in range(n):
            rows.append({"run_dir": f"r{s}", "seed": s, "config_id": "w=1",
                         "env_steps": 100.0 * (i + 1), "flops": 1e3 * (i + 1),
                         "return_mean": float(i + s)})
    return pd.DataFrame(rows)


def test_average_seeds_mean_sem_and_counts():
    df = _runs()
    avg = curves.average_seeds(df, "env_steps", "return_mean", by="config_id")
    assert len(avg) == 10
    # seeds are offsets 0, 1, 2 -> mean is i + 1, sd is 1, sem is 1/sqrt(3)
    np.testing.assert_allclose(avg["return_mean"], np.arange(10) + 1.0)
    np.testing.assert_allclose(avg["return_mean_sem"], 1 / np.sqrt(3))
    assert (avg["n_seeds"] == 3).all()


def test_average_seeds_short_seed_contributes_only_where_it_has_data():
    df = _runs()
    df = df[~((df["seed"] == 2) & (df["env_steps"] > 500))]  # a seed still running
    avg = curves.average_seeds(df, "env_steps", "return_mean", by="config_id")
    late = avg[avg["env_steps"] > 500]
    assert (late["n_seeds"] == 2).all()
    np.testing.assert_allclose(late["return_mean"], late["env_steps"] / 100 - 1 + 0.5)


def test_isotonic_is_monotone_and_least_squares():
    rng = np.random.default_rng(0)
    x = np.arange(200.0)
    y = np.sqrt(x) + rng.normal(0, 1, x.size)
    fit = curves.isotonic(y, x)
    assert np.all(np.diff(fit) >= -1e-12)
    # pooling preserves the mean (a property of the least-squares monotone fit)
    assert fit.mean() == pytest.approx(y.mean())
    # already monotone input is unchanged; decreasing mode mirrors increasing
    np.testing.assert_allclose(curves.isotonic(x), x)
    np.testing.assert_allclose(curves.isotonic(-y, x, increasing=False), -fit)
    assert list(curves.isotonic([1.0, 3.0, 2.0])) == [1.0, 2.5, 2.5]


def test_monotone_piecewise_linear_fit():
    x = np.linspace(0.0, 4.0, 81)
    truth = np.minimum(x, 2.0) + 0.25 * np.maximum(x - 3.0, 0.0)  # monotone, kinks at knots
    fit = curves.monotone_piecewise_linear(truth, x, n_knots=4)
    np.testing.assert_allclose(fit, truth, atol=1e-9)  # exact when the kinks sit on knots
    rng = np.random.default_rng(0)
    noisy = truth + 0.3 * rng.standard_normal(x.size)
    fit = curves.monotone_piecewise_linear(noisy, x, n_knots=8)
    assert np.all(np.diff(fit) >= -1e-12)
    assert abs(np.mean(fit - truth)) < 0.05
    down = curves.monotone_piecewise_linear(-noisy, x, n_knots=8, increasing=False)
    np.testing.assert_allclose(down, -fit, atol=1e-9)
    # the fit moves continuously with x, unlike PAVA, which only sees the order of x
    sse = [float(((noisy - curves.monotone_piecewise_linear(noisy, x * s, n_knots=8)) ** 2)
                 .sum()) for s in (1.0, 1.0 + 1e-6)]
    assert sse[1] == pytest.approx(sse[0], rel=1e-4)
    x_bent = x + 0.05 * np.sin(7 * x)  # same order, different spacing
    assert np.all(np.diff(x_bent) > 0)
    pava = [curves.isotonic(noisy, x=xx) for xx in (x, x_bent)]
    np.testing.assert_array_equal(pava[0], pava[1])
    assert not np.allclose(curves.monotone_piecewise_linear(noisy, x_bent, n_knots=8), fit)
    # constant x: the mean
    np.testing.assert_allclose(curves.monotone_piecewise_linear([1.0, 3.0], [2.0, 2.0]), 2.0)


def test_isotonic_respects_x_order_and_nans():
    fit = curves.isotonic([3.0, np.nan, 1.0, 2.0], x=[3, 4, 1, 2])
    assert np.isnan(fit[1])
    np.testing.assert_allclose(fit[[2, 3, 0]], [1.0, 2.0, 3.0])


def test_first_crossing_exact_on_linear_curve():
    x = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    y = 2.0 * x + 1.0
    for thr in (1.0, 7.0, 33.3, 81.0):
        assert curves.first_crossing(x, y, thr) == pytest.approx((thr - 1.0) / 2.0)
    assert np.isnan(curves.first_crossing(x, y, 100.0))
    # a decreasing loss crossing from above
    assert curves.first_crossing(x, -y, -50.0, above=False) == pytest.approx(24.5)


def test_to_threshold_interpolates_data_and_compute_together():
    df = pd.DataFrame({"g": "a", "env_steps": [0.0, 100.0, 200.0],
                       "flops": [0.0, 1e6, 2e6], "ret": [0.0, 10.0, 20.0]})
    out = curves.to_threshold(df, 15.0, "ret", by="g")
    assert out["D_J"].iloc[0] == pytest.approx(150.0)
    assert out["C_J"].iloc[0] == pytest.approx(1.5e6)
    assert bool(out["reached"].iloc[0])
    never = curves.to_threshold(df, 99.0, "ret", by="g")
    assert not bool(never["reached"].iloc[0]) and np.isnan(never["D_J"].iloc[0])


def test_drop_first_64th():
    df = pd.DataFrame({"run_dir": "a", "env_steps": np.arange(1, 129) * 1000.0})
    kept = curves.drop_warmup(df)
    assert kept["env_steps"].min() == 2000.0  # 128000 / 64
    # a run still going uses the planned total, not its current length
    df["algo.total_steps"] = 256_000
    kept = curves.drop_warmup(df, total="algo.total_steps")
    assert kept["env_steps"].min() == 4000.0


def test_at_budgets_interpolates_in_log_flops_inside_range():
    flops = np.geomspace(1e10, 1e14, 9)
    df = pd.DataFrame({"run_dir": "a", "flops": flops, "samples": flops / 6e5,
                       "val_loss": np.log10(flops), "params.effective": 1e5})
    out = curves.at_budgets(df, [1e9, 1e11, 3e12, 1e15], "val_loss",
                            keep=["params.effective"])
    assert list(out["budget"]) == [1e11, 3e12]  # outside the logged range is left out
    np.testing.assert_allclose(out["val_loss"], np.log10([1e11, 3e12]))
    np.testing.assert_allclose(out["data"], [1e11 / 6e5, 3e12 / 6e5], rtol=1e-9)


def test_efficient_frontier_picks_best_group():
    x = np.geomspace(1, 100, 20)
    df = pd.concat([
        pd.DataFrame({"w": "small", "flops": x, "ret": np.log(x)}),
        pd.DataFrame({"w": "big", "flops": x * 10, "ret": np.log(x) + 1.0}),
    ])
    fr = curves.efficient_frontier(df, "flops", "ret", by="w")
    assert set(fr["w"]) == {"small", "big"}
    assert (fr[fr["flops"] > 100]["w"] == "big").all()
    assert np.all(np.diff(fr["flops"]) > 0)


def test_smooth_keeps_length_and_mean_of_constant():
    y = np.ones(7)
    np.testing.assert_allclose(curves.smooth(y, 3), y)
    s = curves.smooth([0, 0, 3, 0, 0], 3)
    assert s.size == 5 and s[2] == pytest.approx(1.0)


def test_cumulative_frontier_never_decreases_and_holds_finished_runs():
    x = np.geomspace(1, 100, 20)
    df = pd.concat([
        pd.DataFrame({"w": "small", "flops": x, "ret": np.log(x)}),
        pd.DataFrame({"w": "big", "flops": x * 10, "ret": np.log(x) + 1.0}),
    ])
    fr = curves.efficient_frontier(df, "flops", "ret", by="w", cumulative=True)
    assert np.all(np.diff(fr["ret"]) >= -1e-12)
    # just past the small run's end its final value (log 100) still beats the big run
    after = fr[(fr["flops"] > 110) & (fr["flops"] < 300)]
    assert (after["w"] == "small").all() and np.allclose(after["ret"], np.log(100))
    assert fr["w"].iloc[-1] == "big"
    assert fr["n_groups"].iloc[0] == 1 and fr["n_groups"].iloc[-1] == 2


def test_per_role_flop_counters_are_not_config_keys():
    """``flops.<role>`` columns come from the metrics lines and differ between runs; they must
    not split a configuration (runs differing only by seed share a label)."""
    table = pd.DataFrame({"run_dir": ["a", "b"], "model.width": [1.0, 1.0], "seed": [1, 2],
                          "flops.policy": [10.0, 11.0], "algo.lr": [1e-3, 1e-3]})
    assert curves.config_columns(table) == ["model.width", "algo.lr"]
    assert curves.config_id(table).nunique() == 1
