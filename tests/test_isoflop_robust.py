"""Robust isoFLOP profiles and identifiable Approach 3 (issue #7) on tables shaped like real
sweeps: lopsided profiles with untrained large models, a budget whose best size is the
smallest, near-equal budgets, repeated seeds, one budget, E = 0."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import isoflop, pipeline, synthetic
from analysis.fitting import FitError

BC = synthetic.BC_TRUTH
BUDGETS = tuple(np.geomspace(1e15, 1e19, 5))


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _old_rule(N: np.ndarray, C: np.ndarray, L: np.ndarray) -> list[float]:
    """The minimum of one parabola in linear loss through every size (the earlier rule)."""
    out = []
    for b in np.unique(C):
        m = C == b
        a, bb, c = np.polyfit(np.log(N[m]), L[m], 2)
        out.append(c - bb * bb / (4 * a))
    return out


# ----------------------------------------------------------------------- isoFLOP profiles


def test_lopsided_profiles_use_every_budget_and_agree_with_measured_minima():
    """Untrained large models (losses 15-52 next to 1.2): one parabola in linear loss put
    L_opt below 0 at 4 of 5 budgets; the robust rule uses all 5, L_opt sits within the
    tolerance of the measured best and its exponent agrees with the measured minima and
    with the truth."""
    df = synthetic.lopsided_isoflop_table()
    N, C, L = (df[c].to_numpy(float) for c in ("N", "C", "loss"))
    assert L.max() / L.min() > 40
    assert sum(v < 0 for v in _old_rule(N, C, L)) == 4  # the crash of the issue
    fit = isoflop.fit_isoflop(N, C, L)
    assert fit.used == list(BUDGETS) and fit.dropped == [] and fit.flags == []
    par = fit.extra["parabolas"]
    for b in BUDGETS:
        p = par[b]
        assert p["ok"] and 3 <= p["n_window"] <= 5 and p["rms"] < 0.05
        assert abs(math.log(p["L_measured"] / p["L_opt"])) <= isoflop.PROFILE_TOL
    measured = _slope(np.array(BUDGETS), np.array([par[b]["L_measured"] for b in BUDGETS]))
    assert fit.extra["L_exponent_measured"] == pytest.approx(measured, abs=1e-12)
    assert fit.params["L_exponent"] == pytest.approx(measured, abs=0.005)
    n_true, l_true = synthetic.lopsided_optimum(BUDGETS)
    assert fit.params["L_exponent"] == pytest.approx(_slope(np.array(BUDGETS), l_true), abs=0.005)
    assert fit.params["a"] == pytest.approx(_slope(np.array(BUDGETS), n_true), abs=0.03)
    # the earlier rule in linear loss no longer aborts: a and b are kept, L_opt is flagged
    old = isoflop.fit_isoflop(N, C, L, window=None, space="linear", tol=math.inf)
    assert math.isnan(old.params["L_exponent"]) and "L_opt" not in old.extra["_fits"]
    assert any(f.startswith("L_opt law not fitted: 4 budget(s) have L_opt <= 0") for f in
               old.flags)
    assert old.params["a"] < fit.params["a"] - 0.05  # and it is biased


def test_all_sizes_in_log_loss_still_drops_optima_below_the_data():
    """With every size in the parabola (``window=None``) the lopsided budgets' minima fall
    more than the tolerance below the lowest measured loss: dropped, and the one-line
    error counts them by reason instead of listing them."""
    df = synthetic.lopsided_isoflop_table()
    with pytest.raises(FitError) as err:
        isoflop.fit_isoflop(df["N"], df["C"], df["loss"], window=None)
    msg = str(err.value)
    assert msg == ("isoflop: 2 budgets with an interior minimum, 3 needed (3 of 5 budgets "
                   "dropped: 3 optimum-beyond-data)")
    par = isoflop.isoflop_parabolas(df["N"], df["C"], df["loss"], window=None)
    bad = [p for p in par.values() if p["code"] == "optimum-beyond-data"]
    assert len(bad) == 3 and all(p["gap"] > isoflop.PROFILE_TOL for p in bad)
    assert "below the lowest measured loss" in bad[0]["why"]


def test_budget_whose_best_size_is_the_smallest_is_dropped_and_the_fit_goes_on():
    df = synthetic.lopsided_isoflop_table(sizes=tuple(np.geomspace(3e6, 3e9, 7)))
    fit = isoflop.fit_isoflop(df["N"], df["C"], df["loss"])
    assert fit.used == list(BUDGETS[1:])
    assert fit.dropped == [{"what": BUDGETS[0], "reason": (
        "best-at-smallest-size: lowest loss at the smallest size (N=3e+06): the minimum is "
        "not bracketed")}]
    assert fit.extra["dropped_summary"] == "1 of 5 budgets dropped: 1 best-at-smallest-size"
    js = fit.to_json()
    assert js["used"] == list(BUDGETS[1:]) and js["dropped"][0]["what"] == BUDGETS[0]


def test_near_equal_budgets_are_grouped_and_the_error_stays_short():
    """Budgets computed per run as 6 N D (D in whole batches) differ in the 3rd-5th digit:
    without grouping every one is a one-size budget and the error summarises 42 budgets in
    one short line; a 1% tolerance groups them into the 5 intended."""
    df = synthetic.lopsided_isoflop_table(batch=2048, seeds=3)
    assert df["C"].nunique() == 42
    with pytest.raises(FitError) as err:
        isoflop.fit_isoflop(df["N"], df["C"], df["loss"])
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300
    assert "(42 of 42 budgets dropped: 42 too-few-sizes)" in msg and "--budget-tolerance" in msg
    fit = isoflop.fit_isoflop(df["N"], df["C"], df["loss"], budget_rtol=0.01)
    assert fit.extra["n_budgets"] == 5
    assert fit.extra["notes"][0] == "42 distinct budgets grouped into 5 (relative tolerance 0.01)"
    grouped, merged = isoflop.group_budgets(df["C"], 0.01)
    assert merged == 37 and np.unique(grouped).size == 5
    assert np.allclose(np.unique(grouped), BUDGETS, rtol=0.01)


def test_repeated_seeds_are_averaged_like_the_pipeline():
    df = synthetic.lopsided_isoflop_table(seeds=3, noise=0.02, rng=4)
    mean = df.groupby(["N", "C"], as_index=False)["loss"].mean()
    fit = isoflop.fit_isoflop(df["N"], df["C"], df["loss"])
    ref = isoflop.fit_isoflop(mean["N"], mean["C"], mean["loss"])
    assert fit.params["a"] == pytest.approx(ref.params["a"], abs=1e-12)
    assert fit.n_points == 45 and fit.extra["n_rows"] == 135
    assert "repeated (N, C) rows averaged (mean loss): 135 rows -> 45 points" in \
        fit.extra["notes"]
    rows = isoflop.fit_isoflop(df["N"], df["C"], df["loss"], seeds="all")
    assert rows.n_points == 135 and rows.params["a"] != fit.params["a"]
    assert "kept as separate points" in rows.extra["notes"][0]


def test_maximize_a_return_profile():
    """A return R = K / L is maximised where the loss is minimised: the same N_opt, and the
    best-return law is the loss law with its exponent negated (no more loss = log(K/R))."""
    df = synthetic.lopsided_isoflop_table()
    R = 1000.0 / df["loss"]
    lo = isoflop.fit_isoflop(df["N"], df["C"], df["loss"])
    hi = isoflop.fit_isoflop(df["N"], df["C"], R, maximize=True)
    assert hi.params["a"] == pytest.approx(lo.params["a"], abs=1e-9)
    assert hi.params["L_exponent"] == pytest.approx(-lo.params["L_exponent"], abs=1e-9)
    assert hi.used == lo.used
    assert "maximised" in hi.extra["form"] and "L_opt at its maximum" in hi.extra["method"]
    # minimising a return finds no interior minimum: a one-line error naming the reason
    with pytest.raises(FitError, match=r"^isoflop: 0 budgets with an interior minimum"):
        isoflop.fit_isoflop(df["N"], df["C"], R)
    with pytest.raises(FitError, match=r"^score: 1 non-positive value"):
        isoflop.fit_isoflop(df["N"], df["C"], np.where(np.arange(R.size) == 0, -1.0, R),
                            maximize=True)


def test_profile_options_are_checked():
    df = synthetic.lopsided_isoflop_table()
    args = (df["N"], df["C"], df["loss"])
    for kw, msg in (({"window": 0}, "window must be a whole number >= 1"),
                    ({"max_ratio": 1.0}, "window ratio must be > 1"),
                    ({"tol": -0.1}, "tolerance must be >= 0"),
                    ({"space": "cubic"}, "space must be 'log' or 'linear'"),
                    ({"seeds": "median"}, "seeds must be 'mean' or 'all'"),
                    ({"budget_rtol": -1.0}, "budget tolerance must be >= 0")):
        with pytest.raises(FitError, match=msg):
            isoflop.fit_isoflop(*args, **kw)


def test_clean_surface_gets_closer_to_the_truth():
    """On the plain BC surface (9 sizes x 6 budgets, 0.5% noise) the window around the best
    size removes the all-sizes parabola's bias in a (0.41 -> 0.45; truth 0.452)."""
    rng = np.random.default_rng(0)
    sizes, budgets = np.geomspace(3e4, 3e8, 9), np.geomspace(1e14, 1e18, 6)
    N, C = (a.ravel() for a in np.meshgrid(sizes, budgets))
    L = synthetic.bc_loss(N, C / (6 * N)) * np.exp(0.005 * rng.standard_normal(N.size))
    a_true = BC["beta"] / (BC["alpha"] + BC["beta"])
    new = isoflop.fit_isoflop(N, C, L)
    old = isoflop.fit_isoflop(N, C, L, window=None, space="linear")
    assert abs(new.params["a"] - a_true) < 0.01 < abs(old.params["a"] - a_true)


# ----------------------------------------------------------------------- Approach 3


def _surface(rng: np.random.Generator, **truth: float) -> tuple[np.ndarray, ...]:
    N = np.repeat(np.geomspace(1e5, 1e8, 6), 8)
    D = np.tile(np.geomspace(1e6, 1e10, 8), 6)
    L = synthetic.bc_loss(N, D, {**BC, **truth}) * np.exp(0.01 * rng.standard_normal(N.size))
    return N, D, L


@pytest.mark.parametrize("method", isoflop.CHINCHILLA_METHODS)
def test_approach3_refuses_data_that_cannot_identify_it(method: str):
    """One budget (N D constant), D a power of N, or one size: a one-line FitError before
    any optimisation, never numbers with an overflow warning."""
    N = np.geomspace(1e5, 1e9, 9)
    L = synthetic.bc_loss(N, 1e17 / (6 * N))
    cases = [(N, 1e17 / (6 * N), "every point is on one budget"),
             (N, 1e17 / (6 * N) * (1 + 1e-4 * np.arange(9)), "every point is on one budget"),
             (N, 30 * N**0.7, "log N and log D are collinear"),
             (np.full(9, 1e6), N, "N: 1 distinct value")]
    for n, d, msg in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(FitError, match=msg) as err:
                isoflop.fit_chinchilla(n, d, L, method=method, n_boot=0)
        assert "\n" not in str(err.value)


def test_varpro_reaches_the_grid_optimum_faster_on_the_bc_surface():
    N, D, L = _surface(np.random.default_rng(5))
    vp = isoflop.fit_chinchilla(N, D, L, n_boot=0)
    grid = isoflop.fit_chinchilla(N, D, L, n_boot=0, method="grid")
    assert vp.extra["chinchilla_method"] == "varpro" and "variable projection" in \
        vp.extra["method"]
    assert vp.loss == pytest.approx(grid.loss, rel=1e-6)
    for k in ("alpha", "beta", "E", "a"):
        assert vp.params[k] == pytest.approx(grid.params[k], rel=1e-3), k
    assert vp.params["alpha"] == pytest.approx(BC["alpha"], abs=0.03)
    assert vp.params["beta"] == pytest.approx(BC["beta"], abs=0.03)
    assert vp.flags == [] and vp.used == list(np.unique(N))
    assert vp.extra["theta"]["log_E"] == pytest.approx(math.log(vp.params["E"]))


def test_e_zero_is_reached_and_flagged_at_its_bound():
    """Truth E = 0: variable projection puts E exactly on its bound 0 and says so (the grid
    method's log E can only run towards -inf, and it is flagged as negligible)."""
    N, D, L = _surface(np.random.default_rng(2), E=0.0, alpha=0.6, beta=0.8)
    fit = isoflop.fit_chinchilla(N, D, L, n_boot=5)
    assert fit.params["E"] == 0.0 and fit.bounds["E"] == (0.0, math.inf)
    assert any(f.startswith("E = 0 is at its lower bound") for f in fit.flags)
    assert fit.ci["E"][0] == 0.0 < fit.ci["E"][1] < 1e-3
    assert fit.params["alpha"] == pytest.approx(0.6, abs=0.02)
    assert fit.to_json()["flags"] == fit.flags
    grid = isoflop.fit_chinchilla(N, D, L, n_boot=0, method="grid")
    assert grid.loss >= fit.loss * (1 - 1e-6)
    assert any("below 1e-04 of every loss" in f for f in grid.flags)


def test_a_term_the_data_cannot_see_is_flagged():
    """alpha 1.5 on N >= 1e5: A/N^alpha is ~1e-6 of the loss; the grid method returned a
    negative alpha, variable projection puts A at its bound 0; both say alpha is not
    pinned instead of printing it as an estimate."""
    N, D, L = _surface(np.random.default_rng(3), E=2.0, alpha=1.5, beta=0.3)
    vp = isoflop.fit_chinchilla(N, D, L, n_boot=0)
    assert vp.params["A"] == 0.0 and math.isnan(vp.params["a"])
    assert any(f.startswith("A = 0 is at its lower bound") for f in vp.flags)
    grid = isoflop.fit_chinchilla(N, D, L, n_boot=0, method="grid")
    assert any("alpha" in f for f in grid.flags)
    with pytest.raises(FitError, match="unknown method 'nelder'"):
        isoflop.fit_chinchilla(N, D, L, method="nelder")


# ----------------------------------------------------------------------- the pipeline


def test_pipeline_reports_used_dropped_and_profile_quality(tmp_path: Path):
    """BC runs with untrained large models and sizes that stop at 4M (the three largest
    budgets are best at the largest size): laws.json and report.md list the budgets used,
    the dropped ones with their reasons and a per-budget quality table; L_opt's exponent
    agrees with the measured minima."""
    runs = tmp_path / "runs"
    synthetic.bc_isoflop_sweep(runs, n_points=24, untrained=5.0, widths=(0.25, 0.5, 1, 2, 4))
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--n-boot", "0",
                          "--formats", "png", "--no-cache"]) == 0
    st = json.loads((out / "laws.json").read_text())["studies"]["atari_bc_isoflop/isoflop"]
    iso = st["fits"]["isoFLOP profiles"]
    assert len(iso["used"]) == 5 and len(iso["dropped"]) == 3
    assert all(d["reason"].startswith("best-at-largest-size") for d in iso["dropped"])
    assert max(iso["used"]) < min(d["what"] for d in iso["dropped"])
    assert st["context"]["isoFLOP budgets"] == (
        "5 used; 3 of 8 budgets dropped: 3 best-at-largest-size")
    assert iso["params"]["L_exponent"] == pytest.approx(
        iso["extra"]["L_exponent_measured"], abs=0.01)
    assert all("rms" in p for p in iso["extra"]["parabolas"].values())
    report = (out / "report.md").read_text()
    assert "### isoFLOP profiles per budget" in report
    assert "dropped: best-at-largest-size" in report
    assert "- dropped 3:" in report and "- used 5:" in report
    table = pd.DataFrame(iso["extra"]["parabolas"]).T
    assert table["ok"].sum() == 5
