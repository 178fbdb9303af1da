"""The horizon study: the analysis recovers known exponents and an affine interactions-vs-
horizon law from synthetic records, and a short real multirun of ``mnist_horizon`` writes
records the analysis turns into the horizon figures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import pipeline
from analysis.fitting import FitError, affine_intervals, fit_affine
from analysis.horizon import horizon_values
from analysis.synthetic import horizon_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_affine_fit_recovers_a_line_with_honest_intervals():
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(40):
        x = np.repeat([1.0, 4.0, 16.0, 64.0], 3)
        y = 2.0e4 + 750.0 * x + 1.5e3 * rng.standard_normal(x.size)
        fit = fit_affine(x, y)
        lo, hi = fit.ci["b"]
        covered += lo <= 750.0 <= hi
    assert covered >= 34  # a 95% interval covers the truth about 38 times in 40
    band = affine_intervals(fit, np.array([0.0, 32.0]))
    assert band["conf_low"][1] < band["y"][1] < band["conf_high"][1]
    with pytest.raises(FitError, match="x"):
        fit_affine([1, 1, 1], [1, 2, 3])


def test_horizon_axis_reads_discounts_as_horizons():
    h, from_gamma = horizon_values(pd.Series([0.0, 0.75, 0.9375], name="algo.gamma"))
    assert from_gamma and h.tolist() == [1.0, 4.0, 16.0]
    h, from_gamma = horizon_values(pd.Series([1, 10, 100], name="env.horizon"))
    assert not from_gamma and h.tolist() == [1, 10, 100]
    with pytest.raises(FitError, match="env.horizon"):
        horizon_values(pd.Series([0.5, 10], name="env.horizon"))


def test_analysis_recovers_the_exponents_and_the_affine_horizon_law(tmp_path):
    truth = horizon_sweep(tmp_path / "runs", h0=4.0)
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--n-boot", "20",
                          "--formats", "png"]) == 0
    laws = json.loads((out / "laws.json").read_text())
    study = laws["studies"]["mnist_horizon/horizon"]
    assert study["source"] == "declared"
    fits = study["fits"]
    for h in ("1", "4", "16"):
        intrinsic = fits[f"h={h}: intrinsic performance (Hilton et al.)"]
        for p in ("alpha_N", "alpha_E", "k"):
            lo, hi = intrinsic["ci"][p]
            assert lo - 0.05 <= truth[p] <= hi + 0.05, (h, p, intrinsic["ci"][p])
    affine = [f for name, f in fits.items() if name.startswith("interactions to")]
    assert len(affine) == 2
    for fit in affine:
        a, b = fit["params"]["a"], fit["params"]["b"]
        assert a > 0 and b > 0
        # the truth for a model that does not limit learning: E ~ 1 + h / h0; the finite
        # sizes of the sweep add a horizon-free part, so the slope ratio is a bit lower
        assert 0.6 / truth["h0"] < b / a < 1.2 / truth["h0"]
    figs = {p.name for p in (out / "figures").iterdir()}
    assert any("interactions_to" in f and f.endswith("_vs_horizon.png") for f in figs)
    assert "mnist_horizon_horizon_exponents_vs_horizon.png" in figs
    assert "mnist_horizon_horizon_n_opt_vs_compute.png" in figs


def test_mnist_horizon_multirun_writes_records_the_analysis_draws(tmp_path):
    """The experiment composes and runs as a multirun (3 horizons x 2 widths, tiny budget);
    the analysis reads the records as a declared horizon study and draws the affine
    interactions-vs-horizon figure."""
    sweep = tmp_path / "runs"
    cmd = [sys.executable, "-m", "rl_scaling.sweep", "-m", "+experiment=mnist_horizon",
           "model.width=0.125,0.25", "algo.gamma=0.0,0.5,0.75", "seed=1",
           "budget.value=8192", "algo.num_steps=128", "env.num_envs=8",
           "logger.progress=none", "torch_threads=1", "hydra.launcher.n_jobs=1",
           f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = sorted(p.parent.name for p in sweep.glob("*/run.json"))
    assert len(records) == 6
    info = json.loads((sweep / records[0] / "run.json").read_text())
    assert info["study"]["kind"] == "horizon" and info["algo"] == "ppo_ewma"
    out = tmp_path / "out"
    assert pipeline.main(["--runs", str(sweep), "--out", str(out), "--n-boot", "0",
                          "--formats", "png", "--threshold", "0.2"]) == 0
    laws = json.loads((out / "laws.json").read_text())
    study = laws["studies"]["mnist_horizon/horizon"]
    assert study["context"]["horizons"] == "1, 2, 4"
    assert "interactions to return_mean >= 0.2 (affine in h)" in study["fits"], study["skipped"]
    assert (out / "figures" / "mnist_horizon_horizon_interactions_to_0.2_vs_horizon.png").exists()
