"""Bounded metrics get a saturating law beside the power laws, the held-out budgets say which
forecasts better, and fits flag estimates at a bound, parameters that ran to 0 and intervals
of zero width instead of printing them as if informative (issue #7, items 4, 7, 9)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from analysis import fitting, isoflop, pipeline, report, scaling, synthetic, utd
from analysis.fitting import FitError, FitResult

# a success rate vs compute: floor 0, ceiling 1, asymptote below it
SAT = {"R_max": 0.85, "C_mid": 3e8, "s": 0.9, "R0": 0.0}
BUDGETS = np.geomspace(1e5, 1e11, 16)


def _success_rate(rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    r = fitting.predict_saturating(SAT, BUDGETS) + noise * rng.standard_normal(BUDGETS.size)
    return np.clip(r, 0.0, 1.0)  # a success rate stays in [0, 1]


# --------------------------------------------------------------------------- the law


def test_saturating_law_recovers_asymptote_midpoint_and_slope():
    """A sigmoid in log C with 0.02 noise, floor 0 and ceiling 1: R_max +-0.05, log C_mid
    +-0.3, s within 25% (worst of 40 seeds: 0.03, 0.16, 16%); the intervals contain the
    truth; a fitted floor comes out near 0."""
    R = _success_rate(np.random.default_rng(0))
    fit = fitting.fit_saturating(BUDGETS, R, floor=0.0, ceiling=1.0)
    p = fit.params
    assert p["R_max"] == pytest.approx(SAT["R_max"], abs=0.05)
    assert math.log(p["C_mid"] / SAT["C_mid"]) == pytest.approx(0, abs=0.3)
    assert p["s"] == pytest.approx(SAT["s"], rel=0.25)
    for k in ("R_max", "C_mid", "s"):
        assert fit.ci[k][0] < SAT[k] < fit.ci[k][1], (k, fit.ci[k])
    # the known floor is fixed: reported, no interval, and said so under the table
    assert p["R0"] == 0.0 and "R0" not in fit.ci and fit.extra["fixed"] == {"R0": 0.0}
    assert "- fixed (not fitted): R0 = 0" in report.fit_notes(fit)
    assert fit.extra["form"] == "R = R0 + (R_max - R0) / (1 + exp(-s (log C - log C_mid)))"
    m = fit.extra["method"]
    for part in ("least squares on R (linear residuals)", "63 starts", "best 6 refined",
                 "delta-method", "n-3 dof"):
        assert part in m, (part, m)
    assert fit.bounds["R_max"] == (0.0, 1.0) and not fit.flags
    free = fitting.fit_saturating(BUDGETS, R, ceiling=1.0)
    assert free.params["R0"] == pytest.approx(0.0, abs=0.05)
    assert free.ci["R0"][0] < 0.0 < free.ci["R0"][1] and "n-4 dof" in free.extra["method"]
    # the curve's band contains the fit, and a percentile bootstrap replaces the intervals
    iv = fitting.saturating_intervals(fit, BUDGETS)
    assert np.all(iv["conf_low"] <= iv["y"]) and np.all(iv["y"] <= iv["conf_high"])
    assert iv["y"] == pytest.approx(fitting.predict_saturating(p, BUDGETS))
    boot = fitting.fit_saturating(BUDGETS, R, floor=0.0, ceiling=1.0, n_boot=30)
    assert "percentile bootstrap over points (30 draws" in boot.extra["method"]
    assert boot.params == pytest.approx(p)
    assert boot.ci["C_mid"][0] < p["C_mid"] < boot.ci["C_mid"][1]


def test_saturating_law_wins_on_held_out_budgets_of_a_bounded_curve():
    """Fitted on the 12 smaller budgets, the saturating law forecasts the 4 largest better
    than the power law with a ceiling, in 10 of 10 noise draws (in 40 of 40 checked)."""
    for seed in range(10):
        R = _success_rate(np.random.default_rng(seed))
        cmp = fitting.compare_saturating(BUDGETS, R, floor=0.0, ceiling=1.0, n_holdout=4)
        assert cmp.best == "saturating", (seed, cmp.line())
        assert cmp.test == pytest.approx(BUDGETS[-4:].tolist())
        assert cmp.train_max == pytest.approx(BUDGETS[-5])
        assert cmp.rmse["saturating"] < 0.5 * cmp.rmse["power law with ceiling"]
    # success rates clipped at 0: the log-log power law cannot be fitted, and says why
    assert math.isnan(cmp.rmse["power law"]) and "non-positive" in cmp.errors["power law"]
    assert cmp.line().endswith("better: saturating")
    assert [r["law"] for r in cmp.rows()] == list(cmp.rmse)
    json.dumps(cmp.to_json(), allow_nan=False)


def test_power_law_wins_on_held_out_budgets_of_a_power_law_curve():
    """R = 0.02 C^0.25 with 3% noise: the power law forecasts the held-out budgets better
    than the saturating law in at least 8 of 10 draws (36 of 40 checked), whose fit puts
    the midpoint beyond the data and says so."""
    wins = 0
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        y = 0.02 * BUDGETS**0.25 * np.exp(0.03 * rng.standard_normal(BUDGETS.size))
        cmp = fitting.compare_saturating(BUDGETS, y, n_holdout=4)
        wins += cmp.best == "power law"
    assert wins >= 8
    fit = fitting.fit_saturating(BUDGETS, y)
    assert fit.params["C_mid"] > BUDGETS.max()
    assert any("beyond the largest C" in f for f in fit.flags), fit.flags


def test_saturating_law_flags_and_bad_input():
    # data that stop before the bend: R_max runs to the ceiling, the midpoint is beyond
    # the largest budget; both are flagged
    C = np.geomspace(1e5, 1e7, 8)
    early = fitting.predict_saturating(SAT, C) + 1e-3 * np.random.default_rng(1).normal(size=8)
    fit = fitting.fit_saturating(C, np.clip(early, 0, 1), floor=0.0, ceiling=1.0)
    assert any(f.startswith("R_max = 1 is at its upper bound") for f in fit.flags), fit.flags
    assert any(f.startswith("C_mid = ") and "beyond the largest C (1e+07)" in f
               for f in fit.flags), fit.flags
    # a curve heading above the ceiling (clipped there): R_max pinned at 1, bend in the data
    top = fitting.predict_saturating({**SAT, "R_max": 1.3, "C_mid": 3e9}, BUDGETS)
    top = np.clip(top + 0.01 * np.random.default_rng(2).standard_normal(16), 0, 1)
    fit = fitting.fit_saturating(BUDGETS, top, floor=0.0, ceiling=1.0)
    assert fit.ci["R_max"][1] == 1.0
    assert [f.split(":")[0] for f in fit.flags] == ["R_max = 1 is at its upper bound"]
    with pytest.raises(FitError, match=r"^R: 1 value\(s\) above the ceiling 1 \(max 1.2\)$"):
        fitting.fit_saturating(BUDGETS, np.r_[top[:-1], 1.2], ceiling=1.0)
    with pytest.raises(FitError, match=r"^success: 1 value\(s\) below the floor 0"):
        fitting.fit_saturating(BUDGETS, np.r_[-0.1, top[1:]], floor=0.0,
                               names=("C", "success"))
    with pytest.raises(FitError, match="too few points for C: 4 given, at least 5 needed"):
        fitting.fit_saturating(BUDGETS[:4], top[:4])
    with pytest.raises(FitError, match="^C: 3 distinct values, at least 4 needed"):
        fitting.fit_saturating(np.repeat(BUDGETS[:3], 2), np.repeat(top[:3], 2))
    with pytest.raises(FitError, match=r"^C: 1 non-positive value\(s\) where a log is taken"):
        fitting.fit_saturating(np.r_[-1.0, BUDGETS[1:]], top)
    with pytest.raises(FitError, match=r"^R: 1 NaN or infinite value\(s\)$"):
        fitting.fit_saturating(BUDGETS, np.r_[np.nan, top[1:]])


def test_saturating_law_does_not_depend_on_compute_units():
    """FLOPs -> PF-days: s, R_max and R0 unchanged, C_mid moves by the factor."""
    R = _success_rate(np.random.default_rng(5))
    pf_day = 1e15 * 86400
    a = fitting.fit_saturating(BUDGETS, R, ceiling=1.0)
    b = fitting.fit_saturating(BUDGETS / pf_day, R, ceiling=1.0)
    for k in ("s", "R_max", "R0"):
        assert b.params[k] == pytest.approx(a.params[k], rel=1e-5, abs=1e-9), k
    assert b.params["C_mid"] * pf_day == pytest.approx(a.params["C_mid"], rel=1e-5)


def test_metric_range_and_loss_metrics_keep_power_laws_only():
    assert scaling.metric_range("eval_success", [0.0, 0.5, 1.0]) == (0.0, 1.0)
    assert scaling.metric_range("success_rate", [0.0, 50.0]) == (None, None)  # percent
    assert scaling.metric_range("return_mean", [0.1, 0.9]) == (None, None)


def test_scaling_study_compares_saturating_and_power_laws(tmp_path: Path):
    """The scaling driver fits the best return vs compute on the frontier with the
    saturating law and the power laws, and the report and laws.json say which forecast the
    held-out budgets better; the existing laws are unchanged."""
    runs = tmp_path / "runs"
    synthetic.hilton_width_sweep(runs, seeds=(0, 1), n_points=32)
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--n-boot", "0",
                          "--formats", "png"]) == 0
    st = json.loads((out / "laws.json").read_text())["studies"]["procgen_width/scaling"]
    laws = [f"best return_mean vs compute ({law})"
            for law in ("saturating", "power law with ceiling", "power law")]
    for name in laws:
        fit = st["fits"][name]
        assert len(fit["used"]) == fit["n_points"] == scaling.FRONTIER_POINTS, name
        assert any("running-best frontier" in f for f in fit["flags"]), name
    sat = st["fits"][laws[0]]
    assert set(sat["params"]) == {"R_max", "C_mid", "s", "R0"}
    assert sat["extra"]["heldout"]["best"] in sat["extra"]["heldout"]["rmse"]
    better = st["context"]["best return_mean vs compute, better on held-out budgets"]
    assert better == sat["extra"]["heldout"]["best"]
    assert "RMSE on the 4 largest budgets" in st["context"][
        "best return_mean vs compute, held-out check"]
    assert "procgen_width_scaling_return_mean_vs_compute_laws.png" in st["figures"]
    text = (out / "report.md").read_text()
    assert "### best return_mean vs compute: laws on held-out budgets" in text
    assert f"- best return_mean vs compute, better on held-out budgets: {better}" in text
    # the frontier law says which sizes it used and which it dropped
    size_law = st["fits"]["optimal size vs compute (frontier)"]
    assert len(size_law["used"]) == size_law["n_points"]
    assert all("never the best size" in d["reason"] for d in size_law["dropped"])


# --------------------------------------------------------------------------- flags


def test_power_offset_flags_the_constant_pinned_at_min_y():
    """L_opt = L_inf + c C^k in log space bounds L_inf by min L_opt; with 2% noise on 6
    budgets the optimum sits there in 1 draw of 20 (this one): flagged as at its upper
    bound, with the bounds recorded, under the report's table and in laws.json."""
    C = np.geomspace(1e15, 1e20, 6)
    rng = np.random.default_rng(13)
    L = (1.5 + 3.0 * (C / 1e15) ** -0.4) * np.exp(0.02 * rng.standard_normal(6))
    fit = fitting.fit_power_offset(C, L)
    assert fit.bounds["offset"] == (0.0, L.min()) and fit.bounds["k"] == (-5.0, 5.0)
    assert fit.params["offset"] == pytest.approx(L.min(), rel=1e-6)
    assert fit.ci["offset"][1] == L.min()  # the interval is clipped to the bound
    flag = f"offset = {L.min():.4g} is at its upper bound"
    assert [f.split(":")[0] for f in fit.flags] == [flag], fit.flags
    assert any(f"**flag:** {flag}" in line for line in report.fit_notes(fit))
    assert fit.to_json()["flags"] == fit.flags


def test_bootstrap_of_a_pure_power_law_flags_the_constant_at_zero():
    """y = 3 x^-0.5 exactly: the constant runs to its lower bound 0 in the fit and in every
    bootstrap draw; the bound is flagged, the interval is no information."""
    x = np.geomspace(1, 32, 6)
    fit = fitting.fit_power_offset(x, 3 * x**-0.5, n_boot=20)
    assert fit.params["offset"] == pytest.approx(0.0, abs=1e-6)
    assert fit.ci["offset"][1] < 1e-6
    assert any(f.startswith("offset = ") and "lower bound" in f for f in fit.flags), fit.flags


def test_bootstrap_fit_whose_e_runs_to_zero_is_flagged():
    """Chinchilla Approach 3 on a surface with E = 0: log E runs off (to about -53), every
    warm-started draw stays there, and E's interval has zero width: flagged on
    construction; :func:`fitting.flag_log_zero` on log E adds "at its lower bound 0"."""
    rng = np.random.default_rng(4)  # log E < -30 in 3 of the first 6 seeds
    N = np.repeat(np.geomspace(1e6, 1e8, 5), 5)
    D = np.tile(np.geomspace(1e8, 1e10, 5), 5)
    L = (400 / N**0.34 + 410 / D**0.28) * np.exp(0.003 * rng.standard_normal(N.size))
    # variable projection (the default) puts E exactly on its bound 0 and flags it; its
    # bootstrap draws can leave 0, so the interval is not degenerate
    vp = isoflop.fit_chinchilla(N, D, L, n_boot=10)
    assert vp.params["E"] == 0.0 and vp.ci["E"][1] > 0
    assert any(f.startswith("E = 0 is at its lower bound") for f in vp.flags), vp.flags
    # the grid search parametrises E = exp(log E): log E runs off and the interval collapses
    fit = isoflop.fit_chinchilla(N, D, L, n_boot=10, method="grid")
    log_e = fit.extra["theta"]["log_E"]
    assert log_e < fitting.LOG_ZERO
    assert any(f.startswith("E's interval") and "zero width" in f for f in fit.flags), fit.flags
    assert fitting.flag_log_zero(fit, "E", log_e)
    assert any(f.startswith("E is at its lower bound 0 (log E = ") for f in fit.flags)
    assert not fitting.flag_log_zero(fit, "A", fit.extra["theta"]["log_A"])
    assert fitting.flag_log_zero(fit, "B", -math.inf)  # underflowed: also at 0


def test_zero_width_interval_flag_follows_the_intervals():
    fit = FitResult(law="x", params={"a": 1.0, "b": 2.0}, ci={"a": (1.0, 1.0),
                    "b": (1.5, 2.5)}, n_points=5, loss=0.0, bounds={"b": (0.0, 2.0)})
    assert any(f.startswith("a's interval [1, 1] has zero width") for f in fit.flags)
    assert any(f.startswith("b = 2 is at its upper bound") for f in fit.flags)
    fit.flag("my own note")
    fit.ci["a"] = (0.5, 1.5)  # e.g. bootstrap intervals replacing delta-method ones
    fit.bounds["b"] = (0.0, 10.0)
    fit.check()
    assert fit.flags == ["my own note"]  # the automatic flags of the old values are gone
    fit.ci["b"] = (2.0, 2.0)
    fit.check()
    assert fit.flags[0] == "my own note" and "b's interval [2, 2] has zero width" in fit.flags[1]


def test_utd_law_records_its_bounds_and_flags_d_min_at_min_d():
    """Barely falling D: D_min runs to its upper bound min D (alpha near its 0.01)."""
    sigma = np.repeat([0.5, 1, 2, 4, 8], 2)
    D = (1e5 + 50 / sigma) * np.exp(1e-3 * np.random.default_rng(3).standard_normal(10))
    fit = utd.fit_utd(sigma, D)
    assert fit.bounds == {"alpha": (0.01, 5.0), "D_min": (0.0, D.min())}
    assert [f.split(":")[0] for f in fit.flags] == [
        f"D_min = {D.min():.4g} is at its upper bound"]


def test_utd_workflow_fits_say_what_they_used_and_dropped():
    """One task, sigma 1..16, 2 seeds per (B, eta) cell: sigma = 16 never reaches the
    threshold (every cell NaN), one seed of sigma = 2 never reaches the lower threshold. The
    B*/eta* laws and every D_J(sigma) law list the sigma they used and what they dropped
    and why (with the bootstrap: the intervals it replaces are re-checked)."""
    rng = np.random.default_rng(4)
    grid = np.meshgrid([1, 2, 4, 8, 16], 2.0 ** np.arange(5, 10),
                       1e-3 * 2.0 ** np.arange(-3, 2))
    sig, bs, lrs = (np.repeat(a.ravel(), 2) for a in grid)
    D = synthetic.utd_data_to_threshold(sig, bs, lrs) * np.exp(
        0.02 * rng.standard_normal(sig.size))
    hi, lo = D.copy(), 0.8 * D
    hi[sig == 16] = np.nan
    lo[sig == 16] = np.nan
    wf = utd.fit_utd_workflow({1.0: lo, 2.0: hi}, sig, bs, lrs, main_j=2.0, n_boot=0)
    best2 = next(r for r in wf.best if r["sigma"] == 2)
    cell2 = (sig == 2) & (bs == best2["B"]) & (lrs == best2["lr"])
    lo[np.flatnonzero(cell2)[0]] = np.nan  # one seed of sigma = 2's best cell misses J = 1
    wf = utd.fit_utd_workflow({1.0: lo, 2.0: hi}, sig, bs, lrs, main_j=2.0, n_boot=5)
    for name in ("B", "lr"):
        fit = wf.hparam_fits[name]
        assert fit.used == [f"all sigma={s}" for s in (1, 2, 4, 8)]
        assert fit.dropped == [{"what": "all sigma=16", "reason": "no (B, eta) cell where "
                                "every seed reached the main threshold J=2"}]
    main = wf.utd_fits[(2.0, "all")]
    assert main.used == [1.0, 2.0, 4.0, 8.0]
    assert [d["what"] for d in main.dropped] == ["sigma=16"]
    low = wf.utd_fits[(1.0, "all")]
    assert low.used == [1.0, 2.0, 4.0, 8.0]
    assert low.dropped[0] == {"what": "sigma=2 (1 of 2 seeds)",
                              "reason": "never reached J=1 (the other seeds are used)"}
    assert low.dropped[1]["what"] == "sigma=16"
    notes = "\n".join(report.fit_notes(low))
    assert "- used 4: 1, 2, 4, 8" in notes and "- dropped 2:" in notes
    json.dumps(low.to_json(), allow_nan=False)
