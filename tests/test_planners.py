"""Sweep planners (sweeps/): isoFLOP run lengths come from the real FLOP accountant, UTD
stage 2 takes B and eta from stage 1's laws, the CLI prints the plan and fails in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rl_scaling.record import RunRecord
from rl_scaling.run import run
from sweeps.__main__ import main
from sweeps.isoflop import plan_isoflop
from sweeps.lr_rules import job_lr, lr_for
from sweeps.plan import load_plan, save_plan
from sweeps.probe import PlannerError, Throughput, compose, run_probe
from sweeps.utd import plan_utd, read_utd_laws, round_batch

ROOT = Path(__file__).resolve().parents[1]
LAWS = ROOT / "docs" / "results" / "utd_pendulum" / "laws.json"
SMOKE_ITERATION = 8 * 64  # smoke: 8 envs x 64 steps


@pytest.fixture(scope="module")
def smoke_probe():
    """FLOPs per env step of the smoke experiment at width 0.125, from the accountant."""
    return run_probe("smoke", ["model.width=0.125"])


def _job(plan, i):
    return dict(o.split("=", 1) for o in plan.jobs[i])


def test_isoflop_run_length_matches_what_the_run_records(tmp_path, smoke_probe):
    """Plan one budget of 5.5 iterations' FLOPs, run the planned job for real (budget in the
    flops counter), and compare its record with the plan: same env steps and FLOPs."""
    per_step = smoke_probe.flops_per_step
    assert smoke_probe.iteration == SMOKE_ITERATION
    budget = per_step * SMOKE_ITERATION * 5.5
    planned = plan_isoflop("smoke", [budget], ["model.width=0.125"], seeds=[1])
    plan, row = planned.plan, planned.rows[0]
    assert plan.common[0] == "budget.counter=flops" and len(plan.jobs) == 1
    assert row.env_steps == 6 * SMOKE_ITERATION  # the iteration that reaches C ends the run
    cfg = compose("smoke", [*plan.job_overrides()[0], "logger.progress=none",
                            "checkpoint_every=null"])
    assert cfg.budget.counter == "flops" and cfg.budget.value == pytest.approx(budget, 1e-5)
    assert run(cfg, tmp_path / "run") == "finished"
    last = RunRecord(tmp_path / "run").read_metrics()[-1]
    assert abs(last["env_steps"] - row.env_steps) <= SMOKE_ITERATION
    assert last["env_steps"] == row.env_steps
    assert last["flops"] == pytest.approx(row.flops, rel=1e-6)
    assert last["flops"] >= budget
    # the lr reported is the algorithm's own rule at this width
    assert row.lr == pytest.approx(job_lr(cfg)[0])
    # hours from this record's own throughput (--throughput-from): its env steps/s
    rate = Throughput(records_from=tmp_path)
    hours = rate.hours(plan.jobs[0], None, row.env_steps, row.flops)
    assert hours is not None and hours > 0 and "matched" in rate.used


def test_infeasible_pairs_are_dropped_with_a_note(smoke_probe):
    per_iteration = smoke_probe.flops_per_step * SMOKE_ITERATION
    budgets = [0.5 * per_iteration, 4 * per_iteration, 40 * per_iteration]
    planned = plan_isoflop("smoke", budgets, ["width=0.125"], seeds=[1, 2],
                           max_steps=20 * SMOKE_ITERATION)
    plan = planned.plan
    assert len(plan.jobs) == 2  # one budget x two seeds
    assert {_job(plan, i)["seed"] for i in range(2)} == {"1", "2"}
    assert all(_job(plan, i)["tag"] == f"C{_job(plan, i)['budget.value']}" for i in range(2))
    assert len(plan.notes) == 2
    assert "< one iteration" in plan.notes[0] and "model.width=0.125" in plan.notes[0]
    assert "> --max-steps" in plan.notes[1]
    assert planned.rows[0].env_steps == 4 * SMOKE_ITERATION
    with pytest.raises(PlannerError, match="every .* pair is infeasible"):
        plan_isoflop("smoke", budgets[:1], ["width=0.125"], seeds=[1])


def test_snapshot_mode_is_one_run_per_size_with_the_budget_list(smoke_probe):
    per_iteration = smoke_probe.flops_per_step * SMOKE_ITERATION
    budgets = [2 * per_iteration, 4 * per_iteration, 8 * per_iteration]
    planned = plan_isoflop("smoke", budgets, ["model.width=0.125"], seeds=[1], snapshots=True)
    plan = planned.plan
    assert len(plan.jobs) == 1
    job = _job(plan, 0)
    assert float(job["budget.value"]) == pytest.approx(budgets[-1], rel=1e-5)
    listed = [float(v) for v in job["snapshot_flops"].strip("[]").split(",")]
    assert listed == pytest.approx(budgets, rel=1e-5)
    assert job["tag"] == "snapshots"  # never the experiment's ordinary run of this size
    assert planned.rows[0].env_steps == 8 * SMOKE_ITERATION


def _expected(params, sigma, task):
    return params[f"c[{task}]"] * sigma ** params["k"]


def test_utd_stage2_sets_b_and_eta_per_sigma_from_the_fitted_laws():
    doc = json.loads(LAWS.read_text())
    fits = doc["studies"]["gym_utd/utd"]["fits"]
    b_params, lr_params = fits["B*(sigma)"]["params"], fits["lr*(sigma)"]["params"]
    sigmas = [0.5, 1, 2, 4, 8]
    planned = plan_utd("gym_utd", read_utd_laws(LAWS), sigmas=sigmas, tasks=["Pendulum-v1"],
                       seeds=[1], budget="20000", probe=False)
    plan = planned.plan
    assert len(plan.jobs) == len(sigmas) and plan.common == ["budget.value=20000"]
    for i, sigma in enumerate(sigmas):
        job = _job(plan, i)
        assert float(job["algo.utd"]) == sigma and job["env.id"] == "Pendulum-v1"
        b = _expected(b_params, sigma, "Pendulum-v1")
        assert int(job["algo.batch_size"]) == 2 ** round(math.log2(b))
        assert float(job["algo.lr"]) == pytest.approx(_expected(lr_params, sigma, "Pendulum-v1"),
                                                      rel=5e-3)
    assert planned.rows[0].env_steps == 20000 and planned.rows[0].runs == 4  # 4 seeds/job
    assert planned.summary()["runs"] == 4 * len(sigmas)


def test_utd_stage2_crosses_sigma_with_the_experiments_width_axis(tmp_path):
    """dmc_utd_width: sigma x width jobs, B and eta set per (task, sigma) from the keys the
    experiment declares, whatever the width."""
    laws = {"schema": "rl-scaling/laws/v1", "studies": {"dmc_utd/utd": {
        "study": "utd", "experiment": "dmc_utd", "fits": {
            "B*(sigma)": {"params": {"k": -0.5, "c[cheetah-run]": 512.0,
                                     "c[walker-walk]": 100.0}},
            "lr*(sigma)": {"params": {"k": -0.25, "c[cheetah-run]": 1e-3,
                                      "c[walker-walk]": 2e-3}}}}}}
    path = tmp_path / "laws.json"
    path.write_text(json.dumps(laws))
    planned = plan_utd("dmc_utd_width", read_utd_laws(path), sigmas=[1, 4],
                       grid=["algo.critic_width=256,512"], probe=False, batch_min=64)
    plan = planned.plan
    # the experiment's tasks not in stage 1 are dropped with a note; cheetah-run remains
    assert any("humanoid-stand" in n for n in plan.notes)
    jobs = [_job(plan, i) for i in range(len(plan.jobs))]
    assert {j["env.id"] for j in jobs} == {"cheetah-run"}
    assert len(jobs) == 2 * 2  # sigma x width, one seed
    for j in jobs:
        sigma = float(j["algo.utd"])
        assert int(j["algo.batch_size"]) == round_batch(512.0 * sigma ** -0.5)
        assert float(j["algo.lr"]) == pytest.approx(1e-3 * sigma ** -0.25, rel=5e-3)
    assert {j["algo.critic_width"] for j in jobs} == {"256", "512"}
    # clipping is a note
    planned = plan_utd("dmc_utd_width", read_utd_laws(path), sigmas=[64], probe=False,
                       tasks=["walker-walk"], batch_min=32)
    assert _job(planned.plan, 0)["algo.batch_size"] == "32"
    assert any("clipped to 32" in n for n in planned.plan.notes)


def test_cli_prints_the_plan_and_its_file_round_trips(tmp_path, capsys, smoke_probe):
    per_iteration = smoke_probe.flops_per_step * SMOKE_ITERATION
    out = tmp_path / "plans" / "smoke.yaml"
    code = main(["isoflop", "--experiment", "smoke", "--budgets",
                 f"{4 * per_iteration:.6g},{8 * per_iteration:.6g}",
                 "--sizes", "model.width=0.125,0.25", "--seeds", "1",
                 "--flops-per-second", "1e9", "--out", str(out), "--", "env.num_envs=8"])
    text = capsys.readouterr().out
    assert code == 0, text
    plan = load_plan(out)
    assert plan.common == ["budget.counter=flops", "env.num_envs=8"] and len(plan.jobs) == 4
    summary = text.split("summary:")[1]
    for word in ("4 runs", "effective FLOPs", "interactions", "GPU-hours", "--flops-per-second"):
        assert word in summary, summary
    assert f"launch: python -m rl_scaling.sweep -m +experiment=smoke hydra/sweeper=plan " \
           f"hydra.sweeper.plan={out}" in text
    assert sum(1 for line in text.splitlines() if "budget.value=" in line) == 4
    assert plan.summary["gpu_hours"] == pytest.approx(plan.summary["flops"] / 1e9 / 3600,
                                                      rel=1e-3)
    again = tmp_path / "again.yaml"
    save_plan(plan, again)
    assert load_plan(again) == plan


def _bad_laws(tmp_path: Path, doc, name: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


@pytest.mark.parametrize("case", [
    "unknown_experiment", "unknown_size_key", "bad_budgets", "no_laws_file",
    "laws_without_utd", "laws_without_b", "laws_task_missing", "experiment_without_sigma",
])
def test_bad_input_is_one_line_naming_it(case, tmp_path, capsys):
    scaling = {"schema": "rl-scaling/laws/v1",
               "studies": {"mnist_width/scaling": {"study": "scaling", "fits": {}}}}
    no_b = {"schema": "rl-scaling/laws/v1", "studies": {"gym_utd/utd": {
        "study": "utd", "fits": {"lr*(sigma)": {"params": {"k": 0.1, "c[all]": 1e-3}}}}}}
    utd = ["utd", "--experiment", "gym_utd", "--no-probe", "--out", str(tmp_path / "p.yaml")]
    argv, named = {
        "unknown_experiment": (["isoflop", "--experiment", "nope", "--budgets", "1e9",
                                "--sizes", "model.width=1"], "--experiment 'nope'"),
        "unknown_size_key": (["isoflop", "--experiment", "smoke", "--budgets", "1e9",
                              "--sizes", "model.widht=1"], "--sizes model.widht"),
        "bad_budgets": (["isoflop", "--experiment", "smoke", "--budgets", "1e9,big",
                         "--sizes", "model.width=1"], "--budgets"),
        "no_laws_file": ([*utd, "--laws", str(tmp_path / "missing.json")], "--laws"),
        "laws_without_utd": ([*utd, "--laws", _bad_laws(tmp_path, scaling, "scaling")],
                             "no UTD study"),
        "laws_without_b": ([*utd, "--laws", _bad_laws(tmp_path, no_b, "no_b")], "B*(sigma)"),
        "laws_task_missing": ([*utd, "--laws", str(LAWS), "--task", "Hopper-v5"],
                              "--task Hopper-v5"),
        "experiment_without_sigma": (["utd", "--experiment", "mnist_width", "--laws",
                                      str(LAWS), "--no-probe"], "study.axes.sigma"),
    }[case]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and named in err, err


def test_lr_rule_is_the_algorithms_own():
    from agents.ppo import PPOConfig, learning_rate

    cfg = PPOConfig(lr=5e-4, lr_depth_rule=True)
    assert lr_for(cfg, 4.0, 8) == learning_rate(cfg, 4.0, 8)
    lr, how = job_lr(compose("procgen_depth", ["model.depth=8"]))
    assert lr == pytest.approx(5e-4 * (8 / 2) ** -0.5) and "lr_depth_rule" in how
    lr, how = job_lr(compose("gym_utd", ["algo.lr=1e-3"]))
    assert (lr, how) == (1e-3, "algo.lr")  # SAC has no width rule: its lr as it is


def test_planners_default_to_the_experiments_seed_grid():
    """Without --seeds a planner crosses every job with the seeds the experiment sweeps
    (mnist_width: 1, 2), not only its single ``seed``."""
    from sweeps.isoflop import compose, job_grid

    hcfg = compose("mnist_width", [], hydra=True)
    axes, seeds = job_grid(hcfg, "mnist_width", {"model.width", "seed"}, None, [])
    assert seeds == [1, 2] and "seed" not in axes and "model.width" not in axes
    assert job_grid(hcfg, "mnist_width", {"model.width", "seed"}, [7], [])[1] == [7]
