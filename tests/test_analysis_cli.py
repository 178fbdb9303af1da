"""``python -m analysis fit LAW --csv FILE --col ROLE=COLUMN --json`` round-trips every law."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import cli_fit, synthetic
from analysis.fitting import FitError

KEYS = {"law", "params", "ci", "n_points", "loss", "used", "dropped", "flags", "notes"}
ISOFLOP_KEYS = KEYS | {"budgets_used", "budgets_dropped", "profiles"}


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, dict | None, str]:
    rc = cli_fit.main(argv)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 and "--json" in argv else None), err


def _check_shape(res: dict, law: str) -> None:
    assert set(res) == (ISOFLOP_KEYS if law == "isoflop" else KEYS)
    assert res["law"] == law
    assert list(res["params"]) == list(cli_fit.PARAMS[law])
    assert set(res["ci"]) == set(cli_fit.PARAMS[law])
    assert all(len(v) == 2 for v in res["ci"].values())


def test_power_with_and_without_offset(tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    x = np.geomspace(1e3, 1e9, 20)
    csv = tmp_path / "t.csv"
    pd.DataFrame({"compute": x, "val": 0.3 + 2.0 * x**-0.2 * np.exp(
        0.005 * rng.standard_normal(x.size))}).to_csv(csv, index=False)
    rc, res, _ = _run(capsys, ["power", "--csv", str(csv), "--col", "x=compute",
                               "--col", "y=val", "--offset", "--json"])
    assert rc == 0
    _check_shape(res, "power")
    assert res["params"]["k"] == pytest.approx(-0.2, abs=0.04)
    assert res["params"]["offset"] == pytest.approx(0.3, abs=0.05)
    assert res["n_points"] == 20
    rc, res, _ = _run(capsys, ["power", "--csv", str(csv), "--col", "x=compute",
                               "--col", "y=val", "--json"])
    assert rc == 0 and res["params"]["offset"] == 0.0 and res["ci"]["offset"] == [0.0, 0.0]


def test_chinchilla_with_d_derived_from_compute(tmp_path: Path, capsys):
    rng = np.random.default_rng(1)
    N = np.repeat(np.geomspace(1e5, 1e8, 6), 6)
    D = np.tile(np.geomspace(1e6, 1e10, 6), 6)
    L = synthetic.bc_loss(N, D) * np.exp(0.005 * rng.standard_normal(N.size))
    csv = tmp_path / "c.csv"
    pd.DataFrame({"params": N, "flops": 6 * N * D, "loss": L}).to_csv(csv, index=False)
    rc, res, _ = _run(capsys, ["chinchilla", "--csv", str(csv), "--col", "N=params",
                               "--col", "C=flops", "--n-boot", "5", "--json"])
    assert rc == 0
    _check_shape(res, "chinchilla")
    t = synthetic.BC_TRUTH
    assert res["params"]["alpha"] == pytest.approx(t["alpha"], abs=0.06)
    assert res["params"]["beta"] == pytest.approx(t["beta"], abs=0.05)
    assert res["params"]["a"] == pytest.approx(t["beta"] / (t["alpha"] + t["beta"]), abs=0.06)


def _isoflop_csv(tmp_path: Path) -> Path:
    """Losses from the BC Chinchilla surface on 9 sizes x 5 budgets (D = C / 6N), 0.3% noise."""
    rng = np.random.default_rng(2)
    sizes, budgets = np.geomspace(3e4, 3e8, 9), np.geomspace(1e14, 1e18, 5)
    N, C = (a.ravel() for a in np.meshgrid(sizes, budgets))
    L = synthetic.bc_loss(N, C / (6 * N)) * np.exp(0.003 * rng.standard_normal(N.size))
    csv = tmp_path / "i.csv"
    pd.DataFrame({"N": N, "C": C, "loss": L}).to_csv(csv, index=False)
    return csv


def test_isoflop_and_utd(tmp_path: Path, capsys):
    csv = _isoflop_csv(tmp_path)
    rc, res, _ = _run(capsys, ["isoflop", "--csv", str(csv), "--json"])  # default names
    assert rc == 0
    _check_shape(res, "isoflop")
    t = synthetic.BC_TRUTH
    assert res["params"]["a"] == pytest.approx(t["beta"] / (t["alpha"] + t["beta"]), abs=0.05)

    u = synthetic.UTD_TRUTH
    sigma = np.repeat([0.5, 1, 2, 4, 8, 16], 2)
    D = synthetic.utd_best_data(sigma, u) * np.exp(
        0.02 * np.random.default_rng(2).standard_normal(sigma.size))
    csv = tmp_path / "u.csv"
    pd.DataFrame({"utd": sigma, "steps": D}).to_csv(csv, index=False)
    rc, res, _ = _run(capsys, ["utd", "--csv", str(csv), "--col", "sigma=utd",
                               "--col", "D=steps", "--json"])
    assert rc == 0
    _check_shape(res, "utd")
    assert res["params"]["alpha"] == pytest.approx(u["alpha_J"], abs=0.1)
    assert math.log(res["params"]["beta"] / u["beta_J"]) == pytest.approx(0, abs=0.5)


def test_intrinsic(tmp_path: Path, capsys):
    rng = np.random.default_rng(3)
    sizes = synthetic.IMPALA_PARAMS * np.array([0.25, 0.5, 1, 2, 4]) ** 2
    E = np.geomspace(3e5, 3e7, 24)
    N, EE = (a.ravel() for a in np.meshgrid(sizes, E))
    R = synthetic.hilton_return(N, EE) + 0.1 * rng.standard_normal(N.size)
    csv = tmp_path / "h.csv"
    pd.DataFrame({"N": N, "E": EE, "ret": R}).to_csv(csv, index=False)
    rc, res, _ = _run(capsys, ["intrinsic", "--csv", str(csv), "--col", "return=ret",
                               "--n-boot", "0", "--json"])
    assert rc == 0
    _check_shape(res, "intrinsic")
    t = synthetic.HILTON_TRUTH
    assert res["params"]["alpha_N"] == pytest.approx(t["alpha_N"], abs=0.1)
    assert res["params"]["alpha_E"] == pytest.approx(t["alpha_E"], abs=0.12)
    assert res["ci"]["alpha_N"] == [None, None]  # no bootstrap asked for


def test_errors_are_one_line_with_status_2(tmp_path: Path, capsys):
    csv = tmp_path / "e.csv"
    pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0, -2.0, 3.0, 4.0]}).to_csv(csv,
                                                                               index=False)
    cases = [
        (["power", "--csv", str(csv), "--col", "x=a"], "no column for role 'y'"),
        (["power", "--csv", str(csv), "--col", "x=a", "--col", "y=zz"], "'zz' (role y)"),
        (["power", "--csv", str(csv), "--col", "x=a", "--col", "y=b"], "y: 1 non-positive"),
        (["utd", "--csv", str(csv), "--col", "sigma=a", "--col", "D=a", "--col", "x=a"],
         "unknown role"),
        (["chinchilla", "--csv", str(csv), "--col", "N=a", "--col", "loss=a"],
         "role 'D'"),
        (["power", "--csv", str(tmp_path / "nope.csv")], "CSV not found"),
    ]
    for argv, msg in cases:
        rc, _, err = _run(capsys, argv)
        assert rc == 2, argv
        assert msg in err, (argv, err)
        assert err.count("\n") == 1 and err.startswith("error: ")
    pd.DataFrame({"x": [1, 2], "y": [1, 2]}).to_csv(csv, index=False)
    rc, _, err = _run(capsys, ["power", "--csv", str(csv)])
    assert rc == 2 and "too few points" in err


def test_isoflop_offset_fits_l_inf(tmp_path: Path, capsys):
    """``--offset`` fits L_opt = L_inf + c C^k (the surface's floor E is the L_opt asymptote);
    without it L_inf is 0, as power's offset is."""
    csv = _isoflop_csv(tmp_path)
    rc, res, _ = _run(capsys, ["isoflop", "--csv", str(csv), "--offset", "--json"])
    assert rc == 0
    _check_shape(res, "isoflop")
    lo, hi = res["ci"]["L_inf"]
    assert res["params"]["L_inf"] == pytest.approx(synthetic.BC_TRUTH["E"], abs=0.1)
    assert lo <= res["params"]["L_inf"] <= hi
    plain = _run(capsys, ["isoflop", "--csv", str(csv), "--json"])[1]
    assert plain["params"]["L_inf"] == 0.0 and plain["ci"]["L_inf"] == [0.0, 0.0]
    assert plain["params"]["L_exponent"] != res["params"]["L_exponent"]


def test_utd_on_flat_or_rising_data_is_a_one_line_error(tmp_path: Path, capsys):
    """Constant D (or D rising with sigma) used to end in an OverflowError traceback."""
    sigma = np.repeat([0.5, 1, 2, 4, 8], 2)
    for name, D in (("flat", np.full(sigma.size, 1e5)), ("rising", 1e5 * sigma**0.3)):
        csv = tmp_path / f"{name}.csv"
        pd.DataFrame({"sigma": sigma, "D": D}).to_csv(csv, index=False)
        for n_boot in ("0", "5"):
            rc, _, err = _run(capsys, ["utd", "--csv", str(csv), "--n-boot", n_boot, "--json"])
            assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)


@pytest.mark.parametrize("exc", [OverflowError("math range error"), ZeroDivisionError("x"),
                                 FloatingPointError("y"), np.linalg.LinAlgError("Singular"),
                                 ValueError("bad\nvalue")])
def test_numeric_failures_in_a_fit_are_one_line_errors(tmp_path: Path, capsys, monkeypatch,
                                                       exc: Exception):
    def fail(*_: object) -> None:
        raise exc

    monkeypatch.setitem(cli_fit.FITTERS, "power", fail)
    csv = tmp_path / "p.csv"
    pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 2.0, 3.0, 4.0]}).to_csv(csv,
                                                                               index=False)
    rc, _, err = _run(capsys, ["power", "--csv", str(csv)])
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {type(exc).__name__}: ")  # the type says what went wrong


def test_bad_options_are_one_line_errors(tmp_path: Path, capsys):
    csv = tmp_path / "c.csv"
    pd.DataFrame({"N": [1e5, 1e6, 1e7, 1e8], "C": [1e15] * 4,
                  "loss": [3.0, 2.0, 2.5, 3.5]}).to_csv(csv, index=False)
    cases = [(["--flops-per-param-sample", "0"], "--flops-per-param-sample must be > 0"),
             (["--flops-per-param-sample", "-6"], "--flops-per-param-sample must be > 0"),
             (["--flops-per-param-sample", "nan"], "--flops-per-param-sample must be > 0"),
             (["--level", "0"], "--level must be in (0, 1)"),
             (["--level", "1"], "--level must be in (0, 1)"),
             (["--level", "95"], "--level must be in (0, 1)"),
             (["--n-boot", "-1"], "--n-boot must be >= 0")]
    for law in ("chinchilla", "isoflop"):
        for opts, msg in cases:
            rc, _, err = _run(capsys, [law, "--csv", str(csv), *opts])
            assert rc == 2 and err == f"error: {msg}, got {opts[1]}\n", (law, opts, err)


def test_module_entry_point(tmp_path: Path):
    csv = tmp_path / "p.csv"
    x = np.geomspace(1, 1e4, 6)
    pd.DataFrame({"x": x, "y": 2 * x**0.5}).to_csv(csv, index=False)
    proc = subprocess.run([sys.executable, "-m", "analysis", "fit", "power", "--csv", str(csv),
                           "--json"], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    res = json.loads(proc.stdout)
    assert res["params"]["k"] == pytest.approx(0.5, abs=1e-9)


def test_options_a_law_ignores_are_one_line_errors(tmp_path: Path, capsys):
    """``fit power`` without ``--offset`` is a log-log OLS fit: --n-boot, --seed, --space and
    the run role would be ignored, so they are refused (they were accepted silently); the
    same for each law's other unused options. Where they apply they work."""
    rng = np.random.default_rng(5)
    x = np.repeat(np.geomspace(1e3, 1e9, 10), 2)
    csv = tmp_path / "p.csv"
    pd.DataFrame({"x": x, "y": 0.3 + 2.0 * x**-0.2 * np.exp(0.005 * rng.standard_normal(
        x.size)), "r": np.repeat(np.arange(10), 2), "D": x, "C": x}).to_csv(csv, index=False)
    p = ["power", "--csv", str(csv)]
    cases = [
        (p + ["--n-boot", "5"], "--n-boot applies only with --offset"),
        (p + ["--seed", "3"], "--seed applies only with --offset"),
        (p + ["--space", "linear"], "--space applies only with --offset"),
        (p + ["--space", "log"], "--space applies only with --offset"),
        (p + ["--col", "run=r"], "role 'run' (the bootstrap unit) applies only with --offset"),
        (p + ["--offset", "--col", "run=r"], "--n-boot > 0"),
        (p + ["--flops-per-param-sample", "6"], "--flops-per-param-sample applies only"),
        (["utd", "--csv", str(csv), "--col", "sigma=x", "--col", "D=y", "--offset"],
         "--offset applies only to power and isoflop, not utd"),
        (["utd", "--csv", str(csv), "--col", "sigma=x", "--col", "D=y", "--col", "run=r"],
         "role 'run' (the bootstrap unit) applies only with --n-boot > 0 (utd defaults to 0)"),
        (["isoflop", "--csv", str(csv), "--col", "N=x", "--col", "loss=y", "--n-boot", "9"],
         "--n-boot does not apply to isoflop"),
        (["isoflop", "--csv", str(csv), "--col", "N=x", "--col", "loss=y", "--col", "D=D",
          "--flops-per-param-sample", "6"], "--col D= gives D"),  # D named explicitly
        (["chinchilla", "--csv", str(csv), "--col", "N=x", "--col", "loss=y", "--space", "log"],
         "--space applies only with --offset (power): chinchilla has no --space"),
        (["chinchilla", "--csv", str(csv), "--col", "N=x", "--col", "loss=y", "--col", "C=C",
          "--col", "D=D"], "role 'C' is used only without a D column"),
        (p + ["--window", "3"], "--window applies only to isoflop, not power"),
        (p + ["--maximize"], "--maximize applies only to isoflop"),
        (p + ["--budget-tolerance", "0.1"], "--budget-tolerance applies only to isoflop"),
        (p + ["--seeds", "mean"], "--seeds applies only to isoflop and chinchilla"),
        (["isoflop", "--csv", str(csv), "--col", "N=x", "--col", "loss=y", "--method", "grid"],
         "--method applies only to chinchilla, not isoflop"),
    ]
    for argv, msg in cases:
        rc, _, err = _run(capsys, argv)
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert msg in err, (argv, err)
    # where they apply they are used: a bootstrap over runs with --offset
    rc, res, _ = _run(capsys, p + ["--offset", "--space", "log", "--n-boot", "8", "--seed", "1",
                                   "--col", "run=r", "--json"])
    assert rc == 0 and res["ci"]["k"][0] < res["params"]["k"] < res["ci"]["k"][1]
    # a CSV column merely named like a role is not "given"
    df = pd.read_csv(csv).rename(columns={"r": "run"})
    assert cli_fit.fit_table("power", df)["params"]["offset"] == 0.0
    with pytest.raises(FitError, match="--n-boot applies only with --offset"):
        cli_fit.fit_table("power", df, n_boot=5)


# ------------------------------------------------- isoflop and chinchilla on real-shaped tables


def _lopsided_csv(tmp_path: Path, name: str = "lop.csv", **kw: object) -> Path:
    csv = tmp_path / name
    synthetic.lopsided_isoflop_table(**kw).to_csv(csv, index=False)
    return csv


def test_isoflop_json_lists_budgets_used_and_dropped(tmp_path: Path, capsys):
    """Untrained large models at small budgets (losses 15-52 next to 1.2) no longer crash
    the fit; the JSON says which budgets were used, which dropped and why, and each
    budget's fit quality; the human output says the same."""
    csv = _lopsided_csv(tmp_path, sizes=tuple(np.geomspace(3e6, 3e9, 7)))
    rc, res, _ = _run(capsys, ["isoflop", "--csv", str(csv), "--json"])
    assert rc == 0
    _check_shape(res, "isoflop")
    assert res["budgets_used"] == pytest.approx([1e16, 1e17, 1e18, 1e19])
    assert res["used"] == res["budgets_used"]
    [drop] = res["budgets_dropped"]
    assert drop["budget"] == pytest.approx(1e15)
    assert drop["reason"].startswith("best-at-smallest-size: lowest loss at the smallest size")
    prof = res["profiles"]
    assert len(prof) == 5 and [p["ok"] for p in prof] == [False] + [True] * 4
    assert prof[0]["code"] == "best-at-smallest-size"
    assert all(p["rms"] < 0.05 for p in prof if p["ok"])
    assert any(n.startswith("profiles: parabola in log loss") for n in res["notes"])
    assert cli_fit.main(["isoflop", "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    assert "used 4 budgets: 1e+16, 1e+17, 1e+18, 1e+19" in text
    assert "dropped 1e+15: best-at-smallest-size" in text and "note: " in text


def test_isoflop_averages_repeated_seeds_and_says_so(tmp_path: Path, capsys):
    """The same (N, C) with 3 seeds: averaged as the pipeline does (it was weighted by
    the number of rows), or kept with --seeds all; notes say which."""
    df = synthetic.lopsided_isoflop_table(seeds=3, noise=0.02, rng=4)
    csv = tmp_path / "s.csv"
    df.to_csv(csv, index=False)
    mean = df.groupby(["N", "C"], as_index=False)["loss"].mean()
    csv_mean = tmp_path / "m.csv"
    mean.to_csv(csv_mean, index=False)
    res = _run(capsys, ["isoflop", "--csv", str(csv), "--json"])[1]
    ref = _run(capsys, ["isoflop", "--csv", str(csv_mean), "--json"])[1]
    assert res["params"]["a"] == pytest.approx(ref["params"]["a"], abs=1e-12)
    assert res["n_points"] == 45
    assert "repeated (N, C) rows averaged (mean loss): 135 rows -> 45 points" in res["notes"]
    rows = _run(capsys, ["isoflop", "--csv", str(csv), "--seeds", "all", "--json"])[1]
    assert rows["n_points"] == 135 and rows["params"]["a"] != res["params"]["a"]
    assert any("kept as separate points" in n for n in rows["notes"])


def test_isoflop_budget_tolerance_groups_per_run_budgets(tmp_path: Path, capsys):
    """Budgets computed per run (6 N D, D in whole batches) differ in the 3rd-5th digit:
    the default 1% tolerance groups them; with 0 the error is one short line that counts
    the 42 one-size budgets instead of listing them."""
    csv = _lopsided_csv(tmp_path, batch=2048)
    rc, res, _ = _run(capsys, ["isoflop", "--csv", str(csv), "--json"])
    assert rc == 0 and len(res["budgets_used"]) == 5
    assert "42 distinct budgets grouped into 5 (relative tolerance 0.01)" in res["notes"]
    rc, _, err = _run(capsys, ["isoflop", "--csv", str(csv), "--budget-tolerance", "0"])
    assert rc == 2 and err.count("\n") == 1 and len(err) < 320
    assert "(42 of 42 budgets dropped: 42 too-few-sizes)" in err


def test_isoflop_window_and_tolerance_options(tmp_path: Path, capsys):
    csv = _lopsided_csv(tmp_path)
    rc, _, err = _run(capsys, ["isoflop", "--csv", str(csv), "--window", "all"])
    assert rc == 2 and "3 of 5 budgets dropped: 3 optimum-beyond-data" in err
    rc, res, _ = _run(capsys, ["isoflop", "--csv", str(csv), "--window", "all",
                               "--optimum-tolerance", "1", "--json"])
    assert rc == 0 and len(res["budgets_used"]) == 5
    one = _run(capsys, ["isoflop", "--csv", str(csv), "--window", "1", "--json"])[1]
    assert all(p["n_window"] == 3 for p in one["profiles"])
    rc, _, err = _run(capsys, ["isoflop", "--csv", str(csv), "--window", "-1"])
    assert rc == 2 and "--window must be >= 1" in err
    rc, _, err = _run(capsys, ["isoflop", "--csv", str(csv), "--optimum-tolerance", "-1"])
    assert rc == 2 and "--optimum-tolerance must be >= 0" in err


def test_isoflop_maximize_fits_returns_directly(tmp_path: Path, capsys):
    """``--maximize`` profiles a score (role ``score``): a return R = K / L gives the loss's
    N_opt and the negated L exponent, without the ``loss = log(K / R)`` workaround."""
    df = synthetic.lopsided_isoflop_table()
    df["ret"] = 1000.0 / df["loss"]
    csv = tmp_path / "r.csv"
    df.to_csv(csv, index=False)
    lo = _run(capsys, ["isoflop", "--csv", str(csv), "--json"])[1]
    rc, hi, _ = _run(capsys, ["isoflop", "--csv", str(csv), "--maximize", "--col", "score=ret",
                              "--json"])
    assert rc == 0
    assert hi["params"]["a"] == pytest.approx(lo["params"]["a"], abs=1e-9)
    assert hi["params"]["L_exponent"] == pytest.approx(-lo["params"]["L_exponent"], abs=1e-9)
    for argv, msg in (
            (["--col", "score=ret"], "role 'score' is maximised: add --maximize"),
            (["--maximize"], "no column for role 'score'"),
            (["--maximize", "--col", "score=ret", "--col", "loss=loss"],
             "with --maximize the metric role is 'score'")):
        rc, _, err = _run(capsys, ["isoflop", "--csv", str(csv), *argv])
        assert rc == 2 and msg in err and err.count("\n") == 1, (argv, err)


def test_explicit_roles_win_over_a_column_named_like_one(tmp_path: Path, capsys):
    """A column that happens to be named ``D`` no longer blocks deriving D from C: with
    --flops-per-param-sample (or chinchilla's --col C=) it is left unused, and said so;
    named with --col D= it is used, and the conflicting option refused."""
    df = synthetic.lopsided_isoflop_table()
    df["D"] = 1.0  # an unrelated column that happens to be called D
    csv = tmp_path / "d.csv"
    df.to_csv(csv, index=False)
    rc, res, _ = _run(capsys, ["isoflop", "--csv", str(csv), "--flops-per-param-sample", "6",
                               "--json"])
    assert rc == 0
    assert res["params"]["a"] + res["params"]["b"] == pytest.approx(1.0)
    assert any(n.startswith("column 'D' not used") for n in res["notes"])
    rc, _, err = _run(capsys, ["isoflop", "--csv", str(csv), "--col", "D=D",
                               "--flops-per-param-sample", "6"])
    assert rc == 2 and "--col D= gives D" in err
    # chinchilla: an explicit C beats an inferred D
    rng = np.random.default_rng(1)
    N = np.repeat(np.geomspace(1e5, 1e8, 6), 6)
    D = np.tile(np.geomspace(1e6, 1e10, 6), 6)
    L = synthetic.bc_loss(N, D) * np.exp(0.005 * rng.standard_normal(N.size))
    csv = tmp_path / "c.csv"
    pd.DataFrame({"N": N, "flops": 6 * N * D, "D": np.ones_like(N), "loss": L}).to_csv(
        csv, index=False)
    rc, res, _ = _run(capsys, ["chinchilla", "--csv", str(csv), "--col", "C=flops",
                               "--n-boot", "0", "--json"])
    assert rc == 0 and res["params"]["alpha"] == pytest.approx(synthetic.BC_TRUTH["alpha"],
                                                               abs=0.06)
    assert any("column 'D' not used" in n for n in res["notes"])
    assert "D derived as C / (k N), k = 6" in res["notes"]


def test_chinchilla_on_one_budget_is_a_one_line_refusal(tmp_path: Path, capsys):
    """N and D collinear (every run at one budget): it returned alpha 5.3 and A 7.6e40 with
    an overflow warning; now one line, exit 2, for both methods."""
    N = np.geomspace(1e5, 1e9, 9)
    csv = tmp_path / "one.csv"
    pd.DataFrame({"N": N, "C": np.full(9, 1e17),
                  "loss": synthetic.lopsided_loss(N, 1e17 / (6 * N))}).to_csv(csv, index=False)
    for method in ("varpro", "grid"):
        rc, _, err = _run(capsys, ["chinchilla", "--csv", str(csv), "--method", method])
        assert rc == 2 and err.count("\n") == 1, err
        assert "every point is on one budget" in err and "Warning" not in err


def test_chinchilla_methods_and_seeds(tmp_path: Path, capsys):
    rng = np.random.default_rng(6)
    N = np.repeat(np.geomspace(1e5, 1e8, 6), 12)
    D = np.tile(np.repeat(np.geomspace(1e6, 1e10, 6), 2), 6)  # every (N, D) twice
    L = synthetic.bc_loss(N, D) * np.exp(0.01 * rng.standard_normal(N.size))
    csv = tmp_path / "c.csv"
    pd.DataFrame({"N": N, "D": D, "loss": L}).to_csv(csv, index=False)
    base = ["chinchilla", "--csv", str(csv), "--n-boot", "0", "--json"]
    vp = _run(capsys, base)[1]
    grid = _run(capsys, [*base, "--method", "grid"])[1]
    assert vp["loss"] == pytest.approx(grid["loss"], rel=1e-6)
    assert vp["params"]["alpha"] == pytest.approx(grid["params"]["alpha"], rel=1e-3)
    assert vp["n_points"] == 72 and any("kept as separate points" in n for n in vp["notes"])
    mean = _run(capsys, [*base, "--seeds", "mean"])[1]
    assert mean["n_points"] == 36 and any("averaged" in n for n in mean["notes"])
    assert len(vp["used"]) == 6 and vp["dropped"] == []
