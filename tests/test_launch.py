"""Launching sweeps: plans, the local launcher, run bookkeeping, snapshots.

The end-to-end tests start ``python -m rl_scaling.sweep`` / ``python -m rl_scaling.runs``
as a user would; the Slurm launcher against a real cluster is tests/test_slurm.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rl_scaling import launch
from rl_scaling.record import RunRecord
from rl_scaling.runs import find_runs, read_run, summary_line
from sweeps.plan import Plan, PlanError, load_plan, save_plan

ROOT = Path(__file__).resolve().parents[1]
ITER_STEPS = 512  # smoke: 8 envs x 64 steps


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    return env


def _run(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=_env())


def _info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def _time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


# ------------------------------------------------------------------ building blocks
def test_merge_overrides_replaces_a_key_in_place_and_strips_prefixes():
    merged = launch.merge_overrides(["+experiment=smoke", "seed=1", "model.width=1"],
                                    ["seed=2", "++env.num_envs=4", "~logger.tags"])
    assert merged == ["+experiment=smoke", "seed=2", "model.width=1", "++env.num_envs=4",
                      "~logger.tags"]


def test_array_chunks_never_reach_max_array_size():
    chunks = launch.array_chunks(7, 3)
    assert [list(c) for c in chunks] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [list(c) for c in launch.array_chunks(4, None)] == [[0, 1, 2, 3]]
    assert all(len(c) <= 1001 for c in launch.array_chunks(5000, 1001))


def test_gpus_are_assigned_round_robin_only_where_several_exist_and_no_device_is_chosen():
    jobs = [["model.width=1"], ["model.width=2"], ["model.width=4", "device=cpu"]]
    spread = launch.assign_gpus(jobs, [0, 1], "auto")
    assert spread == [["model.width=1", "device=cuda:0"], ["model.width=2", "device=cuda:1"],
                      ["model.width=4", "device=cpu"]]
    assert launch.assign_gpus(jobs, [3], "auto") == jobs  # one GPU: nothing to spread
    assert launch.assign_gpus(jobs, [0, 1], "cpu") == jobs  # the run asked for the CPU


def test_plan_files_round_trip_and_bad_ones_are_one_line_errors(tmp_path):
    plan = Plan(experiment="smoke", jobs=[["model.width=0.25", "seed=1"]],
                common=["budget.value=1024"], summary={"runs": 1}, notes=["a note"])
    path = save_plan(plan, tmp_path / "p" / "plan.yaml")
    back = load_plan(path)
    assert back == plan and back.job_overrides() == [["budget.value=1024", "model.width=0.25",
                                                      "seed=1"]]
    assert "hydra/sweeper=plan" in plan.command(path)
    for doc, needle in (({"jobs": [["a=1"]]}, "'experiment'"),
                        ({"experiment": "smoke", "jobs": []}, "'jobs'"),
                        ({"experiment": "smoke", "jobs": [["width"]]}, "jobs[0]"),
                        ({"experiment": "smoke", "jobs": [["a=1"]], "format": "x"}, "format")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(doc))
        with pytest.raises(PlanError, match=needle.replace("[", r"\[")) as err:
            load_plan(bad)
        assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(PlanError, match="no plan file"):
        load_plan(tmp_path / "missing.yaml")


def test_snapshots_at_flop_budgets_are_kept_once_and_logged(tmp_path):
    run_dir = tmp_path / "run"
    base = ["+experiment=smoke", f"hydra.run.dir={run_dir}", "logger.progress=none",
            "budget.value=2048"]
    out = _run("rl_scaling.sweep", *base, "snapshot_flops=[1e9,3e9]")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = RunRecord(run_dir).read_metrics()
    marked = [(r["flops"], r["snapshot_flops"]) for r in rows if "snapshot_flops" in r]
    # the first line at or past each budget carries it; each budget once
    assert [b for _, b in marked] == [1e9, 3e9]
    for flops, budget in marked:
        before = [r["flops"] for r in rows if r["flops"] < flops]
        assert flops >= budget and all(f < budget for f in before)
    snaps = sorted(p.name for p in (run_dir / "checkpoints").glob("flops=*.pt"))
    assert snaps == ["flops=1e+09.pt", "flops=3e+09.pt"]
    # extending the run past a new budget snapshots only the new one
    out = _run("rl_scaling.sweep", *base[:-1], "budget.value=3072", "snapshot_flops=[1e9,3e9,6e9]")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = RunRecord(run_dir).read_metrics()
    assert [r["snapshot_flops"] for r in rows if "snapshot_flops" in r] == [1e9, 3e9, 6e9]
    bad = _run("rl_scaling.sweep", *base, "snapshot_flops=[0]")
    assert bad.returncode != 0 and "snapshot_flops[0]=0" in bad.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ plan sweeper
def test_a_plan_runs_its_jobs_in_their_own_dirs_and_relaunching_resumes_them(tmp_path):
    plan = Plan(experiment="smoke", common=["budget.value=1024"],
                jobs=[["model.width=0.125", "tag=a"], ["model.width=0.125", "tag=b",
                                                       "budget.value=1536"]])
    path = save_plan(plan, tmp_path / "plan.yaml")
    sweep_dir = tmp_path / "sweep"
    args = ("-m", "+experiment=smoke", "hydra/sweeper=plan", f"hydra.sweeper.plan={path}",
            f"hydra.sweep.dir={sweep_dir}", "logger.progress=none")
    out = _run("rl_scaling.sweep", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    # a plan is not a grid: two jobs of one size, told apart by their tag
    for tag, steps in (("a", 1024), ("b", 1536)):
        run_dir = sweep_dir / f"model.width=0.125,tag={tag}"
        info = _info(run_dir)
        assert info["status"] == "finished" and info["env_steps"] == steps
    # the launcher printed one summary line per job
    assert "multirun summary (2 jobs)" in out.stderr
    assert "[model.width=0.125,tag=b] finished | steps 1.54k/1.54k" in out.stderr
    # relaunching the same plan finds them finished: nothing is retrained or renumbered
    again = _run("rl_scaling.sweep", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    for tag in ("a", "b"):
        run_dir = sweep_dir / f"model.width=0.125,tag={tag}"
        assert len(_info(run_dir)["starts"]) == 1  # not started again
        assert "already finished" in (run_dir / "sweep.log").read_text()
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.endswith(".yaml")) == [
        "model.width=0.125,tag=a", "model.width=0.125,tag=b"]


def test_a_plan_for_another_experiment_is_refused_in_one_line(tmp_path):
    path = save_plan(Plan(experiment="mnist_width", jobs=[["model.width=1"]]),
                     tmp_path / "plan.yaml")
    out = _run("rl_scaling.sweep", "-m", "+experiment=smoke", "hydra/sweeper=plan",
               f"hydra.sweeper.plan={path}", f"hydra.sweep.dir={tmp_path / 's'}")
    assert out.returncode != 0
    assert "plan for experiment 'mnist_width'" in out.stderr
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").glob("*/run.json"))


# ------------------------------------------------------------------ local launcher
def test_the_local_launcher_runs_jobs_at_the_same_time(tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = _run("rl_scaling.sweep", "-m", "+experiment=smoke", f"hydra.sweep.dir={sweep_dir}",
               "hydra.launcher.n_jobs=2", "budget.value=12288", "logger.progress=plain",
               "torch_threads=1")
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = (_info(sweep_dir / f"model.width={w}") for w in ("0.125", "0.25"))
    assert a["starts"][0]["pid"] != b["starts"][0]["pid"]
    # run sequentially, one would start at or after the other ended (second resolution)
    assert _time(a["start_time"]) < _time(b["end_time"])
    assert _time(b["start_time"]) < _time(a["end_time"])
    # every progress line names its job
    lines = [ln for ln in out.stderr.splitlines() if "steps/s" in ln]
    assert lines and all(ln.startswith(("[model.width=0.125]", "[model.width=0.25]"))
                         for ln in lines)
    assert not any("nan" in ln or "ETA ?" in ln for ln in lines)


# ------------------------------------------------------------------ run bookkeeping
def _wait_for(predicate, timeout: float = 240, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended early: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.05)


def test_runs_shows_a_killed_run_as_failed_with_its_log_and_resume_finishes_it(tmp_path):
    sweep_dir = tmp_path / "smoke"  # hydra.sweep.dir=<tmp>/${experiment}, as the default
    long_dir = sweep_dir / "model.width=1"
    # one job long enough to be killed mid-run, checkpointing every 2 iterations
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_scaling.sweep", "-m", "+experiment=smoke",
         "model.width=1", f"hydra.sweep.dir={tmp_path}/${{experiment}}", "budget.value=20480",
         f"checkpoint_every={2 * ITER_STEPS} env_steps", "logger.progress=none",
         "torch_threads=1"], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (long_dir / "checkpoints" / "latest.pt").exists()
                  and len(RunRecord(long_dir).read_metrics()) >= 3, proc=proc)
        worker = _info(long_dir)["starts"][-1]["pid"]
        os.kill(worker, signal.SIGKILL)  # the job's process, as the OOM killer would
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert _info(long_dir)["status"] == "running"  # the record could not say it died

    state = read_run(long_dir, query_slurm=False)
    assert state.status == "failed" and "gone" in state.why
    assert state.log == long_dir / "sweep.log"
    status = _run("rl_scaling.runs", "status", str(sweep_dir), "--no-slurm")
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == "1 runs: 1 failed"
    assert "[model.width=1] failed (" in status.stdout and f"log: {long_dir / 'sweep.log'}" \
        in status.stdout

    killed_at = RunRecord(long_dir).read_metrics()[-1]["env_steps"]
    dry = _run("rl_scaling.runs", "resume", str(sweep_dir), "--no-slurm", "--dry-run")
    assert dry.returncode == 0 and "hydra/sweeper=plan" in dry.stdout
    # the sweep dir is the resolved one (hydra.yaml keeps `${experiment}`), nothing written
    assert f"hydra.sweep.dir={sweep_dir}" in dry.stdout and "${" not in dry.stdout
    assert not (sweep_dir / ".resume").exists()
    resumed = _run("rl_scaling.runs", "resume", str(sweep_dir), "--no-slurm")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    info = _info(long_dir)
    assert info["status"] == "finished" and info["resumed"] and len(info["starts"]) == 2
    steps = [r["env_steps"] for r in RunRecord(long_dir).read_metrics()]
    assert steps == [ITER_STEPS * (i + 1) for i in range(20480 // ITER_STEPS)]
    assert killed_at < steps[-1]
    # idempotent: nothing left to resume, and ls shows it finished with its metric
    again = _run("rl_scaling.runs", "resume", str(sweep_dir), "--no-slurm")
    assert again.returncode == 0 and again.stdout.startswith("nothing to resume")
    ls = _run("rl_scaling.runs", "ls", str(sweep_dir), "--no-slurm")
    assert "[model.width=1] finished | steps 20.48k/20.48k" in ls.stdout
    assert "return_mean" in ls.stdout


def test_runs_reports_what_it_cannot_read_in_one_line(tmp_path):
    out = _run("rl_scaling.runs", "ls", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and out.stderr.strip() == (
        f"error: runs: no such directory {tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    out = _run("rl_scaling.runs", "status", str(tmp_path / "empty"))
    assert out.returncode == 2 and "no run records" in out.stderr


def test_a_record_that_never_opened_and_a_corrupt_one_are_listed(tmp_path):
    never = tmp_path / "sweep" / "model.width=1"
    (never / ".hydra").mkdir(parents=True)
    (never / ".hydra" / "overrides.yaml").write_text("- model.width=1\n- +experiment=smoke\n")
    corrupt = tmp_path / "sweep" / "model.width=2"
    corrupt.mkdir()
    (corrupt / "run.json").write_text("{not json")
    states = {s.run_dir.name: s for s in find_runs(tmp_path / "sweep")}
    assert states["model.width=1"].status == "not started"
    assert states["model.width=2"].status == "failed"
    assert "corrupt run record" in states["model.width=2"].error
    assert summary_line(states["model.width=1"]).startswith("[model.width=1] not started")


# ------------------------------------------------------------------ planner -> launcher
@pytest.mark.parametrize("snapshots", [False, True], ids=["per-budget", "snapshots"])
def test_an_isoflop_plan_launches_and_its_runs_spend_what_it_predicted(tmp_path, snapshots):
    path = tmp_path / "plan.yaml"
    planned = _run("sweeps", "isoflop", "--experiment", "smoke", "--budgets", "1e9,3e9",
                   "--sizes", "width=0.125,0.25", *(["--snapshots"] if snapshots else []),
                   "--out", str(path), "--", "logger.progress=none", "torch_threads=1")
    assert planned.returncode == 0, planned.stderr[-3000:]
    plan = load_plan(path)
    sweep_dir = tmp_path / "sweep"
    out = _run("rl_scaling.sweep", "-m", "+experiment=smoke", "hydra/sweeper=plan",
               f"hydra.sweeper.plan={path}", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    infos = [_info(p.parent) for p in sorted(sweep_dir.glob("*/run.json"))]
    assert len(infos) == len(plan.jobs) == plan.summary["runs"]
    assert all(i["status"] == "finished" and i["budget"]["counter"] == "flops" for i in infos)
    # the accountant stopped each run where the planner's probe said it would
    assert sum(i["env_steps"] for i in infos) == plan.summary["env_steps"]
    assert sum(i["flops"] for i in infos) == pytest.approx(plan.summary["flops"], rel=1e-6)
    if snapshots:  # one run per size, a snapshot at every feasible budget below its own
        for info, job in zip(infos, plan.jobs, strict=True):
            budgets = yaml.safe_load(next(o for o in job if o.startswith("snapshot_flops="))
                                     .split("=", 1)[1])
            snaps = sorted(Path(info["run_dir"]).glob("checkpoints/flops=*.pt"))
            assert len(snaps) == len(budgets) >= 1


def test_the_slurm_launcher_passes_its_settings_to_submitit(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from hydra_plugins.rl_scaling_plugins.plugins import RLSlurmLauncher
    from rl_scaling.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=procgen_width", "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=7",
            "hydra.launcher.max_array_size=100", "hydra.launcher.wait=false",
            f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("RLSlurmLauncher")
    launcher = RLSlurmLauncher(**params)
    assert launcher.wait is False and launcher.max_array_size == 100
    executor = launcher._executor()
    sbatch = executor._executor.parameters
    assert sbatch["partition"] == "gpu" and sbatch["array_parallelism"] == 7
    assert sbatch["gpus_per_node"] == 1 and sbatch["cpus_per_task"] == 8
    assert sbatch["time"] == 1440 and sbatch["mem"] == "32GB"
    assert executor._executor.max_num_timeout == 20  # requeued after a time-out


def test_resume_relaunches_a_single_run_into_its_own_dir_and_skips_seed_dirs(tmp_path):
    run_dir = tmp_path / "single"
    out = _run("rl_scaling.sweep", "+experiment=smoke", f"hydra.run.dir={run_dir}",
               "budget.value=1024", "logger.progress=none")
    assert out.returncode == 0, out.stderr[-2000:]
    record = RunRecord(run_dir)
    record.update_run_json(status="failed", error="RuntimeError: simulated")
    seed_dir = tmp_path / "seed=2"  # a seeds_per_process seed dir: no .hydra of its own
    seed_dir.mkdir()
    (seed_dir / "run.json").write_text(json.dumps({"status": "failed", "experiment": "smoke",
                                                   "starts": []}))
    dry = _run("rl_scaling.runs", "resume", str(tmp_path), "--no-slurm", "--dry-run",
               "budget.value=2048")
    assert dry.returncode == 0, dry.stderr
    command = next(ln for ln in dry.stdout.splitlines() if ln.startswith("$ "))
    assert " -m rl_scaling.sweep " in command and " -m +experiment" not in command
    assert f"hydra.run.dir={run_dir}" in command and "budget.value=2048" in command
    assert "not relaunched: " in dry.stdout and "seed=2" in dry.stdout
    done = _run("rl_scaling.runs", "resume", str(tmp_path), "--no-slurm", "budget.value=2048")
    assert done.returncode == 0, done.stderr[-2000:]
    info = _info(run_dir)
    assert info["status"] == "finished" and info["env_steps"] == 2048 and info["resumed"]
