"""Data-parallel PPO over 2 CPU processes with the gloo backend (docs/speed.md): one
gradient step of 2 ranks on halves of a minibatch is the step of one process on the whole
of it; a torchrun run learns a probe's known solution, sums its counters and FLOPs into
one run record, and resumes from its checkpoint with every rank's own state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from agents.models import build_model
from rl_scaling.checkpoint import load_checkpoint
from rl_scaling.config import register_configs
from rl_scaling.distributed import from_environment
from rl_scaling.registry import ConfigError
from rl_scaling.run import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")
register_configs()


def _torchrun(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_ranks_come_from_torchrun_or_a_slurm_step():
    assert not from_environment({}).enabled
    tr = from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (tr.rank, tr.world_size, tr.local_rank, tr.source) == (1, 4, 1, "torchrun")
    step = from_environment({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4",
                             "SLURM_LOCALID": "1", "SLURM_NTASKS": "4"})
    assert (step.rank, step.world_size, step.local_rank, step.source) == (3, 4, 1, "slurm")
    # one task of a job array (or a batch script's own shell): not data-parallel
    assert not from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).enabled
    assert not from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).enabled


STEP_SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as tdist
    from agents.models import build_model
    from agents.distributions import Categorical
    from agents.ppo import PPOConfig, learner_loss, minibatch_step
    from rl_scaling.distributed import from_environment

    ranks = from_environment()
    if ranks.enabled:
        tdist.init_process_group("gloo")
    torch.manual_seed(0)
    model = build_model("mlp", (6,), 4, width=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mb = torch.load(sys.argv[1])
    half = len(mb["obs"]) // ranks.world_size
    mine = {k: v[ranks.rank * half:(ranks.rank + 1) * half] for k, v in mb.items()}
    cfg = PPOConfig(max_grad_norm=0.5)
    loss_fn = learner_loss(model, cfg, Categorical())
    for _ in range(3):
        minibatch_step(loss_fn, model, opt, mine, cfg, ranks)
    if ranks.rank == 0:
        torch.save(model.state_dict(), sys.argv[2])
''')


def test_two_ranks_take_the_step_of_the_combined_minibatch(tmp_path):
    g = torch.Generator().manual_seed(1)
    n = 64
    mb = {"obs": torch.randn(n, 6, generator=g), "actions": torch.randint(0, 4, (n,), generator=g),
          "logprobs": -torch.rand(n, generator=g) * 2, "values": torch.randn(n, generator=g),
          "advantages": torch.randn(n, generator=g) * 3 + 1,
          "returns": torch.randn(n, generator=g)}
    torch.save(mb, tmp_path / "mb.pt")
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    _torchrun([str(script), str(tmp_path / "mb.pt"), str(tmp_path / "ranks.pt")], tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(script), str(tmp_path / "mb.pt"),
                    str(tmp_path / "one.pt")], cwd=tmp_path, env=env, check=True)
    ranks, one = torch.load(tmp_path / "ranks.pt"), torch.load(tmp_path / "one.pt")
    start = build_model("mlp", (6,), 4, width=0.5).state_dict()
    moved = 0.0
    for key in one:
        torch.testing.assert_close(ranks[key], one[key], rtol=1e-5, atol=1e-6)
        moved += float((one[key] - start[key]).abs().sum())
    assert moved > 0.1  # three real steps were taken


# The probe config of tests/test_ppo.py: PPO must reach obs_action_reward's known solution
PROBE = ["env=probe", "env.id=obs_action_reward", "env.num_envs=8", "model=mlp",
         "algo.num_steps=16", "algo.num_epochs=4", "algo.num_minibatches=4",
         "algo.gamma=0.9", "algo.gae_lambda=0.95", "algo.ent_coef=0.0", "algo.lr=3e-3",
         "algo.lr_width_rule=false", "algo.norm_reward=false", "algo.max_grad_norm=1.0",
         "logger.progress=none", "checkpoint_every=null", "seed=0"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_ppo_learns_sums_counters_and_resumes(tmp_path):
    run_dir = tmp_path / "ddp"
    sweep = ["-m", "rl_scaling.sweep", *PROBE, f"hydra.run.dir={run_dir}"]
    _torchrun([*sweep, "budget.value=5120"], tmp_path)
    rows = _rows(run_dir)
    # each iteration: 2 ranks x 4 envs x 16 steps, one record written by rank 0
    assert [r["env_steps"] for r in rows] == [128 * (i + 1) for i in range(40)]
    assert [r["updates"] for r in rows] == [16 * (i + 1) for i in range(40)]
    assert rows[-1]["samples"] == 2 * 40 * 4 * 64
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["ranks"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no stray rank dirs

    # one process with the combined batch (8 envs): the same FLOPs at every step, and the
    # same learning curve within a tolerance (the draws differ, the process does not)
    single = tmp_path / "single"
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=[*PROBE, "budget.value=10240"])
    assert run(cfg, single) == "finished"
    one = _rows(single)
    assert [r["env_steps"] for r in one[:40]] == [r["env_steps"] for r in rows]
    for a, b in zip(one[:40], rows, strict=True):
        assert b["flops"] == pytest.approx(a["flops"], rel=1e-12)
        assert b["flops.policy"] == pytest.approx(a["flops.policy"], rel=1e-12)
    curve_one = np.array([r["return_mean"] for r in one[:40]])
    curve_ranks = np.array([r["return_mean"] for r in rows])
    assert curve_one[0] < 0.3 and curve_ranks[0] < 0.3  # a random policy: it had to learn
    assert np.abs(curve_one - curve_ranks).mean() < 0.15, (curve_one, curve_ranks)
    assert curve_ranks[-5:].mean() > 0.8

    # extend the budget: every rank resumes from the one checkpoint, counters continue
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])
    _torchrun([*sweep, "budget.value=10240"], tmp_path)
    rows = _rows(run_dir)
    assert [r["iteration"] for r in rows] == list(range(1, 81))
    assert rows[-1]["env_steps"] == 10240
    info = json.loads((run_dir / "run.json").read_text())
    assert [s["iteration"] for s in info["starts"]] == [0, 40]

    # the known solution, as one process reaches it (tests/test_ppo.py)
    model = build_model("mlp", (1,), 2)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints/latest.pt")["objects"]["model"])
    obs = torch.tensor([[1.0], [-1.0]])
    with torch.no_grad():
        logits, value = model(obs)
    np.testing.assert_allclose(value.numpy(), [1.0, 1.0], atol=0.1)
    best = torch.softmax(logits, -1)[torch.arange(2), torch.tensor([1, 0])]
    assert (best > 0.9).all(), best.tolist()


def test_a_preempted_torchrun_run_checkpoints_every_rank_and_resumes(tmp_path):
    """SIGTERM to torchrun (what Slurm sends on preemption) reaches every rank: they stop
    at the end of one iteration, rank 0 checkpoints with both ranks' state (their reward
    normalisers included), the record says ``running``, and the run continues without a
    gap, here resumed by one process (another number of ranks)."""
    run_dir = tmp_path / "ddp"
    probe = [*(o for o in PROBE if not o.startswith(("checkpoint_every=", "algo.norm_reward="))),
             "algo.norm_reward=true"]
    sweep = ["-m", "rl_scaling.sweep", *probe, f"hydra.run.dir={run_dir}",
             "checkpoint_every=100000 env_steps"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", *sweep, "budget.value=1000000"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.jsonl").exists() or len(_rows(run_dir)) < 5:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "running", info
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    stopped_at = state["counters"]["iterations"]
    assert len(state["ranks"]) == 2 and stopped_at == _rows(run_dir)[-1]["iteration"]
    norms = [r["objects"]["reward_normalizer"]["returns"] for r in state["ranks"]]
    assert [len(x) for x in norms] == [4, 4]  # each rank's own envs
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=[*probe, "checkpoint_every=100000 env_steps",
                                           f"budget.value={128 * (stopped_at + 3)}"])
    assert run(cfg, run_dir) == "finished"
    rows = _rows(run_dir)
    assert [r["iteration"] for r in rows] == list(range(1, stopped_at + 4))
    assert rows[-1]["env_steps"] == 128 * (stopped_at + 3)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("overrides,key", [
    (["+experiment=gym_utd", "env.id=Pendulum-v1"], "does not train data-parallel"),
    (["+experiment=smoke", "env.num_envs=7"], "env.num_envs=7"),
])
def test_refused_before_any_rank_waits(overrides, key, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "logger.progress=none"])
    with pytest.raises(ConfigError, match=key):
        run(cfg, tmp_path)
    assert not (tmp_path / "run.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_torchrun_on_two_cuda_ranks_sums_counters_into_one_record(tmp_path):
    run_dir = tmp_path / "ddp"
    _torchrun(["-m", "rl_scaling.sweep", "+experiment=smoke", "model.width=0.25",
               "device=cuda", "budget.value=2048", "logger.progress=none",
               f"hydra.run.dir={run_dir}"], tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["ranks"] == 2 and info["env_steps"] == 2048
    assert [r["env_steps"] for r in _rows(run_dir)] == [512, 1024, 1536, 2048]
