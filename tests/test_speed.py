"""The speed switches (``speed.*``, docs/speed.md): overlapped env stepping collects the same
data as stepping every env at once; bf16 autocast and the compiled learner keep the first
iterations' losses within a tolerance of fp32 eager; bad switches are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from agents.buffers import RolloutBuffer
from agents.common import RewardNormalizer
from agents.evaluation import EpisodeLog
from agents.ppo import collect_rollout
from envs import make_env
from envs.groups import EnvGroups
from rl_scaling.config import register_configs
from rl_scaling.registry import ConfigError
from rl_scaling.run import run
from rl_scaling.speed import Speed, SpeedConfig

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
register_configs()


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=list(overrides))


# ---- switches ----------------------------------------------------------------------------
def test_auto_switches_resolve_per_device():
    cpu = Speed(SpeedConfig(), "cpu")
    assert (cpu.precision, cpu.compile, cpu.cuda_graphs, cpu.overlap_envs) == (
        "fp32", False, False, False)
    forced = Speed(SpeedConfig(precision="bf16", compile=True, cuda_graphs=True), "cpu")
    assert forced.precision == "bf16" and forced.compile
    assert not forced.cuda_graphs  # CUDA graphs exist on CUDA only
    with forced.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("override,key", [
    ("speed.precision=fp16", "speed.precision"),
    ("speed.compile=maybe", "speed.compile"),
    ("+speed.warp=true", "speed.warp"),
])
def test_bad_switch_is_one_line_naming_it(override, key, tmp_path):
    cfg = _cfg(["+experiment=smoke", override, "logger.progress=none"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg, tmp_path)
    assert not (tmp_path / "run.json").exists()  # refused before the record is opened


# ---- overlapped env stepping -------------------------------------------------------------
class _Greedy(nn.Module):
    """A policy whose action is a fixed function of the observation (huge logit margins, so
    sampling noise never changes it): two collections of the same envs see the same data."""

    def __init__(self, num_actions: int) -> None:
        super().__init__()
        self.num_actions = num_actions

    def forward(self, obs):
        flat = obs.reshape(len(obs), -1).float()
        action = (flat.sum(1) * 7).long() % self.num_actions
        logits = torch.full((len(obs), self.num_actions), -1e4)
        logits[torch.arange(len(obs)), action] = 1e4
        return logits, flat.mean(1) / 255


class _Hidden:
    """The same env groups behind the plain VecEnv interface: collect_rollout then steps them
    all at once, without overlap."""

    def __init__(self, envs):
        self._envs = envs

    def __getattr__(self, name):
        return getattr(self._envs, name)

    def step_async(self, actions):
        self._pending = actions

    def step_wait(self):
        return self._envs.step(self._pending)


def _collect(envs, num_steps=64, norm=False):
    obs = torch.from_numpy(envs.reset(seed=3))
    buffer = RolloutBuffer(num_steps, envs.num_envs, tuple(obs.shape[1:]), obs.dtype,
                           torch.device("cpu"))
    episodes = EpisodeLog()
    out = collect_rollout(_Greedy(envs.single_action_space.n), envs, buffer, obs,
                          torch.zeros(envs.num_envs, dtype=torch.bool), gamma=0.9,
                          generator=torch.Generator().manual_seed(0),
                          reward_norm=RewardNormalizer(envs.num_envs, 0.9) if norm else None,
                          episodes=episodes)
    return buffer, out, episodes


@pytest.mark.parametrize("family,kwargs", [
    ("procgen", {"env_id": "starpilot"}),  # native async: procgen's own C++ threads
    ("mnist", {}),  # a numpy env: stepped on a worker thread
])
def test_overlapped_rollout_collects_what_stepping_all_envs_collects(family, kwargs):
    def groups():
        return EnvGroups([make_env(family, num_envs=4, seed=1, **kwargs),
                          make_env(family, num_envs=4, seed=2, **kwargs)])

    for norm in (False, True):
        overlapped, plain = groups(), groups()
        try:
            a, out_a, ep_a = _collect(overlapped, norm=norm)
            b, out_b, ep_b = _collect(_Hidden(plain), norm=norm)
        finally:
            overlapped.close()
            plain.close()
        for key in ("obs", "actions", "dones", "values"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
        assert torch.equal(out_a.next_obs, out_b.next_obs)
        assert out_a.raw_reward_sum == out_b.raw_reward_sum
        assert ep_a.metrics() == ep_b.metrics()
        assert a.rewards.abs().sum() > 0  # the rollout saw rewards at all
        # scaled rewards: the statistics combine per group in another float order
        torch.testing.assert_close(a.rewards, b.rewards, rtol=1e-6, atol=1e-7)


def test_env_groups_merge_infos_in_env_order():
    envs = EnvGroups([make_env("probe", num_envs=2, seed=0, name="time_limit"),
                      make_env("probe", num_envs=3, seed=1, name="time_limit")])
    envs.reset(seed=0)
    for _ in range(2):
        envs.step(np.zeros(5, dtype=np.int64))
    obs, reward, terminated, truncated, info = envs.step(np.zeros(5, dtype=np.int64))
    assert truncated.all() and not terminated.any()  # every env's 3-step limit
    assert info["episode_env"].tolist() == [0, 1, 2, 3, 4]
    assert info["final_obs"].shape == (5, 1) and np.allclose(info["final_obs"], 1.0)
    assert envs.provides_final_obs
    envs.close()


def test_overlap_switch_trains_on_procgen(tmp_path):
    cfg = _cfg(["+experiment=procgen_width", "model.width=0.25", "env.num_envs=4",
                "algo.num_steps=16", "algo.num_minibatches=2", "algo.num_epochs=1",
                "budget.value=128", "speed.overlap_envs=true", "logger.progress=none",
                "checkpoint_every=null"])
    assert run(cfg, tmp_path) == "finished"
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["env_steps"] == 128 and info["speed"]["overlap_envs"] is True


# ---- precision and compile keep learning ---------------------------------------------------
SMOKE = ["+experiment=smoke", "budget.value=1024", "logger.progress=none",
         "checkpoint_every=null", "seed=3"]


def _losses(tmp_path: Path, *overrides: str) -> list[dict]:
    assert run(_cfg([*SMOKE, *overrides]), tmp_path) == "finished"
    return [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("switch,tol", [
    # bf16 rounds activations to 8 bits of mantissa (the acting forward too): losses agree
    # to a few percent on the first iteration, and the run stays on the same curve
    ("speed.precision=bf16", 0.05),
    # the compiled graph runs the same maths in another order: agreement to float rounding
    ("speed.compile=true", 1e-4),
])
def test_switch_keeps_the_first_iterations_losses(switch, tol, tmp_path):
    base = _losses(tmp_path / "fp32", "speed.precision=fp32", "speed.compile=false")
    fast = _losses(tmp_path / "fast", switch)
    assert len(base) == len(fast) == 2
    for key in ("value_loss", "entropy", "loss"):
        a, b = base[0][key], fast[0][key]
        assert abs(a - b) <= tol * max(abs(a), 1e-2), (key, a, b)
    # counters and FLOPs do not depend on how fast they were reached
    assert [(r["env_steps"], r["flops"]) for r in base] == [
        (r["env_steps"], r["flops"]) for r in fast]
    rec = json.loads((tmp_path / "fast" / "run.json").read_text())["speed"]
    assert rec["precision"] == ("bf16" if "precision" in switch else "fp32")
    assert rec["compile"] is ("compile" in switch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_bf16_compile_keep_learning_on_gpu(tmp_path):
    base = _losses(tmp_path / "eager", "device=cuda", "speed.precision=fp32",
                   "speed.compile=false", "speed.cuda_graphs=false")
    fast = _losses(tmp_path / "fast", "device=cuda", "speed.precision=bf16",
                   "speed.compile=true", "speed.cuda_graphs=true")
    for key in ("value_loss", "entropy"):
        a, b = base[0][key], fast[0][key]
        assert abs(a - b) <= 0.05 * max(abs(a), 1e-2), (key, a, b)
