"""Sweeps through ``hydra/launcher=slurm`` on a real single-node Slurm (scripts/slurm-local.sh).

The fixture brings the cluster up in a temporary folder (slurmctld, slurmd, slurmdbd with
MariaDB for accounting, munge; installing Debian's packages first where they are missing and
this is root) with ``MaxArraySize=3``, so a sweep of 4 jobs must be split into two arrays.
Where no cluster can be started (not root, no apt-get), the tests skip saying why; the
default test command (``make test``, `.ci/run`) runs them.

- a small ``procgen_width`` grid: every record finished, the array split, ``runs`` shows it;
- a job SIGKILLed mid-run (what the OOM killer does): the record still says ``running``,
  Slurm accounting says FAILED, ``runs status`` reports it failed with its Slurm log, and
  ``runs resume`` relaunches it through the same launcher, submitting without waiting, and
  the run continues its counters from its checkpoint;
- ``scontrol requeue`` of a running job (preemption): the run checkpoints on SIGTERM and
  exits ``running``; the launcher's summary says requeued, not finished; the job runs
  again with its original overrides and finishes;
- a run on the 2 tasks of one job trains data-parallel (2 ranks, one record).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_scaling.record import RunRecord
from rl_scaling.runs import read_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
# Small enough for a 2-core test node; the project's slurm.yaml asks for a GPU node.
SMALL = ("hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20")
ITER_STEPS = 512  # smoke: 8 envs x 64 steps

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """A running single-node cluster; yields the environment its clients need."""
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        pytest.skip("hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")
    if os.geteuid() != 0:
        pytest.skip("scripts/slurm-local.sh starts Slurm's daemons as root; not root here")
    folder = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_LOCAL_MAX_ARRAY_SIZE="3")
    out = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True,
                         text=True, timeout=600, env=env)
    if out.returncode != 0:
        if shutil.which("slurmctld") is None:  # could not install (no apt-get, offline)
            pytest.skip("no Slurm here and it could not be installed: "
                        + (out.stderr.strip().splitlines() or ["?"])[-1])
        pytest.fail(f"slurm-local.sh start failed:\n{out.stderr[-4000:]}")
    clients = dict(os.environ)
    for line in out.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            clients[key] = value.strip().strip("'\"")
    # the tests' own Slurm queries (rl_scaling.runs.read_run) need SLURM_CONF too
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = clients.get("SLURM_CONF", "")
    try:
        yield clients
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True,
                       timeout=120, env=env)


def _env(slurm: dict[str, str]) -> dict[str, str]:
    env = dict(slurm, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    return env


def _sweep(slurm, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rl_scaling.sweep", "-m", *overrides,
                           "hydra/launcher=slurm", *SMALL], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=_env(slurm))


def _runs(slurm, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rl_scaling.runs", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=_env(slurm))


def _info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def _wait_for(predicate, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def _steps(run_dir: Path) -> list[int]:
    return [r["env_steps"] for r in RunRecord(run_dir).read_metrics()]


def test_a_procgen_width_grid_runs_on_slurm_split_into_arrays(slurm, tmp_path):
    pytest.importorskip("procgen")
    sweep_dir = tmp_path / "procgen_width"
    out = _sweep(slurm, "+experiment=procgen_width", "model.width=0.125,0.25",
                 "env.id=coinrun,starpilot", "env.distribution_mode=easy", "seed=1",
                 "env.num_envs=4", "env.eval.num_envs=4", "algo.num_steps=32",
                 "algo.num_minibatches=2", "budget.value=256", "eval_every=null",
                 "logger.progress=plain", "torch_threads=1", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dirs = sorted(p.parent for p in sweep_dir.glob("*/run.json"))
    assert len(run_dirs) == 4
    arrays = set()
    for run_dir in run_dirs:
        info = _info(run_dir)
        assert info["status"] == "finished" and info["env_steps"] == 256, info
        start = info["starts"][-1]
        assert start.get("job_id"), start
        # submitit submits a one-job chunk as a plain job, the others as arrays
        arrays.add(start.get("array_job_id") or start["job_id"])
        assert len(RunRecord(run_dir).read_metrics()) == 2
    # 4 jobs with MaxArraySize=3: two submissions (3 + 1), never an array Slurm refuses
    assert len(arrays) == 2
    assert "multirun summary (4 jobs)" in out.stderr
    status = _runs(slurm, "status", str(sweep_dir))
    assert status.returncode == 0 and status.stdout.splitlines()[0] == "4 runs: 4 finished"
    ls = _runs(slurm, "ls", str(sweep_dir))
    assert ls.stdout.count("finished | steps 256/256") == 4


def test_a_sigkilled_job_is_reported_failed_and_resume_finishes_it(slurm, tmp_path):
    sweep_dir = tmp_path / "smoke"
    run_dir = sweep_dir / "model.width=1"
    budget = 40 * ITER_STEPS
    out = _sweep(slurm, "+experiment=smoke", "model.width=1", f"budget.value={budget}",
                 f"checkpoint_every={2 * ITER_STEPS} env_steps", "logger.progress=none",
                 "torch_threads=1", "hydra.launcher.wait=false",
                 f"hydra.sweep.dir={sweep_dir}", timeout=300)
    # no-wait: the launcher returns once the job is submitted
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "submitted 1 jobs" in out.stdout and "rl_scaling.runs status" in out.stdout
    _wait_for(lambda: (run_dir / "checkpoints" / "latest.pt").exists()
              and len(_steps(run_dir)) >= 3, "the job to checkpoint")
    pid = _info(run_dir)["starts"][-1]["pid"]
    os.kill(pid, signal.SIGKILL)  # the training process, as the OOM killer would
    killed_at = _steps(run_dir)[-1]
    _wait_for(lambda: read_run(run_dir).status == "failed", "Slurm to report the job failed",
              timeout=180)
    state = read_run(run_dir)
    assert state.recorded == "running" and "FAILED" in state.why  # accounting told us
    status = _runs(slurm, "status", str(sweep_dir))
    assert "[model.width=1] failed" in status.stdout, status.stdout
    assert state.log is not None and state.log.name.endswith("_log.err")
    assert f"log: {state.log}" in status.stdout

    resumed = _runs(slurm, "resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "hydra/launcher=slurm" in resumed.stdout and "submitted 1 jobs" in resumed.stdout
    _wait_for(lambda: _info(run_dir)["status"] == "finished", "the resumed run to finish")
    info = _info(run_dir)
    assert info["resumed"] and len(info["starts"]) == 2
    assert info["starts"][0]["job_id"] != info["starts"][1]["job_id"]
    steps = _steps(run_dir)
    assert steps == [ITER_STEPS * (i + 1) for i in range(budget // ITER_STEPS)]
    assert killed_at < steps[-1]
    again = _runs(slurm, "resume", str(sweep_dir))
    assert again.returncode == 0 and again.stdout.startswith("nothing to resume")


def test_a_preempted_job_is_reported_requeued_and_resumes_with_its_overrides(slurm, tmp_path):
    sweep_dir = tmp_path / "preempt"
    run_dir = sweep_dir / "algo.gamma=0.75,model.width=1"
    budget = 100 * ITER_STEPS
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_scaling.sweep", "-m", "+experiment=smoke", "model.width=1",
         f"budget.value={budget}", "checkpoint_every=null", "logger.progress=none",
         "torch_threads=1", "algo.gamma=0.75", "hydra/launcher=slurm", *SMALL,
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=_env(slurm), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_steps(run_dir)) >= 3, "the job to start training")
        job = read_run(run_dir).slurm_job
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30, env=_env(slurm))
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the run caught SIGTERM, checkpointed and returned `running`: not finished
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    summary = err[err.index("multirun summary"):]
    assert "[algo.gamma=0.75,model.width=1] requeued" in summary, summary
    assert "finished" not in summary
    assert _info(run_dir)["status"] == "running"
    def finished_or_released() -> bool:
        # Slurm holds a requeued job back for a while (BeginTime); once it is pending again,
        # let it start now (an update while it is still completing does not take)
        if _info(run_dir)["status"] == "finished":
            return True
        if read_run(run_dir).status == "requeued":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                           capture_output=True, timeout=30, env=_env(slurm))
        return False

    _wait_for(finished_or_released, "the requeued job to finish", timeout=400)
    info = _info(run_dir)
    assert info["resumed"] and len(info["starts"]) == 2
    assert int(info["starts"][1].get("restart_count", 0)) >= 1  # the same job, requeued
    config = (run_dir / "config.yaml").read_text()
    assert "gamma: 0.75" in config  # its original overrides
    steps = _steps(run_dir)
    assert steps == [ITER_STEPS * (i + 1) for i in range(budget // ITER_STEPS)]


def test_a_run_trains_data_parallel_on_the_tasks_of_one_job(slurm, tmp_path):
    """``tasks_per_node=2``: one job, two ranks (gloo on CPU), one record with the counters
    of both; what ``gpus_per_node=K`` gives a run on a GPU node (``rank_per_gpu``)."""
    sweep_dir = tmp_path / "ddp"
    out = _sweep(slurm, "+experiment=smoke", "model.width=0.125", "budget.value=2048",
                 "logger.progress=plain", "hydra.launcher.tasks_per_node=2",
                 f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = [p.parent for p in sweep_dir.glob("*/run.json")]
    info = _info(run_dir)
    assert info["status"] == "finished" and info["ranks"] == 2, info
    assert info["env_steps"] == 2048 and len(info["starts"]) == 1
    # 8 envs, 4 per rank: each logged iteration is both ranks' 2 x 4 x 64 steps
    assert _steps(run_dir) == [512, 1024, 1536, 2048]
    assert "multirun summary (1 jobs)" in out.stderr
