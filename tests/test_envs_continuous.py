"""Fast contract tests of the continuous-control families `gym` (gymnasium, MuJoCo v5) and `dmc`
(DeepMind Control Suite): spaces and dtypes, clipping, terminated vs truncated, final_obs,
episode statistics and normalised returns, seeding, one-line config errors, registration."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from omegaconf import OmegaConf

from envs import make_env
from envs.base import EnvConfig
from envs.dmc import EXAMPLE_TASKS, DMCEnvConfig, DMCVecEnv, make_dmc, parse_task
from envs.gym import REFERENCE_RETURNS, GymEnvConfig, make_gym
from rl_scaling import registry

BOX = gymnasium.spaces.Box
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo writes compiler warnings (the cheetah models') to ./MUJOCO_LOG.TXT: keep them out
    of the repository."""
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------- helpers


def rollout(env, actions: np.ndarray, seed: int | None = None):
    """Reset, then step through `actions` (T, num_envs, act_dim); stacked obs and rewards."""
    obs, rewards = [env.reset(seed=seed)], []
    for a in actions:
        o, r, *_ = env.step(a)
        obs.append(o)
        rewards.append(r)
    return np.stack(obs), np.stack(rewards)


def random_actions(env, steps: int, seed: int = 0, scale: float = 1.5) -> np.ndarray:
    """(steps, num_envs, act_dim) uniform actions, partly beyond the bounds on purpose."""
    space = env.single_action_space
    rng = np.random.default_rng(seed)
    return rng.uniform(scale * space.low, scale * space.high, (steps, env.num_envs, *space.shape))


def check_step(env, obs, reward, terminated, truncated, info) -> None:
    n, dim = env.num_envs, env.single_observation_space.shape[0]
    assert obs.shape == (n, dim) and obs.dtype == np.float32
    assert reward.shape == (n,) and reward.dtype == np.float32
    assert terminated.shape == (n,) and terminated.dtype == bool
    assert truncated.shape == (n,) and truncated.dtype == bool
    assert not (terminated & truncated).any()
    ended = np.flatnonzero(terminated | truncated)
    np.testing.assert_array_equal(info["episode_env"], ended)
    assert info["episode_return"].dtype == np.float64
    assert info["episode_length"].dtype == np.int64
    for key, value in info.items():
        if key.startswith("episode_"):
            assert value.shape == (len(ended),), key
    if len(ended):
        assert info["final_obs"].shape == (len(ended), dim)
        assert info["final_obs"].dtype == np.float32
    else:
        assert "final_obs" not in info


def one_line_error(match: str, build, *args, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as err:
        build(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


# ---------------------------------------------------------------- gym


def test_gym_spaces_and_step_types():
    env = make_env("gym", num_envs=3, seed=0, env_id="Pendulum-v1")
    assert env.provides_final_obs and env.max_episode_steps == 200
    assert env.single_observation_space == BOX(
        np.array([-1, -1, -8], np.float32), np.array([1, 1, 8], np.float32), dtype=np.float32
    )
    assert env.single_action_space == BOX(-2.0, 2.0, (1,), np.float32)
    assert env.reference_return is None  # Pendulum has no reference return
    obs = env.reset()
    assert obs.shape == (3, 3) and obs.dtype == np.float32
    first = obs.copy()
    for a in random_actions(env, 5):
        out = env.step(a)
        check_step(env, *out)
        assert "episode_normalized_return" not in out[-1]
    np.testing.assert_array_equal(obs, first)  # returned arrays are never written again
    with pytest.raises(ValueError, match="float array of shape"):
        env.step(np.zeros(3))
    env.close()
    env.close()


def test_gym_step_before_reset_raises():
    env = make_gym(num_envs=1, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((1, 1)))


def test_gym_clips_actions():
    a, b = (make_gym(num_envs=1, seed=4) for _ in range(2))
    a.reset(), b.reset()
    for high, beyond in ((2.0, 50.0), (-2.0, -7.5)):
        obs_a, r_a, *_ = a.step(np.array([[high]]))
        obs_b, r_b, *_ = b.step(np.array([[beyond]]))
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(r_a, r_b)


def test_gym_time_limit_truncates_with_final_obs():
    """max_episode_steps=5: truncated (never terminated) at step 5, final_obs is the episode's
    last observation and obs the next episode's first, exactly as gymnasium's own env gives."""
    env = make_gym(num_envs=2, seed=10, max_episode_steps=5)
    actions = random_actions(env, 7, seed=1)
    raw = [gymnasium.make("Pendulum-v1").unwrapped for _ in range(2)]
    raw_obs = np.stack([r.reset(seed=10 + i)[0] for i, r in enumerate(raw)])
    np.testing.assert_array_equal(env.reset(), raw_obs)
    summed = np.zeros(2)
    for step, a in enumerate(actions, start=1):
        obs, reward, terminated, truncated, info = env.step(a)
        check_step(env, obs, reward, terminated, truncated, info)
        clipped = np.clip(a, -2.0, 2.0)
        raw_out = [r.step(clipped[i]) for i, r in enumerate(raw)]
        np.testing.assert_allclose(reward, [o[1] for o in raw_out], rtol=1e-6)
        summed += reward
        assert not terminated.any()
        if step == 5:
            assert truncated.all()
            np.testing.assert_array_equal(info["final_obs"], np.stack([o[0] for o in raw_out]))
            # auto-reset continues each env's stream, like a plain reset() of gymnasium's env
            np.testing.assert_array_equal(obs, np.stack([r.reset()[0] for r in raw]))
            np.testing.assert_allclose(info["episode_return"], summed, rtol=1e-6)
            np.testing.assert_array_equal(info["episode_length"], [5, 5])
            np.testing.assert_array_equal(info["episode_env"], [0, 1])
            summed[:] = 0
        else:
            assert not truncated.any() and len(info["episode_return"]) == 0
            np.testing.assert_array_equal(obs, np.stack([o[0] for o in raw_out]))


def test_gym_normalized_return():
    env = make_gym(num_envs=1, seed=0, max_episode_steps=3, reference_return=250.0)
    assert env.reference_return == 250.0
    env.reset()
    for a in random_actions(env, 3):
        info = env.step(a)[-1]
    np.testing.assert_allclose(info["episode_normalized_return"], info["episode_return"] * 4)
    assert GymEnvConfig(id="Walker2d-v5").reference() == 4500.0
    assert GymEnvConfig(id="Walker2d-v5", reference_return=10).reference() == 10.0
    assert GymEnvConfig().reference() is None
    assert REFERENCE_RETURNS == {
        "HalfCheetah-v5": 8500.0, "Walker2d-v5": 4500.0, "Ant-v5": 6625.0, "Humanoid-v5": 6125.0
    }  # fmt: skip


def test_gym_seeding():
    def stream(seed, reset_seed=None, **kwargs):
        env = make_gym(num_envs=2, seed=seed, max_episode_steps=4, **kwargs)
        return rollout(env, random_actions(env, 10, seed=2), seed=reset_seed)  # 2 auto-resets

    a, b, c = stream(3), stream(3), stream(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0][:, 0], a[0][:, 1])  # envs i get seeds seed + i
    np.testing.assert_array_equal(stream(4, reset_seed=3)[0], a[0])  # reset(seed) reseeds
    # reset() without a seed keeps the streams going
    env = make_gym(num_envs=1, seed=3)
    first = env.reset()
    assert not np.array_equal(env.reset(), first)
    np.testing.assert_array_equal(env.reset(seed=3), first)
    # the spaces' samplers are seeded too
    samples = [make_gym(num_envs=2, seed=s) for s in (5, 5, 6)]
    draws = [[e.single_action_space.sample() for _ in range(3)] for e in samples]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    inner = [e._envs[1].action_space.sample() for e in samples]
    np.testing.assert_array_equal(inner[0], inner[1])


def test_gym_errors_name_the_key():
    one_line_error(
        r"^env.id='Foo-v9' is not a registered gymnasium env$", make_gym,
        num_envs=1, seed=0, env_id="Foo-v9",
    )  # fmt: skip
    msg = one_line_error(
        "^env.id='HalfCheetah-v9'", make_gym, num_envs=1, seed=0, env_id="HalfCheetah-v9"
    )
    assert "HalfCheetah-v5" in msg  # a suggestion
    one_line_error(
        r"^env.max_episode_steps=0 must be > 0 or null$",
        make_gym,
        num_envs=1,
        seed=0,
        max_episode_steps=0,
    )
    one_line_error(
        r"^env.max_episode_steps=2.5", make_gym, num_envs=1, seed=0, max_episode_steps=2.5
    )
    one_line_error(
        r"^env.reference_return=-1.0 must be > 0 or null$",
        make_gym,
        num_envs=1,
        seed=0,
        reference_return=-1.0,
    )
    one_line_error(
        r"^env.id='Blackjack-v1' has Tuple\(.*observations; the gym family needs a flat Box$",
        make_gym,
        num_envs=1,
        seed=0,
        env_id="Blackjack-v1",
    )
    one_line_error("num_envs", make_env, "gym", num_envs=0, seed=0)
    one_line_error("seed", make_env, "gym", num_envs=1, seed=-1)
    with pytest.raises(ValueError, match="^env.id="):
        GymEnvConfig(id="nope").validate()


@pytest.fixture(scope="module")
def mujoco():
    return pytest.importorskip("mujoco")


def test_gym_half_cheetah_steps(mujoco):
    env = make_env("gym", num_envs=2, seed=0, env_id="HalfCheetah-v5", max_episode_steps=3)
    assert env.single_observation_space.shape == (17,)
    assert env.single_action_space == BOX(-1.0, 1.0, (6,), np.float32)
    assert env.reference_return == 8500.0
    assert make_gym(num_envs=1, seed=0, env_id="HalfCheetah-v5").max_episode_steps == 1000
    env.reset()
    for a in random_actions(env, 3):
        out = env.step(a)
        check_step(env, *out)
    info = out[-1]
    assert out[3].all()  # HalfCheetah never terminates: the limit truncates
    np.testing.assert_allclose(
        info["episode_normalized_return"], info["episode_return"] * 1000 / 8500
    )


def test_gym_termination_is_not_truncation(mujoco):
    """InvertedPendulum terminates once the pole tips over: terminated, with final_obs."""
    env = make_gym(num_envs=2, seed=0, env_id="InvertedPendulum-v5")
    env.reset()
    ended = 0
    for a in random_actions(env, 200, scale=3.0):
        obs, reward, terminated, truncated, info = env.step(a)
        check_step(env, obs, reward, terminated, truncated, info)
        assert not truncated.any()
        ended += terminated.sum()
        if terminated.any():  # the pole tipped beyond 0.2 rad: obs[1] is its angle
            assert (np.abs(info["final_obs"][:, 1]) > 0.2).all()
            assert (np.abs(obs[terminated, 1]) <= 0.01).all()  # a fresh episode's start
    assert ended > 0


# ---------------------------------------------------------------- dmc


def test_dmc_spaces_and_step_types():
    env = make_env("dmc", num_envs=2, seed=0, env_id="cartpole-swingup")
    assert env.provides_final_obs
    assert env.single_observation_space == BOX(-np.inf, np.inf, (5,), np.float32)
    assert env.single_action_space == BOX(-1.0, 1.0, (1,), np.float32)
    obs = env.reset()
    assert obs.shape == (2, 5) and obs.dtype == np.float32
    first = obs.copy()
    for a in random_actions(env, 5):
        check_step(env, *env.step(a))
    np.testing.assert_array_equal(obs, first)
    with pytest.raises(ValueError, match="float array of shape"):
        env.step(np.zeros((2, 2)))
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="reset"):
        make_dmc(num_envs=1, seed=0).step(np.zeros((1, 1)))


def test_dmc_matches_dm_control_with_action_repeat():
    """action_repeat=4 on cartpole: each agent step is 4 control steps of dm_control with the
    same (clipped) action and the summed reward; the episode is truncated after 250 agent
    steps, final_obs is dm_control's last observation and obs the next episode's first."""
    from dm_control import suite

    raw = suite.load("cartpole", "swingup", task_kwargs={"random": 7})
    env = make_dmc(
        num_envs=1, seed=7, env_id="cartpole-swingup", action_repeat=4, reference_return=500.0
    )
    flat = lambda ts: np.concatenate([np.ravel(v) for v in ts.observation.values()])  # noqa: E731
    np.testing.assert_array_equal(env.reset()[0], flat(raw.reset()).astype(np.float32))
    actions = random_actions(env, 250, seed=3)
    summed = 0.0
    for step, a in enumerate(actions, start=1):
        obs, reward, terminated, truncated, info = env.step(a)
        raw_reward = 0.0
        for _ in range(4):
            ts = raw.step(np.clip(a[0], -1, 1))
            raw_reward += ts.reward
        assert reward[0] == np.float32(raw_reward)
        summed += raw_reward
        assert not terminated.any()
        if step < 250:
            assert not truncated.any() and "final_obs" not in info
            np.testing.assert_array_equal(obs[0], flat(ts).astype(np.float32))
    check_step(env, obs, reward, terminated, truncated, info)
    assert ts.last() and truncated.all()
    np.testing.assert_array_equal(info["final_obs"][0], flat(ts).astype(np.float32))
    np.testing.assert_array_equal(obs[0], flat(raw.reset()).astype(np.float32))
    assert info["episode_length"][0] == 250
    assert info["episode_return"][0] == pytest.approx(summed, rel=1e-12)
    assert info["episode_normalized_return"][0] == pytest.approx(summed * 2, rel=1e-12)


def test_dmc_clips_actions():
    a, b = (make_dmc(num_envs=1, seed=1, env_id="walker-walk") for _ in range(2))
    a.reset(), b.reset()
    high = np.array([[1.0, -1.0, 1.0, -1.0, 0.5, 0.0]])
    beyond = np.array([[9.0, -3.0, 1.5, -100.0, 0.5, 0.0]])
    for _ in range(3):
        obs_a, r_a, *_ = a.step(high)
        obs_b, r_b, *_ = b.step(beyond)
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(r_a, r_b)


def test_dmc_walker_seeding():
    def stream(seed, reset_seed=None):
        env = make_dmc(num_envs=2, seed=seed, env_id="walker-walk", action_repeat=2)
        assert env.single_observation_space.shape == (24,)
        assert env.single_action_space.shape == (6,)
        return rollout(env, random_actions(env, 20, seed=5), seed=reset_seed)

    a, b, c = stream(3), stream(3), stream(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0][:, 0], a[0][:, 1])  # env i is built with seed + i
    np.testing.assert_array_equal(stream(4, reset_seed=3)[0], a[0])
    # reset(seed) after stepping rebuilds: the same episode again
    env = make_dmc(num_envs=1, seed=3, env_id="walker-walk")
    first = env.reset()
    env.step(np.zeros((1, 6)))
    assert not np.array_equal(env.reset(), first)  # reset() moves on to a new episode
    np.testing.assert_array_equal(env.reset(seed=3), first)
    draws = [make_dmc(num_envs=1, seed=s).single_action_space.sample() for s in (5, 5, 6)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


class FakeDMC:
    """A dm_env stand-in (obs {"t": [step], "x": 2x2 zeros}, reward 1 per control step) that
    ends after `length` control steps: by termination (discount 0) or by truncation."""

    def __init__(self, length: int, terminal: bool):
        from dm_env import specs

        self.length, self.terminal, self.t = length, terminal, 0
        self._specs = specs
        self.closed = False

    def action_spec(self):
        return self._specs.BoundedArray((1,), np.float64, -1.0, 1.0)

    def observation_spec(self):
        return {"t": self._specs.Array((1,), np.float64), "x": self._specs.Array((2, 2), float)}

    def _obs(self):
        return {"t": np.array([float(self.t)]), "x": np.zeros((2, 2))}

    def reset(self):
        import dm_env

        self.t = 0
        return dm_env.restart(self._obs())

    def step(self, action):
        import dm_env

        self.t += 1
        if self.t < self.length:
            return dm_env.transition(1.0, self._obs())
        end = dm_env.termination if self.terminal else dm_env.truncation
        return end(1.0, self._obs())

    def close(self):
        self.closed = True


def test_dmc_discount_zero_is_terminated():
    """Env 0 terminates after 4 control steps (agent step 2 of repeat 3), env 1 is truncated
    after 7 (agent step 3): kept apart, with final_obs rows in env order."""
    fakes = {0: FakeDMC(4, terminal=True), 1: FakeDMC(7, terminal=False)}
    env = DMCVecEnv(2, 0, fakes.__getitem__, action_repeat=3, reference_return=100.0)
    assert env.single_observation_space.shape == (5,)
    np.testing.assert_array_equal(env.reset()[:, 0], [0, 0])
    obs, reward, terminated, truncated, info = env.step(np.zeros((2, 1)))
    np.testing.assert_array_equal(obs[:, 0], [3, 3])
    np.testing.assert_array_equal(reward, [3, 3])
    obs, reward, terminated, truncated, info = env.step(np.zeros((2, 1)))
    check_step(env, obs, reward, terminated, truncated, info)
    np.testing.assert_array_equal(reward, [1, 3])  # env 0's repeat stopped at its end
    np.testing.assert_array_equal(terminated, [True, False])
    assert not truncated.any()
    np.testing.assert_array_equal(info["final_obs"][:, 0], [4])
    np.testing.assert_array_equal(obs[:, 0], [0, 6])
    np.testing.assert_array_equal(info["episode_return"], [4.0])
    np.testing.assert_array_equal(info["episode_normalized_return"], [40.0])
    np.testing.assert_array_equal(info["episode_length"], [2])
    obs, reward, terminated, truncated, info = env.step(np.zeros((2, 1)))
    np.testing.assert_array_equal(truncated, [False, True])
    assert not terminated.any()
    np.testing.assert_array_equal(info["final_obs"][:, 0], [7])
    np.testing.assert_array_equal(info["episode_env"], [1])
    np.testing.assert_array_equal(info["episode_length"], [3])
    env.close()
    assert fakes[0].closed and fakes[1].closed


def test_dmc_task_names():
    assert parse_task("ball_in_cup-catch") == ("ball_in_cup", "catch")
    assert parse_task("humanoid_CMU-run") == ("humanoid_CMU", "run")
    assert parse_task("finger-turn_easy") == ("finger", "turn_easy")
    for name in EXAMPLE_TASKS:
        domain, task = parse_task(name)
        assert f"{domain}-{task}" == name
        DMCEnvConfig(id=name).validate()


@pytest.mark.parametrize("name", ["cheetah-run", "finger-spin", "ball_in_cup-catch"])
def test_dmc_other_tasks_step(name):
    env = make_dmc(num_envs=1, seed=0, env_id=name, action_repeat=2)
    env.reset()
    for a in random_actions(env, 3):
        check_step(env, *env.step(a))


def test_dmc_errors_name_the_key():
    msg = one_line_error(
        r"^env.id='cartpole-fly' is not a DeepMind Control task; ",
        make_dmc,
        num_envs=1,
        seed=0,
        env_id="cartpole-fly",
    )
    assert "cartpole-swingup" in msg and "cheetah-run" in msg
    one_line_error(r"^env.id='cartpole'", make_env, "dmc", num_envs=1, seed=0, env_id="cartpole")
    one_line_error(
        r"^env.action_repeat=0 must be an integer >= 1$",
        make_dmc,
        num_envs=1,
        seed=0,
        action_repeat=0,
    )
    one_line_error(r"^env.action_repeat=1.5", make_dmc, num_envs=1, seed=0, action_repeat=1.5)
    one_line_error(
        r"^env.reference_return=0.0 must be > 0$",
        make_dmc,
        num_envs=1,
        seed=0,
        reference_return=0.0,
    )
    one_line_error("num_envs", make_dmc, num_envs=0, seed=0)


# ---------------------------------------------------------------- registration and configs


def test_importing_envs_registers_both_families_lazily():
    """`import envs` registers gym and dmc without importing dm_control or torch (slow)."""
    code = (
        "import sys, envs; from rl_scaling.registry import env_entry; "
        "assert env_entry('gym').build is envs.gym.build; "
        "assert env_entry('dmc').config_cls is envs.DMCEnvConfig; "
        "print(sorted(m for m in ('dm_control', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("family,cls", [("gym", GymEnvConfig), ("dmc", DMCEnvConfig)])
def test_family_config_and_registry_build(family, cls):
    entry = registry.env_entry(family)
    assert entry.config_cls is cls and issubclass(cls, EnvConfig)
    for f in dataclasses.fields(cls):  # every field documented in the class docstring
        assert f"{f.name}:" in cls.__doc__, f"{cls.__name__}.{f.name} is not documented"
    assert OmegaConf.to_object(OmegaConf.structured(cls)) == cls()
    assert cls().family == family and cls().num_envs == 1
    cfg = cls()
    cfg.validate()
    with entry.build(cfg, num_envs=cfg.num_envs, seed=0) as env:
        env.reset()
        check_step(env, *env.step(random_actions(env, 1)[0]))
    with pytest.raises(ValueError, match="^env.id='nope'"):
        entry.build(cls(id="nope"), num_envs=1, seed=0)


def test_discrete_gym_env_steps_with_integer_actions():
    env = make_gym(num_envs=3, seed=0, env_id="CartPole-v1", max_episode_steps=5)
    assert env.single_action_space == gymnasium.spaces.Discrete(2)
    obs = env.reset()
    assert obs.shape == (3, 4) and obs.dtype == np.float32
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([0, 1, 0]))
    assert (terminated | truncated).all() and info["final_obs"].shape == (3, 4)
    with pytest.raises(ValueError, match=r"actions must be in \[0, 2\)"):
        env.step(np.array([0, 2, 0]))
    env.close()
