"""``python -m analysis --runs DIR --out DIR`` end to end on small synthetic run records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import collect, detect, isoflop, pipeline, synthetic, utd
from analysis.report import StudyResult
from analysis.study import attempt
from rl_scaling.record import RunRecord


def _laws(out: Path) -> dict:
    return json.loads((out / "laws.json").read_text())


def test_trainer_like_width_sweep(tmp_path: Path):
    """The default study's shape: 5 widths x 2 seeds, 8 log points, one run mid-flight."""
    runs = tmp_path / "runs"
    synthetic.trainer_like_sweep(runs)
    # a run that just started (no log point yet) and one that diverged must not break it
    synthetic.write_run(runs / "mnist_width" / "fresh", {"experiment": "mnist_width",
                        "seed": 3, "model": {"width": 2.0}}, [], status="running",
                        params=5_000_000, flops_per_forward=10_000_000)
    out = tmp_path / "report"
    assert pipeline.main(["--runs", str(runs / "mnist_width"), "--out", str(out),
                          "--n-boot", "4"]) == 0
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert len(list((out / "figures").glob("*.pdf"))) == len(names)  # PNG and PDF
    for fig in ("return_mean_vs_env_steps", "return_mean_vs_flops",
                "optimal_size_vs_compute"):
        assert any(fig in n for n in names), (fig, names)
    report = (out / "report.md").read_text()
    assert "runs: 11 (9 finished, 2 running)" in report
    assert "no log point yet" in report
    assert "compute-efficient frontier" in report
    study = _laws(out)["studies"]["mnist_width/scaling"]
    # records without a study block (as the trainer wrote them before): guessed
    assert study["source"] == "guessed"
    assert study["context"]["study"].startswith("guessed from config key names")
    assert "optimal size vs compute (frontier)" in study["fits"]
    assert study["fits"]["optimal size vs compute (frontier)"]["params"]["k"] > 0
    assert (out / "table.parquet").exists()
    # run again: the cached table is reused and the outputs are rewritten
    assert pipeline.main(["--runs", str(runs / "mnist_width"), "--out", str(out),
                          "--n-boot", "0", "--formats", "png"]) == 0


def test_all_synthetic_studies(tmp_path: Path):
    runs = tmp_path / "runs"
    truth = synthetic.synth_all(runs, small=True)
    out = tmp_path / "out"
    j_main, j_low = truth["mujoco_utd"]["J"], 0.8 * truth["mujoco_utd"]["J"]
    # no --budget: forecasts default to 10x the largest budget; two thresholds (the larger
    # is the main one) to check one Pareto figure per threshold
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--n-boot", "3",
                          "--formats", "png", "--threshold", str(j_main),
                          "--threshold", str(j_low)]) == 0
    laws = _laws(out)
    assert laws["schema"] == "rl-scaling/laws/v1"
    st = laws["studies"]
    assert set(st) >= {"procgen_width/scaling", "atari_bc_isoflop/isoflop", "mujoco_utd/utd",
                       "pointmass_gen/generalization"}
    gen = st["pointmass_gen/generalization"]["fits"]
    assert gen["D to sufficient generalization vs complexity"]["params"]["k"] == pytest.approx(
        truth["pointmass_gen"]["gamma"], abs=0.1)
    hil = st["procgen_width/scaling"]["fits"]["intrinsic performance (Hilton et al.)"]
    t = truth["procgen_width"]
    assert hil["params"]["alpha_N"] == pytest.approx(t["alpha_N"], abs=0.15)
    # forecasts at 10x the largest FLOPs: N_opt by both laws, D_opt = C / (kappa N_opt)
    table = pd.read_parquet(out / "table.parquet")
    c_max = table.loc[table["experiment"] == "procgen_width", "flops"].max()
    fc = st["procgen_width/scaling"]["forecasts"]
    for name in ("N_opt (frontier law)", "N_opt (intrinsic law)", "D_opt (intrinsic law)"):
        assert fc[name]["at"] == f"C={10 * c_max:.3g}", name
        assert fc[name]["low"] <= fc[name]["value"] <= fc[name]["high"], name
    kappa = hil["extra"]["kappa"]
    assert fc["D_opt (intrinsic law)"]["value"] == pytest.approx(
        10 * c_max / (kappa * fc["N_opt (intrinsic law)"]["value"]), rel=1e-9)
    iso = st["atari_bc_isoflop/isoflop"]
    bc = truth["atari_bc_isoflop"]
    a_true = bc["beta"] / (bc["alpha"] + bc["beta"])
    assert iso["fits"]["Chinchilla Approach 3"]["params"]["a"] == pytest.approx(a_true,
                                                                                 abs=0.08)
    assert "isoFLOP profiles" in iso["fits"] or "isoFLOP profiles" in iso["skipped"]
    assert any(k.startswith("N_opt") for k in iso["forecasts"])
    # every fit states its form (Chinchilla had none) and how it was fitted
    ch = iso["fits"]["Chinchilla Approach 3"]["extra"]
    assert ch["form"] == "L = E + A/N^alpha + B/D^beta" and "variable projection" in ch["method"]
    # the headline: L_opt (and N_opt) from the method chosen by held-out RMSE, listed first
    best = iso["context"]["method chosen by held-out RMSE"]
    assert best in isoflop.ISOFLOP_METHODS
    heads = [k for k in iso["forecasts"] if "(best method: " in k]
    assert heads == [f"L_opt (best method: {best})", f"N_opt (best method: {best})"]
    assert list(iso["forecasts"])[:2] == heads
    for key in heads:
        f = iso["forecasts"][key]
        assert f["value"] > 0 and "chosen by held-out RMSE" in f["method"], f
        assert f["at"] == iso["forecasts"]["N_opt (Chinchilla)"]["at"]
        if f["low"] is not None:  # Chinchilla with 3 draws has no interval
            assert f["low"] <= f["value"] <= f["high"], f
    own = {"chinchilla": "Chinchilla", "isoflop_profiles": "isoFLOP"}.get(best)
    if own is not None:  # the same number as that method's own forecast
        assert iso["forecasts"][heads[0]]["value"] == pytest.approx(
            iso["forecasts"][f"L_opt ({own})"]["value"], rel=1e-12)
    ustudy = st["mujoco_utd/utd"]
    u = truth["mujoco_utd"]
    for task, tt in u["tasks"].items():  # D_J(sigma) per task, with its own beta_J
        d_j = ustudy["fits"][f"D_J(sigma) J={u['J']:.4g} [{task}]"]
        assert d_j["params"]["alpha"] == pytest.approx(u["alpha_J"], abs=0.3)
        sig = np.array([1.0, 2.0, 4.0, 8.0])  # beta and alpha trade off: check the curve
        true_d = u["D_min"] + (tt["beta_J"] / sig) ** u["alpha_J"]
        fit_d = utd.predict_utd(d_j["params"], sig)
        assert np.abs(np.log(fit_d / true_d)).max() < 0.25
        assert "bootstrap" in d_j["extra"]["method"]
    b_law = ustudy["fits"]["B*(sigma)"]["params"]  # one slope, one intercept per task
    assert b_law["k"] == pytest.approx(u["B_exp"], abs=0.25)
    (h, th), (w, tw) = u["tasks"].items()
    assert b_law[f"c[{w}]"] / b_law[f"c[{h}]"] == pytest.approx(tw["B0"] / th["B0"], rel=0.4)
    # sigma*, B*, eta* at the main threshold, with an interval, or the reason there is none
    # (here one seed and 4 sigma per task: D_J(sigma) has 1 dof, so draws can fail)
    for task in u["tasks"]:
        for name in ("sigma*", "B*(sigma*)", "eta*(sigma*)", "F(sigma*)"):
            f = ustudy["forecasts"][f"{name} at main J [{task}]"]
            assert f["value"] > 0 and "joint draws" in f["method"], (name, task, f)
            if f["low"] is None:
                assert "too many for an interval" in f["method"]
            else:
                assert f["low"] <= f["value"] <= f["high"], (name, task, f)
    # every study was declared in run.json (synthetic records declare theirs)
    assert {k: v["source"] for k, v in st.items()} == dict.fromkeys(st, "declared")
    # the numbers the pipeline gave on these records before it was split into one module
    # per study (same seeds): closed-form fits to 1e-6, optimiser-based ones to 1e-4
    pinned = {
        ("atari_bc_isoflop/isoflop", "isoFLOP profiles", "a"): (0.4393300215200025, 1e-6),
        ("atari_bc_isoflop/isoflop", "quadratic surface", "a"): (0.4108743069800565, 1e-6),
        ("atari_bc_isoflop/isoflop", "Chinchilla Approach 3", "a"): (0.45169905910595776,
                                                                     1e-4),
        ("mujoco_utd/utd", "B*(sigma)", "k"): (-0.6000000000000005, 1e-6),
        ("mujoco_utd/utd", "lr*(sigma)", "c[Walker2d-v4]"): (0.002034959384205374, 1e-6),
        ("mujoco_utd/utd", "D_J(sigma) J=5000 [HalfCheetah-v4]", "alpha"): (
            0.7556097969378979, 1e-4),
        ("pointmass_gen/generalization", "D to sufficient generalization vs complexity",
         "k"): (1.514997991423718, 1e-6),
        ("procgen_width/scaling", "optimal size vs compute (frontier)", "k"): (
            0.6648794735308919, 1e-6),
        ("procgen_width/scaling", "intrinsic performance (Hilton et al.)", "alpha_N"): (
            0.4492217774627611, 1e-4),
    }
    for (key, law, param), (value, rel) in pinned.items():
        assert st[key]["fits"][law]["params"][param] == pytest.approx(value, rel=rel), (
            key, law, param)
    report = (out / "report.md").read_text()
    for title in ("isoFLOP profiles", "UTD-ratio", "intrinsic performance"):
        assert title in report
    assert "- study: declared in run.json (kind utd; axes sigma=algo.utd, " in report
    assert len(list((out / "figures").glob("*.png"))) >= 10
    assert (out / "figures" / "atari_bc_isoflop_isoflop_extrapolation_check.png").exists()
    for j in (j_main, j_low):  # one Pareto figure per threshold and task
        for task in u["tasks"]:
            assert (out / "figures" / f"mujoco_utd_utd_pareto_J{j:.4g}_{task}.png").exists()


@pytest.mark.parametrize("exc", [OverflowError, ZeroDivisionError, FloatingPointError,
                                 np.linalg.LinAlgError])
def test_attempt_records_numeric_failures(exc: type[Exception]):
    """An overflow in one law is that law's "not fitted" line, not the end of the study."""
    st = StudyResult(key="e/s", study="s", experiment="e", title="t")

    def fit() -> None:
        raise exc("math range error")

    assert attempt(st, "law", fit) is None
    assert st.skipped["law"] == f"{exc.__name__}: math range error"


def test_isoflop_loss_offset_and_an_overflowing_law(tmp_path: Path, monkeypatch):
    """``--loss-offset`` fits L_opt = L_inf + c C^k (L_inf near the surface's floor E);
    a law that overflows is reported as not fitted while the rest of the study goes on."""
    runs = tmp_path / "runs"
    synthetic.bc_isoflop_sweep(runs, n_points=24, study=False)  # guessed: no env steps

    def overflow(*_: object, **__: object) -> None:
        raise OverflowError("math range error")

    monkeypatch.setattr(isoflop, "fit_envelope", overflow)
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--n-boot", "0",
                          "--formats", "png", "--no-cache", "--loss-offset"]) == 0
    st = _laws(out)["studies"]["atari_bc_isoflop/isoflop"]
    assert st["source"] == "guessed"
    iso = st["fits"]["isoFLOP profiles"]
    assert iso["params"]["L_inf"] == pytest.approx(synthetic.BC_TRUTH["E"], abs=0.1)
    assert iso["ci"]["L_inf"][0] <= iso["params"]["L_inf"] <= iso["ci"]["L_inf"][1]
    f = st["forecasts"]["L_opt (isoFLOP)"]
    assert iso["params"]["L_inf"] < f["low"] <= f["value"] <= f["high"]
    assert st["skipped"]["envelope"] == "OverflowError: math range error"
    assert {"Chinchilla Approach 3", "quadratic surface"} <= set(st["fits"])
    assert "not fitted: envelope: OverflowError" in (out / "report.md").read_text()


def test_unfittable_data_gives_reasons_not_crashes(tmp_path: Path):
    runs = tmp_path / "runs"
    # one size only, two log points: no frontier, no law; and a run without a metric
    synthetic.write_run(runs / "a", {"experiment": "tiny", "seed": 0,
                                     "model": {"width": 1.0}},
                        [{"env_steps": 10, "updates": 1, "samples": 10, "flops": 1e6,
                          "wall_time": 1, "return_mean": 0.1},
                         {"env_steps": 20, "updates": 2, "samples": 20, "flops": 2e6,
                          "wall_time": 2, "return_mean": 0.2}],
                        params=100, flops_per_forward=100)
    synthetic.write_run(runs / "b", {"experiment": "nometric", "seed": 0},
                        [{"env_steps": 10, "updates": 1, "samples": 10, "flops": 1e6,
                          "wall_time": 1}], params=100, flops_per_forward=100)
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--formats", "png"]) == 0
    laws = _laws(out)["studies"]
    assert laws["nometric/curves"]["skipped"]["curves"].startswith("no return or loss")
    assert "tiny/curves" in laws
    report = (out / "report.md").read_text()
    assert "not fitted: curves: no return or loss metric" in report
    assert pipeline.main(["--runs", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_generalization_study(tmp_path: Path):
    """Data to reach the test-score criterion grows as complexity^1.5 (the law is recovered)."""
    runs = tmp_path / "runs"
    for k in (1, 2, 4, 8):
        for seed in (0, 1):
            steps = np.linspace(1e3, 4e5, 40)
            tau = 1e4 * k**1.5
            score = 1 - np.exp(-steps / tau)
            rows = [{"env_steps": float(e), "updates": 1, "samples": float(e),
                     "flops": 1e6 * e, "wall_time": 1.0, "return_mean": float(s),
                     "eval_return": float(s)} for e, s in zip(steps, score, strict=True)]
            synthetic.write_run(runs / f"k{k}s{seed}", {"experiment": "gen", "seed": seed,
                                "env": {"complexity": k}}, rows, params=10,
                                flops_per_forward=10)
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--formats", "png"]) == 0
    st = _laws(out)["studies"]["gen/generalization"]
    fit = st["fits"]["D to sufficient generalization vs complexity"]
    assert fit["params"]["k"] == pytest.approx(1.5, abs=0.1)


@pytest.mark.parametrize("criterion", ["fraction", "lowest"])
def test_generalization_criteria_on_test_tasks(tmp_path: Path, criterion: str):
    """20 held-out test tasks of fixed difficulties: the data to reach either criterion grows
    as complexity^1.5 and the intercept is set by the hardest tasks, as the criterion says."""
    runs = tmp_path / "runs"
    truth = synthetic.generalization_sweep(runs)
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--formats", "png",
                          "--no-cache", "--gen-criterion", criterion, "--gen-level", "0.8",
                          "--gen-fraction", "0.95", "--gen-percentile", "10"]) == 0
    st = _laws(out)["studies"]["pointmass_gen/generalization"]
    fit = st["fits"]["D to sufficient generalization vs complexity"]
    g = truth["gamma"]
    assert fit["params"]["k"] == pytest.approx(g, abs=0.05)
    lo, hi = fit["ci"]["k"]
    assert lo - 0.02 < g < hi + 0.02  # t-interval (the 1% noise is all it sees)
    # score_i = 1 - exp(-E / (tau0 d_i)) >= 0.8  <=>  E >= tau0 d_i ln 5 (complexity 1)
    d = np.sort(truth["difficulties"])[::-1]
    if criterion == "fraction":  # 19 of 20 tasks: the 2nd hardest task sets the pace
        c_true = truth["tau0"] * d[1] * np.log(5)
        assert fit["params"]["c"] == pytest.approx(c_true, rel=0.1)
    else:  # mean of the 2 hardest tasks >= 0.8: between the two tasks' own crossings
        lo_c, hi_c = (truth["tau0"] * d[i] * np.log(5) for i in (1, 0))
        assert 0.9 * lo_c < fit["params"]["c"] < 1.1 * hi_c
    assert criterion in st["context"]["criterion kind"]
    assert "C to sufficient generalization vs complexity" in st["fits"]


def test_generalization_study_over_sizes_with_env_normalised_scores(tmp_path: Path):
    """A width axis and the point-mass world's normalised per-task scores: per complexity the
    fewest data come from the widest model and the least compute from the narrowest, and
    both laws recover their exponents."""
    runs = tmp_path / "runs"
    widths = (0.5, 1.0, 2.0)
    truth = synthetic.generalization_sweep(runs, widths=widths, normalised=True, seeds=(0,),
                                           n_points=40, ood_slowdown=2.0)
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--formats", "png",
                          "--no-cache"]) == 0
    st = _laws(out)["studies"]["pointmass_gen/generalization"]
    assert "normalised by the env" in st["context"]["criterion"]
    assert "model.width" in st["context"]["size axis"]
    # D ∝ k^gamma; the synthetic FLOPs per step grow with the complexity too: C ∝ k^(gamma+1)
    for law, k in (("D", truth["gamma"]), ("C", truth["gamma"] + 1)):
        fit = st["fits"][f"{law} to sufficient generalization vs complexity"]
        assert fit["params"]["k"] == pytest.approx(k, abs=0.05)
    # the fraction criterion's data at complexity 1: the 2nd-hardest task at the widest width
    d = np.sort(truth["difficulties"])[::-1]
    d_fit = st["fits"]["D to sufficient generalization vs complexity"]["params"]["c"]
    assert d_fit == pytest.approx(truth["tau0"] * d[1] * np.log(5) / max(widths) ** 0.5,
                                  rel=0.1)
    # compute: the narrowest width (C = 1e6 w D_w, D_w ∝ w^-0.5)
    c_fit = st["fits"]["C to sufficient generalization vs complexity"]["params"]["c"]
    assert c_fit == pytest.approx(1e6 * min(widths) ** 0.5 * truth["tau0"] * d[1] * np.log(5),
                                  rel=0.1)
    # the OOD set is its own study in the same report: same exponent, twice the data
    ood = st["fits"]["D to sufficient generalization vs complexity [ood_objects]"]["params"]
    assert ood["k"] == pytest.approx(truth["gamma"], abs=0.05)
    assert ood["c"] == pytest.approx(2 * d_fit, rel=0.1)


def test_defaults_are_the_make_analysis_paths(tmp_path: Path, monkeypatch, capsys):
    args = pipeline.build_parser().parse_args([])
    assert args.out == "reports/latest"
    monkeypatch.chdir(tmp_path)  # no runs/ here: one line naming it, status 2
    assert pipeline.main([]) == 2
    assert "runs" in capsys.readouterr().err.strip().splitlines()[-1]



def test_declared_studies_match_what_guessing_finds(tmp_path: Path):
    """On the synthetic studies, the declared study (kind and each role's column) is what
    guessing from key names finds on the same records without a declaration."""
    found = {}
    for declare in (True, False):
        root = tmp_path / str(declare)
        synthetic.synth_all(root, small=True, declare=declare)
        table = collect.collect(root)
        found[declare] = {exp: detect.detect(df) for exp, df in table.groupby("experiment")}
    assert found[True].keys() == found[False].keys() and len(found[True]) == 4
    for exp, specs in found[True].items():
        guessed = found[False][exp]
        assert [s.kind for s in specs] == [s.kind for s in guessed], exp
        assert all(s.declared and not s.notes for s in specs)
        assert not any(s.declared for s in guessed)
        for spec, g in zip(specs, guessed, strict=True):
            assert spec.axes == {r: c for r, c in g.axes.items() if r in spec.axes}, exp
            assert spec.axes, exp


def test_declared_study_with_keys_the_guesser_does_not_know(tmp_path: Path):
    """A UTD ratio named ``algo.replay_ratio`` and a complexity named ``env.num_objects``:
    declared, both studies run; the same records without the declaration fall back to
    learning curves (the guesser only knows ``*utd`` and ``*complexity*`` keys)."""
    grid = {"sigmas": (1, 2, 4, 8), "batches": (64, 128, 256), "lrs": (5e-4, 1e-3, 2e-3),
            "seeds": (0,), "n_points": 24, "tasks": ("HalfCheetah-v4",)}
    outs = {}
    for declare in (True, False):
        runs = tmp_path / f"runs{declare}"
        truth = synthetic.utd_sweep(runs, utd_key="algo.replay_ratio", study=declare, **grid)
        synthetic.generalization_sweep(runs, seeds=(0,), n_points=40,
                                       complexity_key="env.num_objects", study=declare)
        out = outs[declare] = tmp_path / f"out{declare}"
        assert pipeline.main(["--runs", str(runs), "--out", str(out), "--n-boot", "0",
                              "--formats", "png", "--no-cache",
                              "--threshold", str(truth["J"])]) == 0
    st = _laws(outs[True])["studies"]
    assert set(st) == {"mujoco_utd/utd", "pointmass_gen/generalization"}
    u = st["mujoco_utd/utd"]
    assert u["source"] == "declared" and "sigma=algo.replay_ratio" in u["context"]["study"]
    d_j = u["fits"][f"D_J(sigma) J={truth['J']:.4g}"]
    assert d_j["params"]["alpha"] == pytest.approx(truth["alpha_J"], abs=0.3)
    assert u["fits"]["B*(sigma)"]["params"]["k"] == pytest.approx(truth["B_exp"], abs=0.25)
    g = st["pointmass_gen/generalization"]
    assert g["source"] == "declared"
    assert g["fits"]["D to sufficient generalization vs complexity"]["params"]["k"] == \
        pytest.approx(synthetic.GEN_TRUTH["gamma"], abs=0.1)
    guessed = _laws(outs[False])["studies"]
    assert set(guessed) == {"mujoco_utd/curves", "pointmass_gen/curves"}
    assert all(v["source"] == "guessed" for v in guessed.values())


def test_declared_curves_study_is_not_fitted_as_scaling(tmp_path: Path):
    """Width varies, but the experiment declares ``curves``: learning curves only, no
    frontier or law; one run declaring another kind is noted and outvoted."""
    runs = tmp_path / "runs"
    curves_only = {"kind": "curves", "axes": {"width": "model.width"}, "metric": None}
    synthetic.hilton_width_sweep(runs, widths=(0.5, 1.0, 2.0), seeds=(0, 1), n_points=12,
                                 study=curves_only, running=False, failed=False)
    odd = RunRecord(runs / "procgen_width" / "model.width=2.0,seed=1")
    odd.update_run_json(study={"kind": "scaling", "axes": {"width": "model.width"},
                               "metric": None})
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--n-boot", "0",
                          "--formats", "png", "--no-cache"]) == 0
    st = _laws(out)["studies"]
    assert set(st) == {"procgen_width/curves"}
    c = st["procgen_width/curves"]
    assert c["source"] == "declared" and c["fits"] == {} and c["forecasts"] == {}
    assert "sizes" not in c["context"]  # set by the frontier only
    assert c["context"]["metric"] == "return_mean"  # no declared metric: the RL default
    assert any("return_mean_vs_env_steps" in f for f in c["figures"])
    report = (out / "report.md").read_text()
    assert "runs declare different study kinds (curves: 5, scaling: 1 runs); using curves" \
        in report
    assert "compute-efficient frontier" not in report


def test_detect_notes_invalid_and_partial_declarations():
    """An invalid declaration is ignored with a note; a declared axis whose key is not in
    the config is dropped with a note; with no valid declaration the study is guessed."""
    df = pd.DataFrame({"run_dir": ["a", "b", "c"], "study.kind": ["utd", "utd", "bogus"],
                       "study.axes.sigma": ["algo.ratio"] * 3,
                       "study.axes.lr": ["algo.eta"] * 3, "study.metric": [None] * 3,
                       "algo.ratio": [1.0, 2.0, 4.0], "env_steps": [1.0, 2.0, 3.0]})
    [spec] = detect.detect(df)
    assert spec.kind == "utd" and spec.declared and spec.axes == {"sigma": "algo.ratio"}
    notes = " | ".join(spec.notes)
    assert "1 run(s) declare an invalid study" in notes
    assert "1 of 3 run(s) declare no valid study" in notes
    assert "study.axes.lr=algo.eta is not a config key of these runs" in notes
    [guessed] = detect.detect(df.assign(**{"study.kind": "bogus"}))
    assert guessed.kind == "curves" and not guessed.declared
    assert "3 run(s) declare an invalid study" in guessed.notes[0]


def test_utd_joint_width_grid_and_the_studys_compute_convention(tmp_path: Path):
    """Fu et al.'s joint grid: two critic widths, each its own D_J(sigma) law (the wider one
    needs half the data here); compute to threshold read from ``flops_10nbsd`` with its own N
    (the critic's), not from ``flops`` or ``params.effective``."""
    import yaml

    grid = {"sigmas": (1, 2, 4, 8), "batches": (64, 128, 256), "lrs": (5e-4, 1e-3, 2e-3),
            "seeds": (0,), "n_points": 24, "tasks": ("HalfCheetah-v4",)}
    study = {"kind": "utd", "axes": {"sigma": "algo.utd", "batch_size": "algo.batch_size",
                                     "lr": "algo.lr", "task": "env.id",
                                     "width": "algo.critic_width"}}
    runs = tmp_path / "runs"
    n_critic = {256: 50_000, 512: 200_000}
    for width, data_scale in ((256, 1.0), (512, 0.5)):
        root = runs / f"w{width}"
        truth = synthetic.utd_sweep(root, study=study, **grid)
        for run_dir in (root / "mujoco_utd").iterdir():
            cfg_path = run_dir / "config.yaml"
            cfg = yaml.safe_load(cfg_path.read_text())
            cfg["algo"]["critic_width"] = width
            cfg_path.write_text(yaml.safe_dump(cfg))
            b, sigma = cfg["algo"]["batch_size"], cfg["algo"]["utd"]
            lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().split("\n")
                     if x.strip()]
            for row in lines:  # the wider critic reaches J with less data
                row["env_steps"] = int(row["env_steps"] * data_scale)
                row["flops_10nbsd"] = 10.0 * n_critic[width] * b * sigma * row["env_steps"]
            (run_dir / "metrics.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(runs), "--out", str(out), "--n-boot", "0",
                          "--formats", "png", "--no-cache", "--threshold",
                          str(truth["J"])]) == 0
    u = _laws(out)["studies"]["mujoco_utd/utd"]
    assert u["context"]["compute C_J"].startswith("10 N B sigma D (flops_10nbsd")
    fits = {w: u["fits"][f"D_J(sigma) J={truth['J']:.4g} [HalfCheetah-v4, width={w}]"]
            for w in (256, 512)}
    for fit in fits.values():
        assert fit["params"]["alpha"] == pytest.approx(truth["alpha_J"], abs=0.3)
    ratio = fits[512]["params"]["D_min"] / fits[256]["params"]["D_min"]
    assert ratio == pytest.approx(0.5, rel=0.2)
