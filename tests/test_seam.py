"""Proof that the seam is real: two algorithms that live in this file, registered with one line
each, run through ``python -m rl_scaling.sweep`` end to end without anything in rl_scaling/
naming them: a run record with FLOPs per network role, and a SIGKILL then a resume that
leaves the curve with every point exactly once.

- ``reinforce``: REINFORCE with a Gaussian policy on a continuous-action probe env.
- ``regression``: a dataset-only "algorithm" (no envs; ``env_steps`` stays 0) fitting a
  linear map with an MLP, plus a forward-only Polyak-averaged copy as a second role that is
  not part of the study's N.

The subprocesses import this file through ``RL_SCALING_PLUGINS=tests.test_seam``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from torch import nn

from rl_scaling.checkpoint import load_checkpoint
from rl_scaling.context import RunContext
from rl_scaling.record import RunRecord
from rl_scaling.registry import ConfigError, register_algo
from tests.procs import kill_after_a_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests.test_seam"


# ---------------------------------------------------------------------------------------------
# reinforce: Gaussian policy gradient on a continuous probe
# ---------------------------------------------------------------------------------------------


@dataclass
class ReinforceConfig:
    name: str = "reinforce"
    num_steps: int = 4  # env steps per env between updates
    lr: float = 0.03  # Adam learning rate
    init_log_std: float = -0.5  # log standard deviation of the Gaussian at the start
    step_delay: float = 0.0  # seconds slept per iteration (tests: killable mid-run)

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"algo.lr={self.lr} must be > 0")


class GaussianPolicy(nn.Module):
    """mean = MLP(obs); a state-independent learned log std."""

    def __init__(self, obs_dim: int, act_dim: int, width: float = 1.0, init_log_std: float = 0.0):
        super().__init__()
        hidden = max(1, round(32 * width))
        self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(),
                                  nn.Linear(hidden, act_dim))
        self.log_std = nn.Parameter(torch.full((act_dim,), init_log_std))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(obs.float())

    def scaled_modules(self) -> list[nn.Module]:
        return [self.body]


def train_reinforce(cfg: ReinforceConfig, ctx: RunContext) -> str:
    envs = ctx.envs("train")
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    policy = ctx.network("policy", GaussianPolicy, obs_dim=obs_dim, act_dim=act_dim,
                         width=ctx.model.get("width", 1.0), init_log_std=cfg.init_log_std)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    ctx.restore(policy=policy, optimizer=optimizer)
    obs = envs.reset(seed=int(torch.randint(0, 2**31 - 1, (), generator=ctx.torch_rng)))
    batch = envs.num_envs * cfg.num_steps
    c = ctx.counters
    while not ctx.done:
        observations, actions, rewards = [], [], []
        for _ in range(cfg.num_steps):
            obs_t = torch.as_tensor(obs)
            with torch.no_grad():
                mean = policy(obs_t)
            noise = torch.randn(mean.shape, generator=ctx.device_rng)
            action = mean + policy.log_std.detach().exp() * noise
            obs_next, reward, _, _, _ = envs.step(action.numpy())
            observations.append(obs_t)
            actions.append(action)
            rewards.append(torch.as_tensor(reward))
            obs = obs_next
        ctx.flops.add_forward("policy", batch)
        c.env_steps += batch
        # one-step episodes: the return is the reward; a mean baseline lowers the variance
        obs_b, act_b, ret_b = torch.cat(observations), torch.cat(actions), torch.cat(rewards)
        std = policy.log_std.exp()
        logp = (-0.5 * ((act_b - policy(obs_b)) / std) ** 2 - policy.log_std).sum(-1)
        loss = -(logp * (ret_b - ret_b.mean())).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ctx.flops.add_forward_backward("policy", batch)
        c.updates += 1
        c.samples += batch
        time.sleep(cfg.step_delay)
        ctx.end_iteration({"loss": float(loss), "return_mean": float(ret_b.mean()),
                           "action_std": float(std.mean())})
    return "finished"


register_algo("reinforce", ReinforceConfig, train_reinforce)


# ---------------------------------------------------------------------------------------------
# regression: trained on a dataset, no envs
# ---------------------------------------------------------------------------------------------


@dataclass
class RegressionConfig:
    name: str = "regression"
    dataset_size: int = 2048
    in_dim: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    polyak: float = 0.05  # the averaged copy moves this far toward the trained net per update
    step_delay: float = 0.0  # seconds slept per iteration (tests: killable mid-run)


class Regressor(nn.Module):
    def __init__(self, in_dim: int, width: float = 1.0):
        super().__init__()
        hidden = max(1, round(64 * width))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def train_regression(cfg: RegressionConfig, ctx: RunContext) -> str:
    data_rng = np.random.default_rng(1234)  # the dataset is fixed; the run's RNG samples from it
    inputs = torch.as_tensor(data_rng.normal(size=(cfg.dataset_size, cfg.in_dim)),
                             dtype=torch.float32)
    weights = torch.as_tensor(data_rng.normal(size=cfg.in_dim), dtype=torch.float32)
    targets = inputs @ weights
    box = gymnasium.spaces.Box(-np.inf, np.inf, (cfg.in_dim,), np.float32)
    ctx.set_spec(box, gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32))
    width = ctx.model.get("width", 1.0)
    net = ctx.network("regressor", Regressor, in_dim=cfg.in_dim, width=width)
    averaged = ctx.network("averaged", Regressor, effective=False, in_dim=cfg.in_dim, width=width)
    averaged.load_state_dict(net.state_dict())
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ctx.restore(regressor=net, averaged=averaged, optimizer=optimizer)
    c = ctx.counters
    while not ctx.done:
        idx = torch.randint(0, cfg.dataset_size, (cfg.batch_size,), generator=ctx.torch_rng)
        loss = ((net(inputs[idx]) - targets[idx]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ctx.flops.add_forward_backward("regressor", cfg.batch_size)
        with torch.no_grad():
            for p_avg, p in zip(averaged.parameters(), net.parameters(), strict=True):
                p_avg.lerp_(p, cfg.polyak)
            averaged_loss = ((averaged(inputs[idx]) - targets[idx]) ** 2).mean()
        ctx.flops.add_forward("averaged", cfg.batch_size)
        c.updates += 1
        c.samples += cfg.batch_size
        time.sleep(cfg.step_delay)
        # metrics as a function: the loss tensors are read (a device sync) only at log points
        ctx.end_iteration(lambda loss=loss, averaged_loss=averaged_loss: {
            "loss": float(loss), "averaged_loss": float(averaged_loss)})
    return "finished"


register_algo("regression", RegressionConfig, train_regression)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RL_SCALING_PLUGINS=PLUGIN, WANDB_MODE="offline")
    return env


def _cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rl_scaling.sweep", f"hydra.run.dir={run_dir}",
            "logger.progress=none", "torch_threads=1", *overrides]


REINFORCE = ("algo=reinforce", "env=probe", "env.id=continuous_obs_action", "env.num_envs=16",
             "model=mlp", "model.width=0.5",
             "study={kind:curves,axes:{lr:algo.lr}}")
REGRESSION = ("algo=regression", "~env", "~model",
              "budget.counter=samples")


def test_reinforce_from_this_file_learns_a_continuous_probe(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(_cmd(run_dir, *REINFORCE, "budget.value=12800"), cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["algo"] == "reinforce"
    assert info["study"] == {"kind": "curves", "axes": {"lr": "algo.lr"}, "metric": None}
    assert set(info["networks"]) == {"policy"} and info["effective_roles"] == ["policy"]
    policy = info["networks"]["policy"]
    # 1 -> 16 -> 1 MLP at width 0.5: 2*(1*16) + 2*(16*1) FLOPs per forward
    assert policy["flops_per_forward"] == {"total": 64, "effective": 64}
    assert policy["params"]["effective"] == 16 + 16 + 16 + 1  # log_std is not scaled
    rows = RunRecord(run_dir).read_metrics()
    assert [r["iteration"] for r in rows] == list(range(1, 201))
    # acting forward + forward/backward per sample, every sample once
    assert rows[-1]["flops"] == pytest.approx(4 * 64 * 12800)
    assert rows[-1]["flops.policy"] == pytest.approx(rows[-1]["flops"])
    # reward 1 - (a - 0.5 obs)^2: an untrained policy scores about 0.4, the optimum 1
    early = np.mean([r["return_mean"] for r in rows[:10]])
    late = np.mean([r["return_mean"] for r in rows[-20:]])
    assert late > 0.9 > early + 0.2, (early, late)


@pytest.mark.parametrize("algo", ["regression", "reinforce"])
def test_algorithm_from_this_file_resumes_after_sigkill(tmp_path, algo):
    """Kill -9 mid-run, start the same command again: the curve continues from the last
    checkpoint with every log point exactly once; FLOPs per role continue too."""
    run_dir = tmp_path / "run"
    if algo == "regression":
        args = _cmd(run_dir, *REGRESSION, "budget.value=25600", "log_every=640 samples",
                    "checkpoint_every=1920 samples", "algo.step_delay=0.01")
        per_line, counter = 640, "samples"
    else:
        args = _cmd(run_dir, *REINFORCE, "budget.value=25600", "log_every=640 env_steps",
                    "checkpoint_every=1920 env_steps", "algo.step_delay=0.02")
        per_line, counter = 640, "env_steps"
    lines_total = 40
    ckpt = run_dir / "checkpoints" / "latest.pt"
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kill_after_a_checkpoint(proc, run_dir)
    at_kill = load_checkpoint(ckpt)["counters"]
    logged = RunRecord(run_dir).read_metrics()
    assert logged[-1]["iteration"] > at_kill["iterations"] > 0  # lines after the checkpoint

    proc2 = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    rows = RunRecord(run_dir).read_metrics()
    values = [r[counter] for r in rows]
    assert values == [per_line * (i + 1) for i in range(lines_total)]  # none lost or repeated
    iterations = [r["iteration"] for r in rows]
    assert iterations == sorted(set(iterations))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"] is True
    assert len(info["starts"]) == 2
    if algo == "regression":
        assert all(r["env_steps"] == 0 for r in rows)
        f_reg = info["networks"]["regressor"]["flops_per_forward"]["total"]
        f_avg = info["networks"]["averaged"]["flops_per_forward"]["total"]
        assert info["effective_roles"] == ["regressor"]
        assert info["params"]["effective"] == info["networks"]["regressor"]["params"]["total"]
        for r in rows:  # effective FLOPs count only the regressor; each role its own passes
            assert r["flops"] == pytest.approx(3 * f_reg * r["samples"])
            assert r["flops.regressor"] == pytest.approx(3 * f_reg * r["samples"])
            assert r["flops.averaged"] == pytest.approx(f_avg * r["samples"])
        assert math.isfinite(rows[-1]["loss"]) and rows[-1]["loss"] < rows[0]["loss"]
        # weights, optimiser, averaged copy and the run's generator came back exactly: the
        # killed-and-resumed curve is the uninterrupted one, number for number
        whole = tmp_path / "whole"
        proc3 = subprocess.run([a for a in args if "step_delay" not in a and "run.dir" not in a]
                               + [f"hydra.run.dir={whole}"], cwd=ROOT, env=_env(),
                               capture_output=True, text=True, timeout=300)
        assert proc3.returncode == 0, proc3.stderr[-3000:]
        uninterrupted = RunRecord(whole).read_metrics()
        assert [r["loss"] for r in rows] == [r["loss"] for r in uninterrupted]
        assert [r["averaged_loss"] for r in rows] == [r["averaged_loss"] for r in uninterrupted]
    else:
        f = info["networks"]["policy"]["flops_per_forward"]["effective"]
        assert [r["flops"] for r in rows] == pytest.approx([4 * f * v for v in values])
        assert [r["flops.policy"] for r in rows] == pytest.approx([4 * f * v for v in values])


def test_dataset_run_refuses_to_build_envs(tmp_path):
    """A run without an env group gets a one-line error if the algorithm asks for envs."""
    proc = subprocess.run(_cmd(tmp_path / "run", "algo=reinforce", "~env", "~model"),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no 'train' envs" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_dataset_run_with_a_budget_in_env_steps_is_refused(tmp_path):
    """env_steps never grow without envs: such a run could never end."""
    proc = subprocess.run(_cmd(tmp_path / "run", "algo=regression", "~env", "~model"),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "budget.counter=env_steps" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_unimportable_plugin_is_one_line(tmp_path):
    env = dict(_env(), RL_SCALING_PLUGINS="no_such_module_here")
    proc = subprocess.run(_cmd(tmp_path / "run"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no_such_module_here" in proc.stderr.strip().splitlines()[-1]
