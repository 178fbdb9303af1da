"""End to end through the real command line: a short sweep, a SIGKILL and a resume, bad input.

Every test starts ``python -m rl_scaling.sweep`` as a subprocess, exactly as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rl_scaling.checkpoint import load_checkpoint
from rl_scaling.record import RunRecord
from tests.procs import kill_after_a_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COUNTERS = ("env_steps", "updates", "samples", "flops", "wall_time")
# smoke: 8 envs x 64 steps = 512 env steps per iteration, 1 epoch of 2 minibatches
ITER_STEPS, ITER_UPDATES = 512, 2


def sweep(*overrides: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rl_scaling.sweep", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=_env(), **popen)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    return env


def _metrics(run_dir: Path) -> list[dict]:
    return RunRecord(run_dir).read_metrics()


def _long_smoke(run_dir: Path, iterations: int, checkpoint_interval: int) -> list[str]:
    """The command line of a smoke run at width 1, long enough to be interrupted."""
    every = f"{checkpoint_interval * ITER_STEPS} env_steps" if checkpoint_interval else "null"
    return [sys.executable, "-m", "rl_scaling.sweep", "+experiment=smoke", "model.width=1",
            f"hydra.run.dir={run_dir}", f"budget.value={iterations * ITER_STEPS}",
            f"checkpoint_every={every}", "logger.progress=none", "torch_threads=1"]


def _start_and_wait_for_lines(args: list[str], run_dir: Path, lines: int) -> subprocess.Popen:
    """Start a run and return once it has logged ``lines`` metric lines (still running)."""
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(_metrics(run_dir)) < lines:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"run did not log {lines} lines while running")
        time.sleep(0.02)
    return proc


def _check_curve(rows: list[dict], iterations: int) -> None:
    """Counters of a smoke run: one line per iteration, nothing duplicated or missing."""
    assert [r["env_steps"] for r in rows] == [ITER_STEPS * (i + 1) for i in range(iterations)]
    assert [r["updates"] for r in rows] == [ITER_UPDATES * (i + 1) for i in range(iterations)]
    assert [r["samples"] for r in rows] == [ITER_STEPS * (i + 1) for i in range(iterations)]
    flops = [r["flops"] for r in rows]
    per_iter = flops[0]
    assert per_iter > 0
    assert flops == pytest.approx([per_iter * (i + 1) for i in range(iterations)], rel=1e-9)
    walls = [r["wall_time"] for r in rows]
    assert walls == sorted(walls)
    assert all(set(COUNTERS) <= set(r) for r in rows)


def test_smoke_sweep_end_to_end_then_analysis(tmp_path):
    """The real path: Hydra multirun (joblib, 2 workers) -> PPO -> run records -> analysis."""
    sweep_dir = tmp_path / "runs"
    proc = sweep("-m", "+experiment=smoke", f"hydra.sweep.dir={sweep_dir}",
                 "logger.progress=plain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = sorted(p for p in sweep_dir.iterdir() if (p / "run.json").exists())
    assert [p.name for p in run_dirs] == ["model.width=0.125", "model.width=0.25"]
    params = []
    for run_dir in run_dirs:
        info = json.loads((run_dir / "run.json").read_text())
        assert info["status"] == "finished" and info["experiment"] == "smoke"
        assert info["env_steps"] == 2048 and info["flops"] > 0
        assert info["params"]["effective"] <= info["params"]["total"]
        assert info["study"] == {"kind": "scaling", "axes": {"width": "model.width"},
                                 "metric": None}
        assert info["effective_roles"] == ["policy"]
        assert info["networks"]["policy"]["params"] == info["params"]
        assert len(info["starts"]) == 1 and info["starts"][0]["pid"] > 0
        params.append(info["params"]["effective"])
        rows = _metrics(run_dir)
        _check_curve(rows, 4)
        assert rows[-1]["flops"] == pytest.approx(info["flops"])
        assert all(0.0 <= r["return_mean"] <= 1.0 for r in rows)
        assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints/latest.pt").exists()
    assert params[0] < params[1]  # width 0.125 is the smaller model

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis", "--runs", str(sweep_dir),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.md").read_text().strip()
    laws = json.loads((out / "laws.json").read_text())
    assert isinstance(laws, dict) and laws
    assert list(out.rglob("*.png")), "analysis drew no figure"


def test_sigkill_then_resume_continues_counters(tmp_path):
    """Kill -9 mid-run, start the same command again: it resumes from its last checkpoint,
    and the curve has every point exactly once."""
    run_dir = tmp_path / "run"
    iterations = 16
    args = _long_smoke(run_dir, iterations, checkpoint_interval=3)
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpt = run_dir / "checkpoints" / "latest.pt"
    kill_after_a_checkpoint(proc, run_dir)  # checkpoints every 3 lines: some come after it
    assert proc.returncode == -signal.SIGKILL
    logged = len(_metrics(run_dir))
    at_kill = load_checkpoint(ckpt)["counters"]
    assert 0 < at_kill["iterations"] < iterations
    assert logged > at_kill["iterations"]  # some points were logged after the checkpoint
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"

    proc2 = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "resuming" in proc2.stdout + proc2.stderr
    rows = _metrics(run_dir)
    _check_curve(rows, iterations)  # no point duplicated or lost
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"] is True
    assert info["env_steps"] == iterations * ITER_STEPS
    # wall time continues from the checkpoint rather than restarting at zero
    first_resumed = rows[at_kill["iterations"]]
    assert first_resumed["wall_time"] >= at_kill["wall_time"]


def test_finished_run_is_not_rerun_and_can_be_extended(tmp_path):
    run_dir = tmp_path / "run"
    base = ["+experiment=smoke", f"hydra.run.dir={run_dir}", "budget.value=1024",
            "logger.progress=none"]
    assert sweep(*base).returncode == 0
    assert sweep(*base).returncode == 0
    assert len(_metrics(run_dir)) == 2  # the second call found it finished
    proc = sweep(*base[:-2], "budget.value=2048", "logger.progress=none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _check_curve(_metrics(run_dir), 4)  # extended from its checkpoint


def test_corrupt_checkpoint_is_one_line_and_keeps_the_curve(tmp_path):
    run_dir = tmp_path / "run"
    base = ["+experiment=smoke", f"hydra.run.dir={run_dir}", "logger.progress=none"]
    assert sweep(*base, "budget.value=1024").returncode == 0
    before = (run_dir / "metrics.jsonl").read_text()
    ckpt = run_dir / "checkpoints" / "latest.pt"
    ckpt.write_bytes(b"not a checkpoint")
    proc = sweep(*base, "budget.value=2048")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: corrupt checkpoint") and str(ckpt) in last
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing already logged is lost
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_checkpoint_of_another_model_is_one_line_and_changes_nothing(tmp_path):
    """A valid checkpoint of another width: refused before the record is touched."""
    other, run_dir = tmp_path / "other", tmp_path / "run"
    base = ["+experiment=smoke", "logger.progress=none", "budget.value=1024"]
    assert sweep(*base, f"hydra.run.dir={other}", "model.width=0.125").returncode == 0
    assert sweep(*base, f"hydra.run.dir={run_dir}").returncode == 0
    shutil.copy(other / "checkpoints" / "latest.pt", run_dir / "checkpoints" / "latest.pt")
    before = {f: (run_dir / f).read_text() for f in ("metrics.jsonl", "run.json", "config.yaml")}
    proc = sweep(*base[:-1], f"hydra.run.dir={run_dir}", "budget.value=2048")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: incompatible checkpoint") and "latest.pt" in last, last
    assert "Traceback" not in proc.stderr
    assert {f: (run_dir / f).read_text() for f in before} == before


def test_corrupt_run_json_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    base = ["+experiment=smoke", f"hydra.run.dir={run_dir}", "logger.progress=none",
            "budget.value=512"]
    assert sweep(*base).returncode == 0
    (run_dir / "run.json").write_text('{"status": "finis')
    proc = sweep(*base)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: corrupt run record") and "run.json" in last, last


def test_run_that_diverged_before_its_first_checkpoint_keeps_its_curve(tmp_path):
    run_dir = tmp_path / "run"
    base = ["+experiment=smoke", f"hydra.run.dir={run_dir}", "logger.progress=none",
            "budget.value=512"]
    assert sweep(*base).returncode == 0
    shutil.rmtree(run_dir / "checkpoints")  # as if it diverged before checkpointing
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "diverged"}))
    curve = (run_dir / "metrics.jsonl").read_text()
    assert curve
    proc = sweep(*base)  # e.g. the sweep relaunched to extend other runs
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "metrics.jsonl").read_text() == curve
    assert json.loads((run_dir / "run.json").read_text())["status"] == "diverged"


def test_missing_optional_package_is_one_line(tmp_path):
    shim = tmp_path / "shim" / "procgen"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('simulated: procgen not installed')\n")
    env = dict(_env(), PYTHONPATH=f"{shim.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "rl_scaling.sweep", "env=procgen",
                           "model=impala_cnn", f"hydra.run.dir={tmp_path / 'run'}",
                           "logger.progress=none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "rl-scaling[procgen]" in last and "simulated" in last, last


def test_changed_config_in_same_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    base = ["+experiment=smoke", f"hydra.run.dir={run_dir}", "logger.progress=none",
            "budget.value=512"]
    assert sweep(*base).returncode == 0
    proc = sweep(*base, "algo.lr=0.1")
    assert proc.returncode == 2
    assert "algo.lr" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("overrides,needle", [
    (["model.width=-1"], "model.width"),
    (["env.data_path=/nonexistent/mnist"], "/nonexistent/mnist"),
    (["env=procgen", "model=impala_cnn", "env.id=pong"], "pong"),
    (["model.widht=2"], "widht"),
])
def test_bad_input_fails_with_one_clear_line(tmp_path, overrides, needle):
    proc = sweep(*overrides, f"hydra.run.dir={tmp_path / 'run'}", "logger.progress=none",
                 timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert needle in lines[-1] or needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_wandb_offline_mirrors_metrics(tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    env = {k: v for k, v in _env().items() if k != "WANDB_SILENT"}  # it prints its summary
    proc = subprocess.run([sys.executable, "-m", "rl_scaling.sweep", "+experiment=smoke",
                           "logger=wandb", f"hydra.run.dir={run_dir}", "budget.value=1024",
                           "logger.progress=none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, f"no offline wandb run under {run_dir / 'wandb'}"
    assert list(offline[0].glob("*.wandb"))
    rows = _metrics(run_dir)
    assert len(rows) == 2  # local files stay the truth
    # what reached wandb, as its finish() prints it (the offline .wandb file has no stable
    # reader): the counters of the last metrics line; status etc. are checked in test_record
    out = proc.stdout + proc.stderr
    summary = dict(re.findall(r"wandb:\s+(\w+) (\S+)\s*$", out.split("Run summary:")[-1],
                              flags=re.M))
    for key in ("env_steps", "flops"):
        assert float(summary[key]) == pytest.approx(rows[-1][key], rel=1e-4), (key, summary)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_keeps_rollout_on_device(tmp_path):
    run_dir = tmp_path / "run"
    proc = sweep("+experiment=smoke", "device=cuda", f"hydra.run.dir={run_dir}",
                 "logger.progress=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["device"].startswith("cuda") and info["status"] == "finished"
    _check_curve(_metrics(run_dir), 4)


def _smoke_curve(run_dir: Path, seed: int) -> list[dict]:
    from hydra import compose, initialize_config_dir

    from rl_scaling.config import register_configs
    from rl_scaling.run import run

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=smoke", f"seed={seed}",
                                           "logger.progress=none", "torch_threads=1"])
    assert run(cfg, run_dir) == "finished"
    timing = {"wall_time", "rollout_time", "update_time"}
    return [{k: v for k, v in r.items() if k not in timing} for r in _metrics(run_dir)]


def test_a_seed_fixes_the_curve(tmp_path):
    """Same seed: weights, digits and sampled actions repeat, so every logged number does."""
    first = _smoke_curve(tmp_path / "a", seed=3)
    assert _smoke_curve(tmp_path / "b", seed=3) == first
    assert _smoke_curve(tmp_path / "c", seed=4) != first


def test_sigterm_checkpoints_at_once_and_the_rerun_finishes(tmp_path):
    """Slurm's preemption signal: the run checkpoints at the end of the iteration it is in,
    exits with status running, and the requeued command finishes the curve."""
    run_dir = tmp_path / "run"
    iterations = 16
    args = _long_smoke(run_dir, iterations, checkpoint_interval=0)
    proc = _start_and_wait_for_lines(args, run_dir, lines=3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    counters = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["counters"]
    logged = _metrics(run_dir)
    # checkpoint_every=null means "only at the end", so this checkpoint is the signal's
    assert 3 <= counters["iterations"] < iterations
    assert logged[-1]["env_steps"] == counters["env_steps"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"

    proc2 = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    _check_curve(_metrics(run_dir), iterations)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


REQUEUER = """
import runpy, signal, sys
marker = sys.argv[1]
def requeue(signum, frame):  # stands in for submitit's handler: requeue, then exit
    open(marker, "w").write(str(signum))
    sys.exit(-1)
signal.signal(signal.SIGUSR2, requeue)
sys.argv = ["rl_scaling.sweep", *sys.argv[2:]]
runpy.run_module("rl_scaling.sweep", run_name="__main__")
"""


def test_time_limit_signal_checkpoints_then_hands_over_to_the_launcher(tmp_path):
    """submitit asks Slurm for SIGUSR2 before the time limit and requeues in its handler:
    the run checkpoints first, records status running (not failed), then calls it."""
    run_dir, marker = tmp_path / "run", tmp_path / "requeued"
    iterations = 16
    args = [sys.executable, "-c", REQUEUER, str(marker),
            *_long_smoke(run_dir, iterations, checkpoint_interval=0)[3:]]
    proc = _start_and_wait_for_lines(args, run_dir, lines=2)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=120) == 255  # the stand-in's sys.exit(-1)
    assert marker.read_text() == str(int(signal.SIGUSR2))
    counters = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["counters"]
    assert 2 <= counters["iterations"] < iterations
    assert _metrics(run_dir)[-1]["env_steps"] == counters["env_steps"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "running", info
