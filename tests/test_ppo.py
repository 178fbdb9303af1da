"""PPO reaches the known solution of each classic probe environment, and learns CoinRun."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.models import build_model
from agents.ppo import evaluate, learning_rate, train
from envs import PROBES, make_env
from rl_scaling.config import PPOConfig
from rl_scaling.context import RunContext
from rl_scaling.flops import FlopAccountant, forward_flops
from rl_scaling.logger import MetricsLogger
from rl_scaling.record import RunRecord

PROBE_CFG = PPOConfig(total_steps=8 * 16 * 80, num_steps=16, num_epochs=4, num_minibatches=4,
                      gamma=0.9, gae_lambda=0.95, ent_coef=0.0, lr=3e-3, lr_width_rule=False,
                      norm_reward=False, max_grad_norm=1.0)


def _context(tmp_path, model, obs_shape, dtype=torch.float32):
    example = torch.zeros((1, *obs_shape), dtype=dtype)
    return RunContext(logger=MetricsLogger(RunRecord(tmp_path), progress=None),
                      accountant=FlopAccountant(forward_flops=forward_flops(model, example)),
                      device=torch.device("cpu"), checkpoint_path=tmp_path / "ckpt.pt",
                      checkpoint_interval=0)


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_reaches_known_solution(name, tmp_path):
    torch.manual_seed(0)
    probe = PROBES[name]
    envs = make_env("probe", num_envs=8, seed=0, name=name)
    model = build_model("mlp", envs.single_observation_space.shape, probe.num_actions, width=1.0)
    ctx = _context(tmp_path, model, envs.single_observation_space.shape)
    assert train(PROBE_CFG, envs, model, ctx) == "finished"

    # every observation the probe can show: +-1 for random probes, step index otherwise
    obs = (np.array([[1.0], [-1.0]]) if probe.random_obs
           else np.arange(probe.episode_length, dtype=np.float64)[:, None])
    with torch.no_grad():
        logits, value = model(torch.as_tensor(obs, dtype=torch.float32))
    expected = probe.expected_value(obs, PROBE_CFG.gamma)
    np.testing.assert_allclose(value.numpy(), expected, atol=0.1, err_msg=f"{name}: V(obs)")
    if probe.num_actions > 1:
        best = torch.softmax(logits, -1)[torch.arange(len(obs)), probe.optimal_action(obs)]
        assert (best > 0.9).all(), f"{name}: pi(optimal action) = {best.tolist()}"


def test_counters_and_flops_follow_the_schedule(tmp_path):
    envs = make_env("probe", num_envs=4, seed=0, name="constant_value")
    model = build_model("mlp", (1,), 1, width=0.5)
    ctx = _context(tmp_path, model, (1,))
    cfg = replace(PROBE_CFG, total_steps=4 * 16 * 3, num_epochs=2, num_minibatches=2)
    train(cfg, envs, model, ctx)
    rows = RunRecord(tmp_path).read_metrics()
    assert [r["env_steps"] for r in rows] == [64, 128, 192]
    assert [r["updates"] for r in rows] == [4, 8, 12]
    assert [r["samples"] for r in rows] == [128, 256, 384]
    f = ctx.accountant.forward_flops
    # per iteration: 64 acting forwards + 4 bootstrap-value forwards (one per env)
    # + 2 epochs x 64 samples x (forward + 2x backward)
    assert rows[-1]["flops"] == pytest.approx(3 * (64 * f + 4 * f + 2 * 64 * 3 * f))
    assert all(r["wall_time"] >= 0 for r in rows)


def test_log_interval_thins_the_curve_but_keeps_the_last_point(tmp_path):
    envs = make_env("probe", num_envs=4, seed=0, name="constant_value")
    model = build_model("mlp", (1,), 1, width=0.5)
    ctx = _context(tmp_path, model, (1,))
    ctx.log_interval = 2
    train(replace(PROBE_CFG, total_steps=4 * 16 * 5, num_epochs=1, num_minibatches=1),
          envs, model, ctx)
    rows = RunRecord(tmp_path).read_metrics()
    assert [r["env_steps"] for r in rows] == [128, 256, 320]  # iterations 2, 4 and the last
    assert [r["updates"] for r in rows] == [2, 4, 5]


def test_learning_rate_width_rule():
    cfg = PPOConfig(lr=5e-4)
    assert learning_rate(cfg, 1.0) == 5e-4
    assert learning_rate(cfg, 4.0) == pytest.approx(2.5e-4)
    assert learning_rate(cfg, 1 / 64) == pytest.approx(4e-3)
    assert learning_rate(replace(cfg, lr_width_rule=False), 4.0) == 5e-4


def test_non_finite_loss_stops_with_diverged(tmp_path):
    from rl_scaling.context import StopTraining

    envs = make_env("probe", num_envs=4, seed=0, name="obs_reward")
    model = build_model("mlp", (1,), 1)
    with torch.no_grad():  # a poisoned weight makes every value NaN
        next(model.parameters()).fill_(float("nan"))
    ctx = _context(tmp_path, model, (1,))
    with pytest.raises(StopTraining) as stop:
        train(replace(PROBE_CFG, total_steps=4 * 16 * 5), envs, model, ctx)
    assert stop.value.status == "diverged"
    assert len(RunRecord(tmp_path).read_metrics()) == 1  # the curve up to divergence is kept


class _TwoSpeedEnvs:
    """Env 0 ends an episode every step with return 0 and no success; env 1 every 5 steps
    with return 1 and success."""

    num_envs = 2

    def reset(self) -> np.ndarray:
        self.t = 0
        return np.zeros((2, 1), np.float32)

    def step(self, actions):
        self.t += 1
        done = np.array([True, self.t % 5 == 0])
        k = int(done.sum())
        info = {"episode_return": np.array([0.0, 1.0][:k]),
                "episode_length": np.array([1, 5][:k]),
                "episode_success": np.array([0.0, 1.0][:k])}
        return np.zeros((2, 1), np.float32), np.zeros(2), done, np.zeros(2, bool), info


def test_evaluation_weights_every_env_equally():
    """Long episodes count as much as short ones: 3 per env, not the first 6 to end (which
    would all come from the fast env)."""
    model = build_model("mlp", (1,), 2, width=0.25)
    out = evaluate(model, _TwoSpeedEnvs(), episodes=6, device=torch.device("cpu"))
    assert out["eval_return"] == pytest.approx(0.5)
    assert out["eval_success"] == pytest.approx(0.5)


def test_coinrun_return_improves_and_held_out_levels_are_evaluated(tmp_path):
    """About a minute of CoinRun through the real config path (width 1/8, 10 training levels,
    98k steps): the episode-weighted mean return of the last third of the iterations beats
    the first third's (measured +1.3 to +3.0 over seeds 1-3), and evaluation on 10 held-out
    levels is logged."""
    from hydra import compose, initialize_config_dir

    from rl_scaling.config import register_configs
    from rl_scaling.run import run

    pytest.importorskip("procgen")
    register_configs()
    configs = str(Path(__file__).resolve().parents[1] / "configs")
    iterations, num_envs = 24, 32
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=procgen_width", "model.width=0.125", f"env.num_envs={num_envs}",
            "env.num_levels=10", "algo.num_steps=128", "algo.num_minibatches=4",
            f"algo.total_steps={iterations * num_envs * 128}", "algo.eval_interval=12",
            "algo.eval_episodes=8", "env.eval_num_envs=8", "env.eval_num_levels=10",
            "env.eval_start_level=1000", "checkpoint_interval=0", "logger.progress=none",
            "seed=1",
        ])
    assert run(cfg, tmp_path) == "finished"
    rows = RunRecord(tmp_path).read_metrics()
    m = [r for r in rows if r.get("return_mean") is not None]
    ret = np.array([r["return_mean"] for r in m])
    eps = np.array([r["episodes"] for r in m])
    third = len(m) // 3

    def weighted(sl: slice) -> float:
        return float((ret[sl] * eps[sl]).sum() / eps[sl].sum())

    first, last = weighted(slice(0, third)), weighted(slice(-third, None))
    assert last > first + 0.75, f"return did not improve: first {first:.2f}, last {last:.2f}"
    evals = [r for r in rows if "eval_return" in r]
    assert [r["iteration"] for r in evals] == [12, 24]
    assert all(0.0 <= r["eval_return"] <= 10.0 for r in evals)


@pytest.mark.slow
def test_coinrun_return_improves_over_first_iterations(tmp_path):
    """A short CoinRun run (the real config path, a small level set so progress shows early):
    the mean return of the last iterations beats that of the first ones."""
    from hydra import compose, initialize_config_dir

    from rl_scaling.config import register_configs
    from rl_scaling.run import run

    pytest.importorskip("procgen")
    register_configs()
    configs = str(Path(__file__).resolve().parents[1] / "configs")
    iterations = 24
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=procgen_width", "model.width=0.5", "env.num_envs=32",
            "env.num_levels=20", "algo.num_steps=128", "algo.num_minibatches=4",
            f"algo.total_steps={iterations * 32 * 128}", "algo.eval_interval=0",
            "checkpoint_interval=0", "logger.progress=none", "seed=1",
        ])
    assert run(cfg, tmp_path) == "finished"
    returns = [r["return_mean"] for r in RunRecord(tmp_path).read_metrics()
               if r.get("return_mean") is not None]
    first, last = np.mean(returns[:4]), np.mean(returns[-4:])
    assert last > first + 1.0, f"return did not improve: first {first:.2f}, last {last:.2f}"
